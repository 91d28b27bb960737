"""The benchmark's webhook receivers, in a process of their own: ``python -m bench.receiver --control PORT
--ok PORT [--ok PORT …] [--hang PORT …]``.

``--ok`` ports answer every POST with 200 at once; ``--hang`` ports hold the request for ``--hang-seconds``
(longer than the dispatcher's HTTP timeout, so every attempt there times out). Each port records, per distinct
``webhook-id``, when it first arrived (epoch seconds) and its body. The control port serves:

- ``GET /stats``: per port, requests, distinct webhook ids, first and last first-receipt time;
- ``GET /latencies``: ``[receipt time, receipt time - data.details.sent]`` for every first receipt whose payload
  carries ``data.details.sent`` (the publisher's send time);
- ``POST /reset``: forget everything.
"""

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class PortRecord:
    """What one port received."""

    requests: int = 0
    ids: set[str] = field(default_factory=set)
    first: float | None = None
    last: float | None = None
    bodies: list[tuple[float, bytes]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data."""
        return {"requests": self.requests, "unique": len(self.ids), "first": self.first, "last": self.last}


class ReceiverApp:
    """The receiving servers and the control server of one process."""

    def __init__(self, ok: list[int], hang: list[int], hang_seconds: float) -> None:
        self.ok = ok
        self.hang = hang
        self.hang_seconds = hang_seconds
        self.records: dict[int, PortRecord] = {p: PortRecord() for p in [*ok, *hang]}

    def _record(self, port: int, request: web.Request, body: bytes) -> None:
        now = time.time()
        rec = self.records[port]
        rec.requests += 1
        wid = request.headers.get("webhook-id", "")
        if wid not in rec.ids:
            rec.ids.add(wid)
            if rec.first is None:
                rec.first = now
            rec.last = now
            rec.bodies.append((now, body))

    def handler(self, port: int, hang: bool) -> Any:
        """Return the request handler of ``port``."""
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self._record(port, request, body)
            if hang:
                await asyncio.sleep(self.hang_seconds)
            return web.Response(text="ok")
        return handle

    async def stats(self, _request: web.Request) -> web.Response:
        """``GET /stats``."""
        return web.json_response({str(p): r.as_dict() for p, r in self.records.items()})

    async def latencies(self, _request: web.Request) -> web.Response:
        """``GET /latencies``."""
        out = []
        for rec in self.records.values():
            for at, body in rec.bodies:
                try:
                    sent = json.loads(body)["data"]["details"]["sent"]
                except (ValueError, KeyError, TypeError):
                    continue
                out.append([at, at - float(sent)])
        return web.json_response(out)

    async def reset(self, _request: web.Request) -> web.Response:
        """``POST /reset``."""
        self.records = {p: PortRecord() for p in self.records}
        return web.json_response({"ok": True})

    async def serve(self, control: int) -> None:
        """Serve every port until cancelled."""
        runners = []
        for port in [*self.ok, *self.hang]:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handler(port, port in self.hang))
            runners.append((web.AppRunner(app, access_log=None, shutdown_timeout=0.1), port))
        ctl = web.Application()
        ctl.router.add_get("/stats", self.stats)
        ctl.router.add_get("/latencies", self.latencies)
        ctl.router.add_post("/reset", self.reset)
        runners.append((web.AppRunner(ctl, access_log=None), control))
        for runner, port in runners:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--ok", type=int, action="append", default=[])
    parser.add_argument("--hang", type=int, action="append", default=[])
    parser.add_argument("--hang-seconds", type=float, default=60.0)
    args = parser.parse_args()
    try:
        asyncio.run(ReceiverApp(args.ok, args.hang, args.hang_seconds).serve(args.control))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
