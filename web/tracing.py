"""A span per request of ``hookpost server``: a server span with the HTTP semantic conventions, child of the
request's ``traceparent``. Without an SDK no span is made, but a request's ``traceparent`` is still the current
context while it is handled, so a change published by ``POST /api/v1/changes`` carries it on."""

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hookpost.common.traceparent import from_headers
from hookpost.common.tracing import parent_context, tracer
from hookpost.web.problems import Handler

UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else ""


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Handle ``request`` in its server span (or, without an SDK, in the context its ``traceparent`` names)."""
    if request.path in UNTRACED:
        return await handler(request)
    parent = from_headers(request.headers)
    ctx = parent_context(parent) if parent is not None else None
    t = tracer()
    if t is None:
        if ctx is None:
            return await handler(request)
        token = otel_context.attach(ctx)
        try:
            return await handler(request)
        finally:
            otel_context.detach(token)
    route = _route(request)
    attributes = {"http.request.method": request.method, "url.path": request.path, "url.scheme": request.scheme,
                  "server.address": request.host.rsplit(":", 1)[0]}
    if route:
        attributes["http.route"] = route
    name = f"{request.method} {route}" if route else request.method
    with t.start_as_current_span(name, context=ctx or otel_context.Context(), kind=SpanKind.SERVER,
                                 attributes=attributes, record_exception=False,
                                 set_status_on_exception=False) as span:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            _status(span, exc.status)
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
            raise
        _status(span, resp.status)
        return resp


def _status(span: trace.Span, code: int) -> None:
    span.set_attribute("http.response.status_code", code)
    if code >= 500:
        span.set_attribute("error.type", str(code))
        span.set_status(Status(StatusCode.ERROR))
