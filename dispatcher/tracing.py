"""The dispatcher's part of a trace: the ``fan-out`` span of a change, the ``deliver`` span of each delivery
message, and the ``traceparent`` every attempt sends.

The tree: the producer's span (the change's ``traceparent``) → ``fan-out`` → one ``deliver`` per delivery
message → the receiver's span. Each event stores the context of its change's ``fan-out``
(:class:`~hookpost.common.traceparent.TraceContext`), and every delivery message carries it
(:func:`~hookpost.common.deliveries.first_delivery`, then ``model_copy`` for retries), so an attempt hours later,
a restart or a replay hangs under the same ``fan-out`` without reading the store.

Hookpost makes the ids itself when no SDK records: a change without a ``traceparent`` gets a new trace id, and
each attempt a new span id, so receivers always get a valid ``traceparent``. With an SDK the span ids are the
recorded spans' own (the span id sent = the ``deliver`` span's). ``deliver`` is a client span with the HTTP
semantic conventions when the request was made; a delivery held behind a breaker, parked in the defer ladder
or parked for its rate limit (or given up without a request) gets a short internal ``deliver`` span with its
``hookpost.outcome`` instead.
"""

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from hookpost.common.amqp import IncomingMessage
from hookpost.common.models import DeliveryMessage, Webhook
from hookpost.common.traceparent import TraceContext, context_for, from_headers, new_span_id, new_trace_id, to_headers
from hookpost.common.tracing import context_of, parent_context, tracer
from hookpost.dispatcher.policy import AttemptResult

SENT, HELD, DEFERRED, RATE_LIMITED, GAVE_UP = "sent", "held", "deferred", "rate_limited", "gave_up"
S = TypeVar("S")


class _FanOut:
    __slots__ = ("parent", "span")

    def __init__(self, parent: TraceContext | None, span: trace.Span | None) -> None:
        self.parent = parent
        self.span = span


_fan_out: ContextVar[_FanOut | None] = ContextVar("hookpost_fan_out", default=None)
_outgoing: ContextVar[dict[str, str] | None] = ContextVar("hookpost_trace_headers", default=None)


def traced_fan_out(handle: Callable[[S, IncomingMessage], Awaitable[Any]]
                   ) -> Callable[[S, IncomingMessage], Awaitable[Any]]:
    """Run a change's fan-out in its ``fan-out`` span: a consumer span, child of the change's ``traceparent``
    (an AMQP header), or the root of a new trace when the change has none or an invalid one."""
    @functools.wraps(handle)
    async def run(self: S, msg: IncomingMessage) -> Any:
        parent = from_headers(msg.properties.headers)
        t = tracer()
        if t is None:
            token = _fan_out.set(_FanOut(parent, None))
            try:
                return await handle(self, msg)
            finally:
                _fan_out.reset(token)
        attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "process",
                      "messaging.destination.name": msg.routing_key,
                      "messaging.message.id": msg.properties.message_id or ""}
        with t.start_as_current_span("fan-out", context=parent_context(parent) if parent else Context(),
                                     kind=SpanKind.CONSUMER, attributes=attributes) as span:
            token = _fan_out.set(_FanOut(parent, span))
            try:
                return await handle(self, msg)
            finally:
                _fan_out.reset(token)
    return run


def fanned_out(matched: int) -> TraceContext | None:
    """Note how many webhooks the change in fan-out matched; return the trace context its events keep (None
    outside a fan-out). Without an SDK it is the change's own context, or a new trace if it had none."""
    current = _fan_out.get()
    if current is None:
        return None
    if current.span is not None:
        current.span.set_attribute("hookpost.webhooks.matched", matched)
        return context_of(current.span, current.parent.tracestate if current.parent else None)
    if current.parent is None:
        current.parent = TraceContext.model_construct(trace_id=new_trace_id(), parent_span_id=new_span_id(),
                                                      sampled=True, tracestate=None)
    return current.parent


def outgoing_headers() -> dict[str, str] | None:
    """The ``traceparent`` / ``tracestate`` headers of the attempt being made (None outside :func:`attempt`)."""
    return _outgoing.get()


def _trace_of(dm: DeliveryMessage) -> TraceContext:
    return dm.trace or context_for(dm.event_id)


def _attributes(dm: DeliveryMessage, webhook_id: str) -> dict[str, Any]:
    return {"hookpost.event.id": dm.event_id, "hookpost.webhook.id": webhook_id, "hookpost.attempt": dm.attempt}


class attempt:
    """Make the attempt of ``dm`` inside its ``deliver`` client span, with the ``traceparent`` it sends (the
    event's trace id and this attempt's own span id) available to the sender (:func:`outgoing_headers`); the
    span is None without an SDK. ``done(result)`` records what came back. (A class rather than a generator: this
    runs for every attempt, and with tracing off it is all the tracing an attempt costs.)"""

    __slots__ = ("_scope", "_token", "dm", "hook", "span")

    def __init__(self, dm: DeliveryMessage, hook: Webhook) -> None:
        self.dm = dm
        self.hook = hook
        self.span: trace.Span | None = None
        self._scope: Any = None

    def __enter__(self) -> "attempt":
        dm = self.dm
        ctx = dm.trace or context_for(dm.event_id)
        t = tracer()
        if t is None:
            self._token = _outgoing.set(to_headers(ctx.trace_id, new_span_id(), ctx.sampled, ctx.tracestate))
            return self
        url = urlsplit(self.hook.url)
        attributes = {**_attributes(dm, self.hook.id), "http.request.method": "POST",
                      "url.full": f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}",  # no credentials
                      "server.address": url.hostname or "",
                      "server.port": url.port or (443 if url.scheme == "https" else 80)}
        if dm.attempt > 1:
            attributes["http.request.resend_count"] = dm.attempt - 1
        span = self.span = t.start_span("deliver", context=parent_context(ctx), kind=SpanKind.CLIENT,
                                        attributes=attributes)
        sent = context_of(span, ctx.tracestate) or ctx
        self._token = _outgoing.set(to_headers(sent.trace_id, sent.parent_span_id, sent.sampled, sent.tracestate))
        self._scope = trace.use_span(span, end_on_exit=True)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        _outgoing.reset(self._token)
        if self._scope is not None:
            self._scope.__exit__(*exc)

    def done(self, result: AttemptResult) -> None:
        """Record what came back: the status code, the error kind, and the outcome ``sent``."""
        span = self.span
        if span is None:
            return
        attributes: dict[str, Any] = {"hookpost.outcome": SENT}
        if result.status_code is not None:
            attributes["http.response.status_code"] = result.status_code
        if not result.ok:
            attributes["error.type"] = (result.error.split(":", 1)[0] if result.error else str(result.status_code))[:60]
            span.set_status(Status(StatusCode.ERROR, result.summary()[:200]))
        span.set_attributes(attributes)


def not_sent(dm: DeliveryMessage, outcome: str) -> None:
    """Record the ``deliver`` span of a delivery that made no request: ``held`` behind an open breaker,
    ``deferred`` to the defer ladder, ``rate_limited`` (parked for its webhook's rate limit), or ``gave_up``."""
    t = tracer()
    if t is None:
        return
    span = t.start_span("deliver", context=parent_context(_trace_of(dm)), kind=SpanKind.INTERNAL,
                        attributes={**_attributes(dm, dm.webhook_id), "hookpost.outcome": outcome})
    span.end()
