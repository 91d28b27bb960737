"""A small TCP proxy for fault injection: put it between a client and a server, then cut and restore the link.

The proxy runs its own event loop in a daemon thread, so it keeps forwarding even while the test's loop is busy
(or blocked in a synchronous call), and it works the same for in-process workers and for subprocesses.

Example::

    proxy = TcpProxy("127.0.0.1", 5672).start()
    url = f"amqp://guest:guest@{proxy.address}/%2F"     # give this to the client
    await proxy.cut()                                    # drop every connection, refuse new ones
    await proxy.restore()                                # forward again
    proxy.set_latency(2.0)                               # every reply arrives 2 s late (a slow server)
    proxy.set_latency(0.0)                               # fast again (what was delayed still arrives in order)
    proxy.stop()
"""

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

CutMode = Literal["refuse", "stall"]
Direction = Literal["reply", "request", "both"]
T = TypeVar("T")


@dataclass
class ProxyStats:
    """What a proxy has seen so far."""

    accepted: int = 0
    forwarded: int = 0
    refused: int = 0
    stalled: int = 0
    cuts: int = 0
    connections_cut: int = 0
    replies_dropped: int = 0
    upstream_errors: int = 0
    delayed: int = 0


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forwards TCP connections from ``127.0.0.1:<free port>`` to ``target_host:target_port``.

    :meth:`cut` aborts every open connection (the client sees a reset) and, until :meth:`restore`, either
    refuses new connections (``mode="refuse"``: accepted and reset at once, like a crashed peer) or stalls them
    (``mode="stall"``: accepted and never answered, like a black-holed network). ``lose_replies`` first keeps
    forwarding requests for that many seconds while discarding the replies, so operations in flight run on the
    server but their outcome never reaches the client (the ambiguous failure a real network produces).

    :meth:`set_latency` makes the link slow instead: every chunk read in the chosen direction (by default the
    server's replies) is passed on ``seconds`` after it arrived, in order, per connection. Nothing is lost and
    nothing is throttled, so a client that pipelines sees each round trip take ``seconds`` longer, and a client that
    waits for each reply (a MongoDB connection) does at most one operation per ``seconds`` per connection: a store
    whose every write and read takes that long.
    """

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy",
                 listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self.listen_host = listen_host
        self.port = 0
        self.stats = ProxyStats()
        self._mode: CutMode | None = None
        self._drop_replies = False
        self._latency = {"reply": 0.0, "request": 0.0}
        self._pairs: set[_Pair] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients should connect to."""
        return f"{self.listen_host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        return self._mode is not None

    @property
    def latency(self) -> dict[str, float]:
        """The delay added to each direction now, in seconds (``reply``: server to client)."""
        return dict(self._latency)

    @property
    def active(self) -> int:
        """Connections being forwarded right now."""
        return len(self._pairs)

    def start(self, timeout: float = 5.0) -> "TcpProxy":
        """Start listening (in a background thread) and return ``self`` once the port is bound."""
        ready: Future[int] = Future()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.listen_host, 0, reuse_address=True))
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            self._server = server
            ready.set_result(int(server.sockets[0].getsockname()[1]))
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=f"tcp-proxy-{self.name}", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, and end the thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._abort_all()
            self._release_stalled()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # pumps of links closed meanwhile, late writers: the loop is ours alone
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loop = None

    async def cut(self, mode: CutMode = "refuse", *, lose_replies: float = 0.0) -> int:
        """Cut the link: abort every open connection and refuse or stall new ones; return how many were cut."""
        return await self._call(self._cut(mode, lose_replies))

    async def restore(self) -> None:
        """Forward new connections again (stalled ones are closed, so their clients reconnect)."""
        await self._call(self._restore())

    def set_latency(self, seconds: float, direction: Direction = "reply") -> None:
        """Delay what is forwarded in ``direction`` by ``seconds`` from now on (0 ends the delay).

        Chunks already waiting keep their own due time and order, so lowering the latency never reorders bytes:
        newer chunks wait behind older ones.
        """
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        for d in ("reply", "request") if direction == "both" else (direction,):
            self._latency[d] = float(seconds)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self.name}: proxy not started")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _cut(self, mode: CutMode, lose_replies: float) -> int:
        self.stats.cuts += 1
        if lose_replies > 0:
            self._drop_replies = True
            await asyncio.sleep(lose_replies)
        self._mode = mode
        self._drop_replies = False
        return self._abort_all()

    async def _restore(self) -> None:
        self._mode = None
        self._release_stalled()

    def _abort_all(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            pair.abort()
        self.stats.connections_cut += len(pairs)
        return len(pairs)

    def _release_stalled(self) -> None:
        for writer in list(self._stalled):
            writer.transport.abort()
        self._stalled.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        _nodelay(writer)
        if self._mode == "refuse":
            self.stats.refused += 1
            writer.transport.abort()
            return
        if self._mode == "stall":
            self.stats.stalled += 1
            self._stalled.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self.stats.upstream_errors += 1
            writer.transport.abort()
            return
        if self._mode is not None:  # cut while we were connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        _nodelay(up_writer)
        self.stats.forwarded += 1
        pair = _Pair(writer, up_writer)
        pair.tasks = [asyncio.create_task(self._pump(reader, up_writer, pair, reply=False)),
                      asyncio.create_task(self._pump(up_reader, writer, pair, reply=True))]
        self._pairs.add(pair)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: _Pair, *,
                    reply: bool) -> None:
        direction = "reply" if reply else "request"
        late: _Late | None = None
        try:
            while data := await src.read(65536):
                if reply and self._drop_replies:
                    self.stats.replies_dropped += 1
                    continue
                delay = self._latency[direction]
                if delay > 0 or (late is not None and late.waiting):
                    if late is None:
                        late = _Late(dst, self.stats)
                        pair.tasks.append(late.start())
                    late.put(time.monotonic() + delay, data)
                    continue
                dst.write(data)
                await dst.drain()
            if late is not None:
                await late.flushed()  # the peer closed: what it sent before still arrives, late
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if late is not None:
                late.stop()
            # one side closed: close the other one too (half-open links are not what we simulate)
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in (pair.client, pair.upstream):
                    with contextlib.suppress(Exception):
                        w.close()


