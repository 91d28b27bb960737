"""Test helpers: a scripted aiohttp receiver, condition waits with deadlines, a dispatcher runner."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hookpost.common.models import as_utc
from hookpost.common.settings import Settings
from hookpost.dispatcher.worker import Worker
from hookpost.store import Store


@dataclass
class Received:
    """One request a test receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        import json
        return json.loads(self.body)


Responder = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1 that answers from a script and records every request.

    ``script`` is a list of status codes (the last one repeats), or ``respond(n, request)`` for full control
    (``n`` counts requests from 1).
    """

    script: list[int] = field(default_factory=lambda: [200])
    respond: Responder | None = None
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        n = len(self.requests)
        if self.respond is not None:
            return await self.respond(n, request)
        status = self.script[min(n, len(self.script)) - 1]
        return web.Response(status=status, text=f"answer {n}: {status}")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def wait_until(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
                     message: str = "condition") -> Any:
    """Poll ``cond`` (sync or async) until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


@asynccontextmanager
async def running_worker(settings: Settings):  # type: ignore[no-untyped-def]
    """Run a dispatcher :class:`Worker` in this event loop for the duration of the block."""
    worker = Worker(settings, name="hookpost-test")
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.connected.is_set() or task.done(), 20, message="worker connected")
        if task.done():
            task.result()
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def drain_queue(settings: Settings, queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Take every ready message out of ``queue``; return their headers and bodies."""
    from hookpost.common.amqp import AmqpConnection

    out = []
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel()
        while (msg := await ch.get(queue)) is not None:
            out.append((msg.headers, msg.body))
            msg.ack()
    finally:
        await conn.close()
    return out


async def queue_depth(settings: Settings, queue: str) -> int:
    """Return the number of ready messages in ``queue``."""
    from hookpost.common.amqp import AmqpConnection

    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        return await (await conn.channel()).queue_depth(queue)
    finally:
        await conn.close()


async def attempt_records(store: Store, webhook_id: str | None = None,
                          limit: int = 500_000) -> list[tuple[str, float]]:
    """Every recorded attempt (of ``webhook_id``'s events, or all) as ``(event id, start in epoch seconds)``: the
    first attempts kept in their events' documents and the later ones in ``attempts``, read in two queries."""
    query: dict[str, Any] = {} if webhook_id is None else {"webhook_id": webhook_id}
    firsts = store.events.coll.find(query, {"first_attempt": 1}).limit(limit).batch_size(5000)
    out = [(d["_id"], as_utc(a["started_at"]).timestamp()) async for d in firsts if (a := d.get("first_attempt"))]
    later = store.attempts.coll.find(query, {"event_id": 1, "started_at": 1}).limit(limit).batch_size(5000)
    return out + [(d["event_id"], as_utc(d["started_at"]).timestamp()) async for d in later]
