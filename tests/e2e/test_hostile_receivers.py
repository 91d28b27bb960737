"""Hostile receivers. Real raw-socket servers on 127.0.0.1 that answer with decompression bombs, trickle
a body, never finish their headers, redirect forever, stream without end, stall the TLS handshake, never read,
send 1xx answers without end, a broken chunked body or something that is not HTTP.
Every attempt ends within ``HOOKPOST_HTTP_TIMEOUT`` with the right error class, and the dispatcher's memory stays
bounded over 84 such deliveries."""

import asyncio
import contextlib
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.helpers import running_worker, wait_until

TIMEOUT_S = 1.5
EXCERPT = 4096
PER_KIND = 6

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _bomb(wbits: int, megabytes: int = 200) -> bytes:
    """``megabytes`` MiB of ``A`` compressed (gzip for wbits 31, zlib-wrapped deflate for 15): ~1000:1."""
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = b"A" * (1 << 20)
    return b"".join([*(comp.compress(chunk) for _ in range(megabytes)), comp.flush()])


BOMBS: dict[str, bytes] = {}


def bomb(kind: str) -> bytes:
    if kind not in BOMBS:
        BOMBS[kind] = _bomb(31 if kind == "gzip" else 15)
    return BOMBS[kind]


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)


async def compressed(encoding: str, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    writer.write(body)
    await writer.drain()


async def gzip_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await compressed("gzip", bomb("gzip"), reader, writer)


async def deflate_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await compressed("deflate", bomb("deflate"), reader, writer)


async def brotli_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await compressed("br", os.urandom(1 << 20), reader, writer)


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while True:
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(1.0)


async def slow_endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while True:
        n += 1
        writer.write(f"X-Header-{n}: {n}\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.05)


async def fast_endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while True:
        lines = []
        for _ in range(100):
            n += 1
            lines.append(f"X-Header-{n}: {'v' * 100}\r\n".encode())
        writer.write(b"".join(lines))
        await writer.drain()


async def one_endless_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
    while True:
        writer.write(b"z" * 65536)
        await writer.drain()


async def endless_1xx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    while True:
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n" * 100)
        await writer.drain()
        await asyncio.sleep(0.01)


async def bad_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 100 + b"\r\n")
    while True:
        writer.write(b"q" * 65536)
        await writer.drain()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(1000))
    await writer.drain()
    await asyncio.Event().wait()


