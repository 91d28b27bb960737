"""Tracing over the fakes: the W3C trace context in (a change's AMQP headers), kept (each event), carried (every
delivery message, retries included) and sent (each attempt's own span id); the spans with the SDK's in-memory
exporter (names, kinds, attributes, parents); and the no-op path without an SDK."""

import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hookpost.common import tracing
from hookpost.common.logs import JsonFormatter
from hookpost.common.models import DeliveryMessage
from hookpost.common.traceparent import (
    clean_tracestate,
    context_for,
    format_traceparent,
    parse_traceparent,
)
from hookpost.dispatcher.consumer import Verdict
from hookpost.web.tracing import tracing_middleware
from tests.fakes import FakeMessage, FakeSender, build_dispatcher, make_change

TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PRODUCER_SPAN}-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Record Hookpost's spans with the SDK into memory for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    return version, trace_id, span_id, flags


async def fan_out_and_deliver(d, headers):  # type: ignore[no-untyped-def]
    """Fan a change out to one webhook; make its attempts until none is due; return the event."""
    hook = d.store.add_webhook()
    change = make_change()
    assert await d.fanout.handle(FakeMessage.of_change(change, headers=headers)) is Verdict.ACK
    [event] = d.store.all_events()
    queue = [p.delivery() for p in d.published if p.routing_key != "failed"]  # the first attempt's, or the retry
    # after it when fan-out made it (HOOKPOST_FIRST_ATTEMPT=inline)
    while queue:
        dm = queue.pop(0)
        seen = len(d.published)
        assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK
        queue += [p.delivery() for p in d.published[seen:] if p.routing_key != "failed"]
    assert d.store.event(event.id).webhook_id == hook.id
    return d.store.event(event.id)


# ---- W3C trace context ---------------------------------------------------------------------------------------


def test_traceparent_is_read_strictly_and_invalid_ones_are_ignored():
    ctx = parse_traceparent(TRACEPARENT, TRACESTATE)
    assert ctx is not None and (ctx.trace_id, ctx.parent_span_id, ctx.sampled) == (TRACE, PRODUCER_SPAN, True)
    assert ctx.tracestate == TRACESTATE
    assert parse_traceparent(TRACEPARENT.encode()) is not None  # pika may hand a header over as bytes
    assert parse_traceparent(f"00-{TRACE}-{PRODUCER_SPAN}-00").sampled is False  # type: ignore[union-attr]
    assert parse_traceparent(f"01-{TRACE}-{PRODUCER_SPAN}-01-later") is not None  # a later version: read on
    for bad in ("", "junk", f"00-{TRACE}-{PRODUCER_SPAN}-01-extra", f"ff-{TRACE}-{PRODUCER_SPAN}-01",
                f"00-{'0' * 32}-{PRODUCER_SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", TRACEPARENT.upper(), None, 42):
        assert parse_traceparent(bad) is None, bad
    assert format_traceparent(TRACE, "00f067aa0ba902b7", False) == f"00-{TRACE}-00f067aa0ba902b7-00"


def test_tracestate_keeps_whole_members_within_the_limit():
    long = ",".join(f"k{i}={'v' * 20}" for i in range(40))
    kept = clean_tracestate(long)
    assert kept is not None and len(kept) <= 512 and kept.count(",") < 32
    assert all(m.startswith("k") and m.endswith("v" * 20) for m in kept.split(","))
    assert clean_tracestate(" , ") is None


# ---- the no-op path: no SDK, ids made by Hookpost ------------------------------------------------------------


async def test_without_an_sdk_every_attempt_sends_the_change_trace_with_its_own_span_id():
    assert tracing.tracer() is None  # no provider installed: no spans at all
    d = await build_dispatcher(FakeSender(500, 200))
    event = await fan_out_and_deliver(d, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})

    assert event.trace is not None
    assert (event.trace.trace_id, event.trace.parent_span_id, event.trace.tracestate) == (TRACE, PRODUCER_SPAN,
                                                                                          TRACESTATE)
    first, second = (r.trace_headers for r in d.sender.requests)
    assert parts(first["traceparent"])[1] == parts(second["traceparent"])[1] == TRACE
    span_ids = {parts(first["traceparent"])[2], parts(second["traceparent"])[2]}
    assert len(span_ids) == 2 and PRODUCER_SPAN not in span_ids  # one per attempt, never the parent's
    assert first["tracestate"] == second["tracestate"] == TRACESTATE
    assert all(parts(h["traceparent"])[3] == "01" for h in (first, second))


