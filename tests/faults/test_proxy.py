"""The fault proxy's latency mode: every reply arrives ``latency`` seconds late, in order, none lost; lowering
the latency mid-stream never lets newer bytes overtake older ones."""

import asyncio
import time

from tests.faults.proxy import TcpProxy


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back whatever arrives, until the client closes."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_latency_delays_each_reply_and_keeps_order() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with TcpProxy("127.0.0.1", port, name="echo") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"fast\n")
            await writer.drain()
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.readline(), 5) == b"fast\n"
            assert time.monotonic() - t0 < 0.2

            proxy.set_latency(0.4)
            t0 = time.monotonic()
            writer.write(b"slow-1\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            proxy.set_latency(0.0)  # what waits keeps its due time; what comes next queues behind it
            writer.write(b"after-1\n")
            await writer.drain()
            first = await asyncio.wait_for(reader.readline(), 5)
            took = time.monotonic() - t0
            second = await asyncio.wait_for(reader.readline(), 5)
            assert (first, second) == (b"slow-1\n", b"after-1\n")
            assert 0.35 <= took < 1.5, took
            assert proxy.stats.delayed >= 1 and proxy.latency == {"reply": 0.0, "request": 0.0}

            writer.write(b"fast-again\n")
            await writer.drain()
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.readline(), 5) == b"fast-again\n"
            assert time.monotonic() - t0 < 0.2
        finally:
            writer.close()
    server.close()
    await server.wait_closed()
