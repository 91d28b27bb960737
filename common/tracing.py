"""OpenTelemetry glue: which tracer records Hookpost's spans (if any), the SDK set-up from ``OTEL_*`` variables,
the ``publish`` span, and the trace fields of log lines.

Hookpost uses only ``opentelemetry-api``. Spans are recorded when a tracer provider is installed: by
:func:`configure` (``hookpost dispatcher`` and ``hookpost server`` call it; it needs ``pip install
'hookpost[otel]'`` and an exporter named by the standard variables), or by the application that embeds the
:class:`~hookpost.producer.Publisher` (its own global provider). Without one, :func:`tracer` is None and the
callers skip the spans altogether; the W3C ids (:mod:`hookpost.common.traceparent`) are made all the same.
"""

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TracerProvider,
    TraceState,
)

from hookpost.common.traceparent import TraceContext, to_headers

log = logging.getLogger("hookpost.tracing")
SCOPE = "hookpost"
_override: TracerProvider | None = None
_cached: tuple[object, Tracer] | None = None
_none_until = 0.0  # until when (monotonic) "no provider" holds without looking again


def install(provider: TracerProvider | None) -> None:
    """Record Hookpost's spans with ``provider`` (None: go back to the global provider); for :func:`configure`
    and for tests (the global provider can be set only once per process)."""
    global _override, _cached, _none_until
    _override = provider
    _cached = None
    _none_until = 0.0


def tracer() -> Tracer | None:
    """Return the tracer that records Hookpost's spans, or None when no SDK is installed (spans are skipped).

    Without one, the answer is kept for a second (a provider set later is used from then on): looking up the
    global provider costs more than the rest of an attempt's tracing when tracing is off.
    """
    global _cached, _none_until
    if _override is None:
        if _none_until and time.monotonic() < _none_until:
            return None
        provider = trace.get_tracer_provider()
    else:
        provider = _override
    if _cached is not None and _cached[0] is provider:
        return _cached[1]
    if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        _none_until = time.monotonic() + 1.0
        return None
    _none_until = 0.0
    _cached = (provider, provider.get_tracer(SCOPE))
    return _cached[1]


def parent_context(ctx: TraceContext) -> Context:
    """Return an OpenTelemetry context whose current span is the remote parent ``ctx`` names."""
    state = TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None
    span_context = SpanContext(int(ctx.trace_id, 16), int(ctx.parent_span_id, 16), is_remote=True,
                               trace_flags=TraceFlags(TraceFlags.SAMPLED if ctx.sampled else TraceFlags.DEFAULT),
                               trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def context_of(span: trace.Span, tracestate: str | None = None) -> TraceContext | None:
    """Return ``span``'s ids as the :class:`TraceContext` of what hangs under it (None if it has no valid ids);
    ``tracestate`` is used when the span carries none."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    state = sc.trace_state.to_header() if sc.trace_state else None
    return TraceContext(trace_id=f"{sc.trace_id:032x}", parent_span_id=f"{sc.span_id:016x}",
                        sampled=sc.trace_flags.sampled, tracestate=state or tracestate)


def current_headers() -> dict[str, str]:
    """Return the ``traceparent`` / ``tracestate`` headers of the caller's current span (empty without one)."""
    ctx = context_of(trace.get_current_span())
    if ctx is None:
        return {}
    return to_headers(ctx.trace_id, ctx.parent_span_id, ctx.sampled, ctx.tracestate)


@contextmanager
def publish_span(exchange: str, count: int) -> Iterator[dict[str, str]]:
    """Open the ``publish`` span (a producer span, child of the caller's current span) and yield the headers that
    carry it on the published change events. Without an SDK no span is made and the caller's own context, if
    any, is passed on."""
    t = tracer()
    if t is None:
        yield current_headers()
        return
    attributes = {"messaging.system": "rabbitmq", "messaging.destination.name": exchange,
                  "messaging.operation.type": "send", "messaging.batch.message_count": count}
    with t.start_as_current_span("publish", kind=SpanKind.PRODUCER, attributes=attributes):
        yield current_headers()


def log_fields() -> dict[str, str]:
    """Return ``trace_id`` and ``span_id`` of the current span for a log line (empty when there is none)."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return {}
    return {"trace_id": f"{sc.trace_id:032x}", "span_id": f"{sc.span_id:016x}"}


def _wanted(env: dict[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str, env: dict[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                             "'hookpost[otel]' brings http/protobuf") from None
        return GrpcExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure(service_name: str, *, set_global: bool = True) -> Any:
    """Set up the OpenTelemetry SDK from the standard ``OTEL_*`` variables and return its tracer provider, or
    None when tracing is not asked for or the SDK is not installed (then everything stays a no-op).

    Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) or ``OTEL_TRACES_EXPORTER``
    (``otlp``, ``console``) is set, unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The SDK
    reads the rest itself: ``OTEL_SERVICE_NAME`` (default ``service_name``), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER`` / ``…_ARG``, the exporter's endpoint, headers and timeout, and ``OTEL_BSP_*`` of the
    batch processor. A global provider set by someone else is kept and used. ``set_global=False`` installs the
    provider for Hookpost only (tests).
    """
    env = dict(os.environ)
    if not _wanted(env):
        return None
    if set_global and not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return trace.get_tracer_provider()  # an application or opentelemetry-instrument set one up already
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* tracing variables are set but the OpenTelemetry SDK is not installed: "
                    "pip install 'hookpost[otel]'; tracing stays off")
        return None
    try:
        exporter = _exporter(env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp", env)
    except ValueError as exc:
        log.error("tracing stays off: %s", exc)
        return None
    resource = Resource.create()
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
        install(None)  # forget "no provider"
    else:
        install(provider)
    log.info("tracing on", extra={"service": resource.attributes.get(SERVICE_NAME),
                                  "exporter": type(exporter).__name__})
    return provider