async def test_a_change_without_a_traceparent_starts_a_new_trace():
    d = await build_dispatcher(FakeSender(200))
    event = await fan_out_and_deliver(d, None)
    assert event.trace is not None and event.trace.trace_id != TRACE
    [request] = d.sender.requests
    assert parts(request.trace_headers["traceparent"])[1] == event.trace.trace_id
    assert "tracestate" not in request.trace_headers


async def test_an_invalid_traceparent_is_ignored_and_a_new_trace_starts():
    d = await build_dispatcher(FakeSender(200))
    event = await fan_out_and_deliver(d, {"traceparent": "00-not-a-trace-01", "tracestate": TRACESTATE})
    assert event.status.value == "Finished"
    assert event.trace is not None and event.trace.trace_id != TRACE and event.trace.tracestate is None


async def test_a_delivery_message_from_before_tracing_still_gets_one_trace_for_all_its_attempts():
    d = await build_dispatcher(FakeSender(500, 200))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)  # stored as an older version would: no trace context
    assert dm.trace is None
    await d.delivery.handle(FakeMessage.of_delivery(dm))
    retry = d.published_to("", d.topology.retry_queue(0))[0].delivery()
    await d.delivery.handle(FakeMessage.of_delivery(retry))
    traces = {parts(r.trace_headers["traceparent"])[1] for r in d.sender.requests}
    assert traces == {context_for(event.id).trace_id}


def test_the_trace_rides_on_the_delivery_message_json():
    dm = DeliveryMessage(event_id="evt_1", webhook_id="wh_1", attempt=3, payload={},
                         trace=parse_traceparent(TRACEPARENT, TRACESTATE))
    again = DeliveryMessage.model_validate_json(dm.model_dump_json())
    assert again.trace == dm.trace
    with pytest.raises(ValueError):
        DeliveryMessage.model_validate({**dm.model_dump(), "trace": {"trace_id": "x", "parent_span_id": "y"}})


# ---- with the SDK: the spans --------------------------------------------------------------------------------


async def test_spans_fan_out_then_one_deliver_per_attempt_under_the_producer_span(spans):
    d = await build_dispatcher(FakeSender(500, 200))
    event = await fan_out_and_deliver(d, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})

    finished = spans.get_finished_spans()
    [fan_out] = [s for s in finished if s.name == "fan-out"]
    delivers = [s for s in finished if s.name == "deliver"]
    assert fan_out.kind is SpanKind.CONSUMER
    assert fan_out.context.trace_id == int(TRACE, 16) and fan_out.parent.span_id == int(PRODUCER_SPAN, 16)
    assert fan_out.attributes["hookpost.webhooks.matched"] == 1
    # the event keeps the fan-out span as the parent of its deliveries
    assert event.trace is not None and event.trace.parent_span_id == f"{fan_out.context.span_id:016x}"

    assert len(delivers) == 2
    for n, (span, request) in enumerate(zip(delivers, d.sender.requests, strict=True), start=1):
        assert span.kind is SpanKind.CLIENT
        assert span.parent.span_id == fan_out.context.span_id and span.context.trace_id == int(TRACE, 16)
        # the receiver's parent is this attempt's deliver span
        assert request.trace_headers["traceparent"] == f"00-{TRACE}-{span.context.span_id:016x}-01"
        assert request.trace_headers["tracestate"] == TRACESTATE
        attrs = span.attributes
        assert attrs["http.request.method"] == "POST" and attrs["url.full"] == "http://rx.example/hook"
        assert (attrs["server.address"], attrs["server.port"]) == ("rx.example", 80)
        assert (attrs["hookpost.event.id"], attrs["hookpost.webhook.id"]) == (event.id, event.webhook_id)
        assert attrs["hookpost.attempt"] == n and attrs["hookpost.outcome"] == "sent"
    assert delivers[0].attributes["http.response.status_code"] == 500
    assert delivers[0].attributes["error.type"] == "500" and delivers[0].status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in delivers[0].attributes
    assert delivers[1].attributes["http.response.status_code"] == 200
    assert delivers[1].attributes["http.request.resend_count"] == 1 and "error.type" not in delivers[1].attributes


