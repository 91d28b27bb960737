"""The aiohttp application of ``hookpost server``: ``/api/v1`` (bearer tokens, roles, problem+json errors,
OpenAPI at ``/api/v1/openapi.json``), and ``/healthz``, ``/readyz``, ``/metrics`` at the root.

The server is stateless (everything lives in the store), so several can run behind a load balancer; only the
failed-auth limit is per process. The web console (:mod:`hookpost.web.console`) adds its routes and its
middleware to the same app: ``create_app`` calls ``console.setup(app)`` unless ``console=False``.
"""

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pymongo.errors import PyMongoError

from hookpost.admin import Admin
from hookpost.admin.events import InvalidFieldError
from hookpost.common.records import ApiToken
from hookpost.common.settings import Settings
from hookpost.web import api_broker
from hookpost.web.api import ADMIN_KEY, PREFIX, ROUTES, SETTINGS_KEY, Route
from hookpost.web.auth import TOKEN_KEY, FailureLimiter, authenticate, client_address, require
from hookpost.web.openapi import build_openapi
from hookpost.web.problems import Handler, problem_middleware
from hookpost.web.tracing import tracing_middleware

LIMITER_KEY = web.AppKey("hookpost_limiter", FailureLimiter)
TRUSTED_KEY = web.AppKey("hookpost_trusted", list)
METRICS_KEY = web.AppKey("hookpost_metrics", "ServerMetrics")
SPEC_KEY = web.AppKey("hookpost_openapi", dict)
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
log = logging.getLogger("hookpost.web")


class ServerMetrics:
    """Prometheus metrics of the server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hookpost_api_requests_total", "API requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("hookpost_api_request_seconds", "API request duration by route", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.auth_failures = Counter("hookpost_api_auth_failures_total", "failed authentications",
                                     registry=self.registry)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request and time it, by route pattern (not by id)."""
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        metrics = request.app[METRICS_KEY]
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        if status == 401:
            metrics.auth_failures.inc()


async def request_token(request: web.Request) -> ApiToken:
    """Return the token record of ``request`` using this app's store, failed-auth limit and trusted proxies
    (raise 401/429 as problem errors); for the console's handlers as much as the API's."""
    app = request.app
    client = client_address(request, app[TRUSTED_KEY])
    return await authenticate(request, app[ADMIN_KEY], app[LIMITER_KEY], client)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every ``/api/…`` request (401/429); the routes check roles."""
    if request.path.startswith("/api/"):
        request[TOKEN_KEY] = await request_token(request)
    return await handler(request)


def check_query(route: Route, request: web.Request) -> None:
    """Refuse unknown query parameters and values that break the route's documented limits (repeats, length)."""
    known = {p.name for p in route.query}
    if any(part.startswith("=") for part in request.query_string.split("&")):
        raise InvalidFieldError("", "a query parameter without a name")
    for name in request.query:
        if name not in known:
            raise InvalidFieldError(name[:50], f"unknown query parameter {name[:50]!r}")
    for param in route.query:
        values = request.query.getall(param.name, [])
        if len(values) > (4 if param.repeat else 1):
            raise InvalidFieldError(param.name, f"{param.name} given too many times")
        longest = param.schema.get("maxLength")
        if longest is not None and any(len(v) > longest for v in values):
            raise InvalidFieldError(param.name, f"{param.name} is longer than {longest} characters")


def guarded(route: Route) -> Handler:
    """Wrap a route's handler with its role check and its query limits."""
    async def handle(request: web.Request) -> web.StreamResponse:
        require(request[TOKEN_KEY], route.role)
        check_query(route, request)
        return await route.handler(request)

    handle.__name__ = route.handler.__name__
    return handle


async def healthz(_request: web.Request) -> web.Response:
    """The process runs."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The store and the broker answer (each within 3 s)."""
    admin = request.app[ADMIN_KEY]
    checks = {"store": False, "broker": False}
    try:
        checks["store"] = await asyncio.wait_for(admin.store.ping(), 3)
    except Exception:
        checks["store"] = False
    try:
        await asyncio.wait_for(admin.publisher.connect(), 3)
        checks["broker"] = True
    except Exception:
        checks["broker"] = False
    ready = all(checks.values())
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.json_response(request.app[SPEC_KEY])


def create_app(settings: Settings, *, admin: Admin | None = None,
               plugins: Sequence[Callable[[web.Application], None]] = (), console: bool = True) -> web.Application:
    """Build the server's application. ``admin`` defaults to one opened on ``settings`` and closed with the app;
    each of ``plugins`` may add routes, middlewares or startup hooks; ``console`` adds the web console at ``/``."""
    app = web.Application(middlewares=[tracing_middleware, metrics_middleware, problem_middleware, auth_middleware],
                          client_max_size=max(settings.max_request_bytes, settings.max_change_bytes))
    owned = admin is None
    app[ADMIN_KEY] = admin or Admin.open_unmanaged(settings)
    app[SETTINGS_KEY] = settings
    app[LIMITER_KEY] = FailureLimiter()
    app[TRUSTED_KEY] = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies]
    app[METRICS_KEY] = ServerMetrics()
    app[SPEC_KEY] = build_openapi()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(PREFIX + "/openapi.json", openapi)
    for route in ROUTES:
        app.router.add_route(route.method, PREFIX + route.path, guarded(route))

    async def startup(app: web.Application) -> None:
        try:  # the store may be down at start: serve anyway (/readyz says so) and try again at the next start
            await app[ADMIN_KEY].store.ensure_indexes()
        except PyMongoError as exc:
            log.warning("could not ensure the store's indexes", extra={"error": str(exc)[:300]})

    async def shutdown(app: web.Application) -> None:
        await app[ADMIN_KEY].jobs.wait()
        if owned:
            await app[ADMIN_KEY].close()

    api_broker.setup(app)  # the set-aside routes' broker connection, the Hookpost-Version header
    app.on_startup.append(startup)
    app.on_cleanup.append(shutdown)
    for plugin in plugins:
        plugin(app)
    if console:
        from hookpost.web import console as web_console

        web_console.setup(app)
    return app
