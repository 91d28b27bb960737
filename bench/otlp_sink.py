"""A small OTLP/HTTP trace collector for benchmarks: accepts ``POST /v1/traces``, counts the spans and drops them.

    python -m bench.otlp_sink --port 4318

On SIGTERM or SIGINT it prints ``{"spans": N, "requests": M}`` and exits.
"""

import argparse
import asyncio
import gzip
import json
import signal

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


async def serve(host: str, port: int) -> None:
    """Serve until a signal; then print the counts."""
    counts = {"spans": 0, "requests": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        counts["requests"] += 1
        counts["spans"] += sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))