async def test_a_transport_error_is_the_error_type(spans):
    from hookpost.dispatcher.policy import AttemptResult

    d = await build_dispatcher(FakeSender(AttemptResult(error="Timeout: no complete response within 2s"), 200))
    await fan_out_and_deliver(d, None)
    first = next(s for s in spans.get_finished_spans() if s.name == "deliver")
    assert first.attributes["error.type"] == "Timeout" and "http.response.status_code" not in first.attributes


async def test_a_change_without_a_traceparent_is_the_root_of_a_new_trace(spans):
    d = await build_dispatcher(FakeSender(200))
    event = await fan_out_and_deliver(d, None)
    [fan_out] = [s for s in spans.get_finished_spans() if s.name == "fan-out"]
    assert fan_out.parent is None
    assert event.trace is not None and event.trace.trace_id == f"{fan_out.context.trace_id:032x}"


async def test_a_delivery_without_a_request_gets_a_deliver_span_with_its_outcome(spans):
    d = await build_dispatcher(FakeSender(200))
    hook = d.store.add_webhook(active=False)
    _, dm = d.seed_event(hook)
    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK
    [span] = spans.get_finished_spans()
    assert (span.name, span.kind, span.attributes["hookpost.outcome"]) == ("deliver", SpanKind.INTERNAL, "gave_up")
    assert d.sender.requests == []


async def test_a_delivery_held_behind_an_open_breaker_is_a_held_deliver_span(spans):
    d = await build_dispatcher(FakeSender(default=503), breaker_threshold=2)
    hook = d.store.add_webhook()
    for _ in range(2):
        _, dm = d.seed_event(hook)
        await d.delivery.handle(FakeMessage.of_delivery(dm))
    _, dm = d.seed_event(hook)
    await d.delivery.handle(FakeMessage.of_delivery(dm))
    outcomes = [s.attributes["hookpost.outcome"] for s in spans.get_finished_spans() if s.name == "deliver"]
    assert outcomes == ["sent", "sent", "held"]


async def test_a_delivery_parked_for_its_rate_limit_is_a_rate_limited_deliver_span(spans):
    d = await build_dispatcher(FakeSender(default=200))
    hook = d.store.add_webhook(rate_limit=0.001)
    for _ in range(3):
        _, dm = d.seed_event(hook)
        await d.delivery.handle(FakeMessage.of_delivery(dm))
    outcomes = [s.attributes["hookpost.outcome"] for s in spans.get_finished_spans() if s.name == "deliver"]
    assert outcomes[0] == "sent" and "rate_limited" in outcomes[1:]
    assert len(d.sender.requests) == outcomes.count("sent")


# ---- publish, server requests, logs ---------------------------------------------------------------------------


def test_publish_span_is_a_child_of_the_callers_span_and_rides_on_the_change(spans):
    t = tracing.tracer()
    assert t is not None
    with t.start_as_current_span("caller") as caller:
        with tracing.publish_span("hp.changes", 2) as headers:
            pass
    publish = next(s for s in spans.get_finished_spans() if s.name == "publish")
    assert publish.kind is SpanKind.PRODUCER and publish.parent.span_id == caller.get_span_context().span_id
    assert publish.attributes["messaging.batch.message_count"] == 2
    assert headers["traceparent"] == f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-01"


def test_without_an_sdk_publish_passes_the_callers_context_on_and_adds_nothing_without_one():
    with tracing.publish_span("hp.changes", 1) as headers:
        assert headers == {}
    token = otel_context.attach(tracing.parent_context(parse_traceparent(TRACEPARENT, TRACESTATE)))  # type: ignore[arg-type]
    try:
        with tracing.publish_span("hp.changes", 1) as headers:
            assert headers == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    finally:
        otel_context.detach(token)


