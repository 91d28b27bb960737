"""Receivers of different kinds for the pace benchmark: ``python -m bench.kinds --kind KIND --port P --control C``.

Kinds (``--kind``):

- ``aiohttp`` / ``aiohttp:0.02``: an aiohttp server (keep-alive, listen backlog 1024), with an optional handler
  delay in seconds;
- ``stdlib`` / ``stdlib:128`` / ``stdlib:128:0.02``: Python's ``http.server.ThreadingHTTPServer`` — HTTP/1.0, so
  one connection per request — with its listen backlog (default 5, the standard library's) and an optional
  handler delay. A modest in-house receiver looks like this.

The receiving port records, per distinct ``webhook-id``, the first receipt time and the publisher's send time
(``data.details.sent``) if the payload has one. The control port (a standard-library server of its own) serves
``GET /stats`` (requests, distinct ids, first and last receipt) and ``GET /latencies`` (receipt − sent, seconds)
and ``POST /reset``.
"""

import argparse
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiohttp import web


class Record:
    """What the receiving port got; thread-safe (the standard-library server handles requests in threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.requests = 0
            self.first: dict[str, float] = {}
            self.latencies: list[float] = []
            self.first_at: float | None = None
            self.last_at: float | None = None

    def add(self, webhook_id: str, body: bytes) -> None:
        """Note one request."""
        now = time.time()
        with self.lock:
            self.requests += 1
            if webhook_id in self.first:
                return
            self.first[webhook_id] = now
            self.first_at = self.first_at or now
            self.last_at = now
        try:
            sent = float(json.loads(body)["data"]["details"]["sent"])
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.latencies.append(now - sent)

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-ready data."""
        with self.lock:
            return {"requests": self.requests, "unique": len(self.first), "first": self.first_at,
                    "last": self.last_at}


def stdlib_server(port: int, record: Record, backlog: int, delay: float) -> ThreadingHTTPServer:
    """A ``ThreadingHTTPServer`` with listen backlog ``backlog`` answering 200 after ``delay`` seconds."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            record.add(self.headers.get("webhook-id", ""), body)
            if delay:
                time.sleep(delay)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = backlog
        daemon_threads = True

    return Server(("127.0.0.1", port), Handler)


def control_server(port: int, record: Record) -> ThreadingHTTPServer:
    """The control port: ``GET /stats``, ``GET /latencies``, ``POST /reset``."""

    class Handler(BaseHTTPRequestHandler):
        def _json(self, data: Any) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._json(record.stats() if self.path == "/stats" else list(record.latencies))

        def do_POST(self) -> None:
            record.reset()
            self._json({"ok": True})

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128
        daemon_threads = True

    return Server(("127.0.0.1", port), Handler)


async def serve_aiohttp(port: int, record: Record, delay: float) -> None:
    """Serve an aiohttp receiver on ``port`` until cancelled."""
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        record.add(request.headers.get("webhook-id", ""), body)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def parse_kind(kind: str) -> tuple[str, int, float]:
    """Split ``stdlib:128:0.02`` into (server, listen backlog, handler delay)."""
    name, *rest = kind.split(":")
    if name == "aiohttp":
        return name, 1024, float(rest[0]) if rest else 0.0
    if name == "stdlib":
        return name, int(rest[0]) if rest else 5, float(rest[1]) if len(rest) > 1 else 0.0
    raise SystemExit(f"unknown receiver kind {kind!r}")


def main() -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args()
    record = Record()
    name, backlog, delay = parse_kind(args.kind)
    threading.Thread(target=control_server(args.control, record).serve_forever, daemon=True).start()
    if name == "stdlib":
        stdlib_server(args.port, record, backlog, delay).serve_forever()
    else:
        try:
            asyncio.run(serve_aiohttp(args.port, record, delay))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
