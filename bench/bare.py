"""The limits on this machine, without Hookpost: a bare aiohttp POST loop and a bare pika publish→consume→ack loop.

Each runs in a process of its own and prints one JSON line: operations, wall seconds, CPU seconds of this process
(measured around the loop only, so interpreter start-up and imports are not counted).

    python -m bench.bare http --url http://127.0.0.1:8001/hook --url … --n 10000 --concurrency 20
    python -m bench.bare amqp --url amqp://guest:guest@127.0.0.1:5672/%2F --n 10000 --queue bench-bare-x
"""

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import pika
import pika.channel
from pika.adapters.asyncio_connection import AsyncioConnection


def sample_body(i: int) -> bytes:
    """Return a JSON body shaped and sized like a Hookpost webhook payload."""
    return json.dumps({
        "id": f"evt_01M8FDS0X0AQEP0JQ9FNM{i:08d}", "type": "article.updated",
        "timestamp": "2026-11-27T21:14:57.824000Z",
        "data": {"entity": {"kind": "article", "id": f"A-{i}"}, "change_id": f"chg-bench-{i}",
                 "occurred_at": "2026-11-27T21:14:57.814000Z", "details": {"n": i}},
    }, separators=(",", ":")).encode()


async def http_loop(urls: list[str], n: int, concurrency: int) -> dict[str, Any]:
    """POST ``n`` bodies round-robin to ``urls`` with ``concurrency`` requests in flight; read each response."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    errors = 0
    counter = iter(range(n))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                headers = {"content-type": "application/json", "webhook-id": f"bare-{i}"}
                try:
                    async with session.post(urls[i % len(urls)], data=sample_body(i), headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"ops": n, "errors": errors, "seconds": wall, "cpu_s": cpu}


class _Bridge:
    """Just enough of pika's callback API as awaitables for the bare loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, fn: Any, **kwargs: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()

        def done(*args: Any) -> None:
            if not fut.done():
                fut.set_result(args)

        fn(callback=done, **kwargs)
        return fut

    async def connect(self, url: str) -> AsyncioConnection:
        fut: asyncio.Future[AsyncioConnection] = self.loop.create_future()
        AsyncioConnection(pika.URLParameters(url), on_open_callback=fut.set_result,
                          on_open_error_callback=lambda _c, e: fut.set_exception(Exception(str(e))),
                          custom_ioloop=self.loop)
        return await fut

    async def channel(self, conn: AsyncioConnection) -> pika.channel.Channel:
        fut: asyncio.Future[pika.channel.Channel] = self.loop.create_future()
        conn.channel(on_open_callback=fut.set_result)
        return await fut


async def amqp_loop(url: str, n: int, queue: str, queue_type: str, window: int, prefetch: int) -> dict[str, Any]:
    """Publish ``n`` persistent messages with confirms (windows of ``window``) to a fresh queue while consuming
    and acking each (prefetch ``prefetch``) on the same connection; return when the last one is acked."""
    loop = asyncio.get_running_loop()
    b = _Bridge(loop)
    conn = await b.connect(url)
    pub, sub = await b.channel(conn), await b.channel(conn)
    args = {"x-queue-type": queue_type}
    await b.call(pub.queue_declare, queue=queue, durable=True, arguments=args)
    confirmed = 0
    progress = asyncio.Event()

    def on_confirm(frame: Any) -> None:
        nonlocal confirmed
        confirmed = max(confirmed, frame.method.delivery_tag)
        progress.set()

    await b.call(pub.confirm_delivery, ack_nack_callback=on_confirm)
    await b.call(sub.basic_qos, prefetch_count=prefetch)
    consumed = 0
    finished: asyncio.Future[None] = loop.create_future()

    def on_message(ch: pika.channel.Channel, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal consumed
        ch.basic_ack(method.delivery_tag)
        consumed += 1
        if consumed >= n and not finished.done():
            finished.set_result(None)

    sub.basic_consume(queue, on_message)
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    cpu0, t0 = time.process_time(), time.perf_counter()
    published = 0
    while published < n:
        for _ in range(min(window, n - published)):
            published += 1
            pub.basic_publish("", queue, sample_body(published), props)
        while confirmed < published:
            progress.clear()
            await progress.wait()
    await finished
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await b.call(pub.queue_delete, queue=queue)
    conn.close()
    await asyncio.sleep(0.1)
    return {"ops": n, "errors": 0, "seconds": wall, "cpu_s": cpu}


def main() -> None:
    """Parse the command line, run one loop, print its JSON result."""
    parser = argparse.ArgumentParser(description="bare baselines")
    sub = parser.add_subparsers(dest="kind", required=True)
    h = sub.add_parser("http")
    h.add_argument("--url", action="append", required=True)
    h.add_argument("--n", type=int, default=10000)
    h.add_argument("--concurrency", type=int, default=20)
    a = sub.add_parser("amqp")
    a.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    a.add_argument("--n", type=int, default=10000)
    a.add_argument("--queue", required=True)
    a.add_argument("--queue-type", default="quorum")
    a.add_argument("--window", type=int, default=500)
    a.add_argument("--prefetch", type=int, default=200)
    args = parser.parse_args()
    if args.kind == "http":
        result = asyncio.run(http_loop(args.url, args.n, args.concurrency))
    else:
        result = asyncio.run(amqp_loop(args.url, args.n, args.queue, args.queue_type, args.window, args.prefetch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