async def _serve(handler) -> TestClient:  # type: ignore[no-untyped-def]
    app = web.Application(middlewares=[tracing_middleware])
    app.router.add_post("/api/v1/changes", handler)
    app.router.add_get("/healthz", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_server_span_per_request_child_of_the_requests_traceparent(spans):
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(tracing.current_headers())
        return web.json_response({}, status=202)

    client = await _serve(handler)
    try:
        assert (await client.post("/api/v1/changes", headers={"traceparent": TRACEPARENT})).status == 202
        assert (await client.get("/healthz")).status == 202
    finally:
        await client.close()
    [span] = spans.get_finished_spans()  # none for /healthz
    assert (span.name, span.kind) == ("POST /api/v1/changes", SpanKind.SERVER)
    assert span.parent.span_id == int(PRODUCER_SPAN, 16) and span.context.trace_id == int(TRACE, 16)
    assert span.attributes["http.route"] == "/api/v1/changes" and span.attributes["http.response.status_code"] == 202
    assert seen[0]["traceparent"] == f"00-{TRACE}-{span.context.span_id:016x}-01"


async def test_without_an_sdk_a_request_traceparent_is_the_handlers_context():
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(tracing.current_headers())
        return web.json_response({})

    client = await _serve(handler)
    try:
        await client.post("/api/v1/changes", headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
        await client.post("/api/v1/changes")
    finally:
        await client.close()
    assert seen == [{"traceparent": TRACEPARENT, "tracestate": TRACESTATE}, {}]


def test_json_log_lines_carry_the_current_span_ids(spans):
    fmt = JsonFormatter()
    record = logging.LogRecord("hookpost.test", logging.INFO, __file__, 1, "hello", None, None)
    assert "trace_id" not in json.loads(fmt.format(record))
    t = tracing.tracer()
    assert t is not None
    with t.start_as_current_span("work") as span:
        line = json.loads(fmt.format(record))
    ctx = span.get_span_context()
    assert (line["trace_id"], line["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


# ---- configuration --------------------------------------------------------------------------------------------


def test_configure_is_off_without_otel_variables_and_reads_them_when_set(monkeypatch, caplog):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
                 "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure("hookpost-dispatcher", set_global=False) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure("hookpost-dispatcher", set_global=False) is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    try:
        provider = tracing.configure("hookpost-dispatcher", set_global=False)
        assert provider is not None and tracing.tracer() is not None
        assert provider.resource.attributes["service.name"] == "hookpost-dispatcher"
        provider.shutdown()
        monkeypatch.setenv("OTEL_SERVICE_NAME", "dispatch-eu")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
        provider = tracing.configure("hookpost-dispatcher", set_global=False)
        assert provider.resource.attributes["service.name"] == "dispatch-eu"
        assert "0.25" in provider.sampler.get_description()
        provider.shutdown()
    finally:
        tracing.install(None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with caplog.at_level(logging.ERROR, "hookpost.tracing"):
        assert tracing.configure("hookpost-dispatcher", set_global=False) is None
    assert "carrier-pigeon" in caplog.text


def test_trace_settings_are_checked_and_shown():
    from hookpost.common.errors import ConfigError
    from hookpost.common.settings import load_settings

    s = load_settings(trace_url="https://grafana.example/explore?traceId={trace_id}", trace_propagate="false")
    assert s.trace_propagate is False and s.masked()["trace_url"].endswith("{trace_id}")
    assert load_settings().masked()["trace_url"] is None  # an unset *_url setting is shown, not masked
    for bad in ("https://grafana.example/explore", "grafana/{trace_id}"):
        with pytest.raises(ConfigError, match=r"HOOKPOST_TRACE_URL: .*\{trace_id\}"):
            load_settings(trace_url=bad)


async def test_the_outcome_log_lines_of_a_delivery_carry_its_trace_id(caplog):
    d = await build_dispatcher(FakeSender(500, 200))
    with caplog.at_level(logging.INFO, "hookpost.delivery"):
        event = await fan_out_and_deliver(d, {"traceparent": TRACEPARENT})
    lines = {r.getMessage(): r for r in caplog.records if r.name == "hookpost.delivery"}
    assert {"attempt failed; retry scheduled", "delivered"} <= set(lines)
    assert all(r.trace_id == TRACE for r in lines.values())  # type: ignore[attr-defined]
    assert event.trace is not None and event.trace.trace_id == TRACE


def test_configure_without_the_sdk_or_the_grpc_exporter_says_so_and_stays_off(monkeypatch, caplog):
    import sys

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with caplog.at_level(logging.WARNING, "hookpost.tracing"):
        assert tracing.configure("hookpost-dispatcher", set_global=False) is None
        monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if hookpost[otel] were missing
        assert tracing.configure("hookpost-dispatcher", set_global=False) is None
    assert "opentelemetry-exporter-otlp-proto-grpc" in caplog.text and "pip install 'hookpost[otel]'" in caplog.text
    assert tracing.tracer() is None