class _Late:
    """Writes chunks to ``dst`` at their due times, in the order they were put (one direction of one link)."""

    def __init__(self, dst: asyncio.StreamWriter, stats: ProxyStats) -> None:
        self.dst = dst
        self.stats = stats
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._more = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> bool:
        """True while chunks wait to be written (a new chunk must queue behind them, even with no latency)."""
        return bool(self._chunks)

    def start(self) -> "asyncio.Task[None]":
        """Start the writer task (cancelled with its link, or by :meth:`stop`)."""
        self._task = asyncio.create_task(self._run())
        return self._task

    def stop(self) -> None:
        """Stop writing (the link is gone): cancel the writer task."""
        if self._task is not None:
            self._task.cancel()

    def put(self, due: float, data: bytes) -> None:
        """Queue ``data`` to be written at ``due`` (monotonic seconds)."""
        self._chunks.append((due, data))
        self.stats.delayed += 1
        self._empty.clear()
        self._more.set()

    async def flushed(self) -> None:
        """Wait until every queued chunk has been written."""
        await self._empty.wait()

    async def _run(self) -> None:
        try:
            while True:
                if not self._chunks:
                    self._empty.set()
                    self._more.clear()
                    await self._more.wait()
                    continue
                due, data = self._chunks[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._chunks.popleft()
                self.dst.write(data)
                await self.dst.drain()
        except (OSError, ConnectionError):
            self._chunks.clear()
            self._empty.set()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def via_proxies(settings: Any, *, broker: TcpProxy | None = None, store: TcpProxy | None = None) -> Any:
    """Return a copy of ``settings`` whose broker and/or store URLs point at the given proxies.

    The copy keeps the prefix and database, so cleanup still runs on the original (direct) settings.
    """
    update: dict[str, str] = {}
    if broker is not None:
        update["rabbitmq_url"] = ",".join(_retarget(u, broker.address) for u in settings.rabbitmq_urls)
    if store is not None:
        # directConnection: talk to the address we were given, never to one the server advertises
        update["mongodb_url"] = _retarget(settings.mongodb_url, store.address, query="directConnection=true")
    return settings.model_copy(update=update)


def _retarget(url: str, address: str, *, query: str = "") -> str:
    parts = urlsplit(url)
    creds = parts.netloc.rpartition("@")[0]
    netloc = f"{creds}@{address}" if creds else address
    q = "&".join(p for p in (parts.query, query) if p)
    return urlunsplit((parts.scheme, netloc, parts.path or "/", q, parts.fragment))
