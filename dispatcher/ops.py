"""The ops server: ``/healthz`` (the process runs), ``/readyz`` (broker and store reachable; also the broker's file
descriptors against its limit, where the management API tells), ``/metrics``."""

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hookpost.common.broker_files import CachedFileReport
from hookpost.dispatcher.metrics import Metrics


class OpsServer:
    """A small aiohttp server for probes and Prometheus."""

    def __init__(self, metrics: Metrics, readiness: Callable[[], dict[str, bool]], host: str, port: int,
                 broker_files: CachedFileReport | None = None) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.broker_files = broker_files
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start serving; return the bound port (useful when ``port`` is 0)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _req: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        body: dict[str, object] = {"ready": ready, **checks}
        if self.broker_files is not None:  # a report only: it never makes the process unready
            body["broker_files"] = (await self.broker_files.get()).as_dict()
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
