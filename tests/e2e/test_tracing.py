"""Tracing end to end, through the real broker, the real store and real HTTP: a change published in a known trace
reaches a receiver that fails its first request; both attempts carry the change's trace id with their own span
ids, and an OTLP/HTTP collector started here (decoding with ``opentelemetry-proto``) gets the tree
producer → publish → fan-out → deliver ×2, the receiver's parent being its attempt's deliver span."""

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hookpost.common import tracing
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.traceparent import parse_traceparent
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_cli import run_cli
from tests.helpers import running_worker, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PRODUCER_SPAN}-01"
TRACESTATE = "vendor=opaque-value"


@dataclass
class Collector:
    """A small OTLP/HTTP trace receiver on 127.0.0.1: every span it got, decoded."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    self.spans.append({"name": s.name, "kind": s.kind, "trace_id": s.trace_id.hex(),
                                       "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                                       "attributes": attrs, "service": service})
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.traces)
    c.runner = web.AppRunner(app, access_log=None)
    await c.runner.setup()
    site = web.TCPSite(c.runner, "127.0.0.1", 0)
    await site.start()
    c.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield c
    await c.runner.cleanup()


async def publish_in_trace(settings, change_id: str) -> None:  # type: ignore[no-untyped-def]
    """Publish a change as an upstream service would inside its span (the known trace context)."""
    token = otel_context.attach(tracing.parent_context(parse_traceparent(TRACEPARENT, TRACESTATE)))  # type: ignore[arg-type]
    try:
        async with Publisher.from_settings(settings) as publisher:
            await publisher.publish(ChangeEvent(id=change_id, type="article.updated",
                                                entity=Entity(kind="article", id="A-1")))
    finally:
        otel_context.detach(token)


async def finished_event(store, change_id: str):  # type: ignore[no-untyped-def]
    async def check():  # type: ignore[no-untyped-def]
        found = await store.events.find_for_change(change_id)
        return found[0] if len(found) == 1 and found[0].status is EventStatus.FINISHED else None
    return await wait_until(check, 30, message="the event Finished")


def trace_parts(request) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    _version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
    return trace_id, span_id, flags


async def test_the_receiver_and_the_collector_see_one_trace_across_a_retry(settings, store, new_receiver,
                                                                           collector, monkeypatch):
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    provider = tracing.configure("hookpost-dispatcher", set_global=False)
    assert provider is not None
    try:
        rec = await new_receiver([500, 200])
        hook = await store.webhooks.create(rec.url, ["article.*"])
        async with running_worker(settings):
            await publish_in_trace(settings, "chg-traced")
            event = await finished_event(store, "chg-traced")
        await asyncio.to_thread(provider.force_flush)  # its export reaches the collector on this loop
        await wait_until(lambda: len(collector.named("deliver")) >= 2 and collector.named("fan-out"), 15,
                         message="the fan-out and both deliver spans at the collector")
    finally:
        tracing.install(None)
        await asyncio.to_thread(provider.shutdown)

    # the receiver: the change's trace id on both attempts, each with its own span id, and the tracestate
    assert len(rec.requests) == 2
    (t1, s1, f1), (t2, s2, f2) = (trace_parts(r) for r in rec.requests)
    assert t1 == t2 == TRACE and s1 != s2 and f1 == f2 == "01"
    assert all(r.headers["tracestate"] == TRACESTATE for r in rec.requests)

    # the collector: producer → publish → fan-out → deliver ×2; each deliver is the receiver's parent
    spans = collector.spans
    assert {s["trace_id"] for s in spans} == {TRACE}
    [publish] = collector.named("publish")
    [fan_out] = collector.named("fan-out")
    delivers = sorted(collector.named("deliver"), key=lambda s: s["attributes"]["hookpost.attempt"])
    assert publish["parent"] == PRODUCER_SPAN
    assert fan_out["parent"] == publish["span_id"] and fan_out["attributes"]["hookpost.webhooks.matched"] == 1
    assert [d["parent"] for d in delivers] == [fan_out["span_id"]] * 2
    assert [d["span_id"] for d in delivers] == [s1, s2]
    assert [d["attributes"]["http.response.status_code"] for d in delivers] == [500, 200]
    assert all(d["kind"] == 3 and d["attributes"]["hookpost.outcome"] == "sent"  # 3: SPAN_KIND_CLIENT
               and d["attributes"]["hookpost.webhook.id"] == hook.id and d["attributes"]["hookpost.event.id"]
               == event.id and d["attributes"]["url.full"] == rec.url for d in delivers)
    assert fan_out["service"] == "hookpost-dispatcher"

    # the event keeps the trace, and the operator sees it
    assert event.trace is not None
    assert (event.trace.trace_id, event.trace.parent_span_id) == (TRACE, fan_out["span_id"])
    shown = await run_cli(settings, "events", "show", event.id)
    assert f"trace:            {TRACE} (parent span {fan_out['span_id']})" in shown.output


async def test_without_an_sdk_hookpost_makes_the_ids_and_propagation_can_be_turned_off(settings_factory,
                                                                                         new_receiver):
    assert tracing.tracer() is None
    for propagate in (True, False):
        s = settings_factory(trace_propagate=propagate)
        st = Store.connect(s.mongodb_url, s.mongodb_db)
        await st.ensure_indexes()
        try:
            rec = await new_receiver([500, 200])
            await st.webhooks.create(rec.url, ["article.*"])
            async with running_worker(s):
                await publish_in_trace(s, "chg-plain")
                event = await finished_event(st, "chg-plain")
        finally:
            await st.close()
        assert event.trace is not None and (event.trace.trace_id, event.trace.parent_span_id) == (TRACE,
                                                                                                  PRODUCER_SPAN)
        assert len(rec.requests) == 2
        if propagate:
            (t1, s1, _), (t2, s2, _) = (trace_parts(r) for r in rec.requests)
            assert t1 == t2 == TRACE and len({s1, s2, PRODUCER_SPAN}) == 3
        else:
            assert not any({"traceparent", "tracestate"} & {h.lower() for h in r.headers} for r in rec.requests)