async def redirect_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 302 Found\r\nLocation: /hook\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    chunk = b"y" * 65536
    while True:
        writer.write(chunk)
        await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never reads or answers (also: a TLS handshake that never gets a ServerHello)."""
    await asyncio.Event().wait()


@dataclass
class HostileServer:
    """A raw asyncio TCP server on 127.0.0.1 running ``behave`` for each connection."""

    behave: Behaviour
    scheme: str = "http"
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.behave(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def start(self) -> "HostileServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for w in self._writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)


# kind → (behaviour, scheme, expected status, expected error prefix, expected excerpt prefix)
KINDS: dict[str, tuple[Behaviour, str, EventStatus, str | None, str | None]] = {
    "gzip-bomb": (gzip_bomb, "http", EventStatus.FINISHED, None, "A" * EXCERPT),
    "deflate-bomb": (deflate_bomb, "http", EventStatus.FINISHED, None, "A" * EXCERPT),
    "brotli": (brotli_body, "http", EventStatus.FINISHED, None, "(br-encoded body"),
    "trickle": (trickle, "http", EventStatus.FAILED, "Timeout: no complete response", None),
    "slow-headers": (slow_endless_headers, "http", EventStatus.FAILED, "Timeout: no complete response", None),
    "fast-headers": (fast_endless_headers, "http", EventStatus.FAILED, "ProtocolError: invalid HTTP response", None),
    "long-header": (one_endless_header, "http", EventStatus.FAILED, "ProtocolError: invalid HTTP response", None),
    "endless-1xx": (endless_1xx, "http", EventStatus.FAILED, "Timeout: no complete response", None),
    "bad-chunks": (bad_chunks, "http", EventStatus.FAILED, "ProtocolError: invalid HTTP response: Chunk size", None),
    "not-http": (not_http, "http", EventStatus.FAILED, "ProtocolError: invalid HTTP response: Bad status line", None),
    "redirect": (redirect_forever, "http", EventStatus.FAILED, "Redirect: 302", None),
    "huge": (huge, "http", EventStatus.FINISHED, None, "y" * EXCERPT),
    "tls-stall": (silent, "https", EventStatus.FAILED, "Timeout: no connection within 1s", None),
    "never-reads": (silent, "http", EventStatus.FAILED, "Timeout: no complete response", None),
}


def kind_of(change_id: str) -> str:
    return change_id.split("-", 1)[1].rsplit("-", 1)[0]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def test_hostile_receivers_end_in_time_with_bounded_memory(settings_factory):
    for kind in ("gzip", "deflate"):
        bomb(kind)  # built before the baseline: the test's own memory, not the dispatcher's
    s = settings_factory(http_timeout=f"{int(TIMEOUT_S * 1000)}ms", http_connect_timeout="1s", max_attempts=1,
                         retry_delays="", response_excerpt_bytes=EXCERPT)
    servers: dict[str, HostileServer] = {}
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    try:
        for kind, (behave, scheme, *_rest) in KINDS.items():
            servers[kind] = await HostileServer(behave, scheme).start()
            await store.webhooks.create(servers[kind].url, [f"hostile.{kind}"])

        async with running_worker(s), Publisher.from_settings(s) as publisher:
            async def round_(tag: str, n: int) -> list[str]:
                ids = [f"{tag}-{kind}-{i}" for kind in KINDS for i in range(n)]
                await publisher.publish_many([ChangeEvent(id=cid, type=f"hostile.{kind_of(cid)}",
                                                          entity=Entity(kind="a", id=cid)) for cid in ids])

                async def settled() -> bool:
                    done = 0
                    for status in (EventStatus.FINISHED, EventStatus.FAILED):
                        done += await store.events.count({"status": status.value})
                    return done >= expected[0] + len(ids)

                await wait_until(settled, 60, interval=0.1, message=f"{len(ids)} hostile deliveries settled")
                expected[0] += len(ids)
                return ids

            expected = [0]
            await round_("warm", 1)  # first use of TLS, zlib, parsers: one-time allocations
            before, peak = rss_mb(), [0.0]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], rss_mb())
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            ids = await round_("run", PER_KIND)
            sampler.cancel()
            took = time.monotonic() - started
            grown = max(peak[0], rss_mb()) - before

        wrong = []
        for cid in ids:
            kind = kind_of(cid)
            _, _, status, error, excerpt = KINDS[kind]
            (ev,) = await store.events.find_for_change(cid)
            (attempt,) = await store.attempts.for_event(ev.id)
            ok = (ev.status == status and attempt.duration_ms <= TIMEOUT_S * 1000 + 300
                  and ((error is None and attempt.error is None) or (error and (attempt.error or "").startswith(error)))
                  and (excerpt is None or (attempt.response_excerpt or "").startswith(excerpt)))
            if excerpt and excerpt.startswith(("A", "y")):
                ok = ok and attempt.response_excerpt == excerpt
            ok = ok and "\n" not in (attempt.error or "")
            if not ok:
                wrong.append((kind, ev.status, attempt.duration_ms, attempt.error,
                              (attempt.response_excerpt or "")[:60]))
        for w in wrong:
            print("WRONG", w)
        assert not wrong, wrong
        print(f"{len(ids)} hostile deliveries in {took:.1f}s; RSS {before:.0f} MB → peak {peak[0]:.0f} MB "
              f"(+{grown:.1f} MB)")
        assert grown < 20, f"RSS grew by {grown:.1f} MB over {len(ids)} hostile deliveries"
    finally:
        await store.close()
        for server in servers.values():
            await server.stop()
