"""What tracing costs the dispatcher, in process, on the fakes of ``tests/fakes.py`` (no broker, store or HTTP):

    python -m bench.tracing_cost [--deliveries 10000] [--rounds 5]

1. **The added work, piece by piece** (``parts``): the CPU of exactly what tracing adds to one delivery with
   OpenTelemetry off — reading the trace context in the delivery message, writing it into the next one, the
   attempt's ``traceparent`` (a span id, the header, the context variable), the sender's header update, and the
   fan-out's share (the change's ``traceparent`` read and its context made, once per change; the context in the
   event's document) — each timed over ``--deliveries`` calls against the same call without tracing (or nothing),
   in alternated blocks, median against median.
2. **The whole path** (``path``): ``--deliveries`` changes fanned out to one webhook and delivered (a 200) through
   the real ``FanOut`` and ``DeliveryHandler`` over the fakes, in three modes alternated ``--rounds`` times:
   ``stripped`` (the tracing hooks replaced by no-ops, events and messages without a trace: the path before
   tracing), ``off`` (as shipped, no SDK) and ``sdk`` (the SDK with an always-on sampler and a batch processor whose
   exporter drops the spans: what the SDK's spans cost in process, not the ``bench.cpu_ab`` figure). CPU is
   ``time.process_time``; the fakes cost far more per delivery than the real store and broker do in this process,
   so the difference between modes is within the spread — part 1 is the figure.

Prints one JSON object. Run on a quiet machine for figures to quote.
"""

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from hookpost.common import tracing
from hookpost.common.models import DeliveryMessage, Webhook
from hookpost.common.traceparent import parse_traceparent
from hookpost.dispatcher import delivery as delivery_module
from hookpost.dispatcher import fanout as fanout_module
from hookpost.dispatcher import gate as gate_module
from hookpost.dispatcher.fanout import FanOut, new_events
from hookpost.dispatcher.policy import AttemptResult
from hookpost.dispatcher.tracing import attempt, fanned_out, outgoing_headers, traced_fan_out
from hookpost.store.docs import to_doc
from tests.fakes import FakeMessage, build_dispatcher, make_change

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = {"traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7"}
HOOK = Webhook(id="wh_bench", url="http://rx.example/hook", secret="s" * 32, event_types=["*"])
OK = AttemptResult(status_code=200, duration_ms=1.0)


class BenchSender:
    """Answers 200 at once; adds the attempt's trace headers as the real sender does."""

    async def send(self, hook: Webhook, event_id: str, payload: dict[str, Any]) -> AttemptResult:
        headers = {"content-type": "application/json"}
        if trace_headers := outgoing_headers():
            headers.update(trace_headers)
        return OK

    async def close(self) -> None:
        """Nothing to close."""


def added(fa: Callable[[], Any], fb: Callable[[], Any], n: int, rounds: int) -> float:
    """CPU microseconds per call that ``fa`` takes beyond ``fb``: ``n`` calls of each, in blocks of ``n / (4 *
    rounds)`` alternated (so a change in the machine's load hits both alike), median block against median block."""
    blocks = 4 * rounds
    size = max(n // blocks, 1)
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    for _ in range(blocks):
        for fn, out in ((fa, times[0]), (fb, times[1])):
            start = time.process_time()
            for _ in range(size):
                fn()
            out.append((time.process_time() - start) / size * 1e6)
    return statistics.median(times[0]) - statistics.median(times[1])


def nothing() -> None:
    """The baseline of a piece that has no counterpart without tracing."""


def parts(n: int, rounds: int) -> dict[str, float]:
    """Part 1: the added CPU per delivery with OpenTelemetry off, piece by piece (microseconds)."""
    assert tracing.tracer() is None
    ctx = parse_traceparent(TRACEPARENT, HEADERS["tracestate"])
    plain = DeliveryMessage(event_id="evt_01JBENCH000000000000000000", webhook_id="wh_bench", attempt=1,
                            payload={"id": "evt_1", "type": "article.updated", "data": {"entity": {"id": "A-1"}}})
    traced = plain.model_copy(update={"trace": ctx})
    plain_json, traced_json = plain.model_dump_json(), traced.model_dump_json()
    change = make_change()
    event_plain = new_events(change, ["wh_bench"])[0]
    event_traced = event_plain.model_copy(update={"trace": ctx})
    headers: dict[str, str] = {}
    msg = FakeMessage.of_change(change, headers=dict(HEADERS))

    def send_traced() -> None:
        with attempt(traced, HOOK) as span:
            if trace_headers := outgoing_headers():
                headers.update(trace_headers)
            span.done(OK)

    @traced_fan_out
    async def fan_out(self: None, msg: Any) -> None:
        fanned_out(1)

    def fan_out_traced() -> None:
        try:
            fan_out(None, msg).send(None)
        except StopIteration:
            pass

    out = {
        "read_message": added(lambda: DeliveryMessage.model_validate_json(traced_json),
                              lambda: DeliveryMessage.model_validate_json(plain_json), n, rounds),
        "write_message": added(traced.model_dump_json, plain.model_dump_json, n, rounds),
        "attempt_traceparent": added(send_traced, nothing, n, rounds),
        "fan_out_context": added(fan_out_traced, nothing, n, rounds),
        "event_document": added(lambda: to_doc(event_traced), lambda: to_doc(event_plain), n, rounds),
    }
    out = {k: round(max(v, 0.0), 2) for k, v in out.items()}
    out["total_us_per_delivery"] = round(sum(out.values()), 2)
    return out


@contextmanager
def stripped() -> Iterator[None]:
    """The delivery path with its tracing hooks replaced by no-ops (events and messages without a trace)."""
    @contextmanager
    def no_attempt(dm: DeliveryMessage, hook: Webhook) -> Iterator[Any]:
        class Span:
            def done(self, result: AttemptResult) -> None:
                pass
        yield Span()

    saved = (delivery_module.attempt, delivery_module.not_sent, gate_module.not_sent, fanout_module.fanned_out,
             FanOut.handle)
    delivery_module.attempt = no_attempt  # type: ignore[assignment]
    delivery_module.not_sent = gate_module.not_sent = lambda dm, outcome: None  # type: ignore[assignment]
    fanout_module.fanned_out = lambda matched: None  # type: ignore[assignment]
    FanOut.handle = FanOut.handle.__wrapped__  # type: ignore[attr-defined]
    try:
        yield
    finally:
        (delivery_module.attempt, delivery_module.not_sent, gate_module.not_sent, fanout_module.fanned_out,
         FanOut.handle) = saved


@contextmanager
def sdk() -> Iterator[None]:
    """The OpenTelemetry SDK recording every span (always on) into a batch processor that drops them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing.install(provider)
    try:
        yield
    finally:
        tracing.install(None)
        provider.shutdown()


async def path_once(n: int, chunk: int = 250) -> float:
    """CPU microseconds per delivery: ``n`` changes fanned out to one webhook and each delivered (a 200), on a
    fresh set of fakes every ``chunk`` changes (the fake store's duplicate check reads all its events)."""
    spent = 0.0
    for start in range(0, n, chunk):
        d = await build_dispatcher(BenchSender(), batch=1)  # type: ignore[arg-type]
        d.store.add_webhook(HOOK.url, ["*"])
        messages = [FakeMessage.of_change(make_change(), headers=dict(HEADERS)) for _ in range(min(chunk, n - start))]
        gc.collect()
        began = time.process_time()
        for msg in messages:
            await d.fanout.handle(msg)
        for p in d.published_to(d.topology.deliveries_exchange, "deliver"):
            await d.delivery.handle(FakeMessage.of_delivery(p.delivery()))
        spent += time.process_time() - began
        assert len(d.published_to(d.topology.deliveries_exchange, "deliver")) == len(messages)
    return spent / n * 1e6


async def path(n: int, rounds: int) -> dict[str, Any]:
    """Part 2: the whole in-process path in the three modes, alternated; medians and spreads."""
    modes: dict[str, Callable[[], Any]] = {"stripped": stripped, "off": nullcontext, "sdk": sdk}
    runs: dict[str, list[float]] = {m: [] for m in modes}
    await path_once(min(n, 500))  # warm-up
    for _ in range(rounds):
        for mode, enter in modes.items():
            with enter():
                runs[mode].append(await path_once(n))
    out: dict[str, Any] = {m: {"median_us": round(statistics.median(v), 1), "min_us": round(min(v), 1),
                               "max_us": round(max(v), 1)} for m, v in runs.items()}
    out["off_minus_stripped_us"] = round(out["off"]["median_us"] - out["stripped"]["median_us"], 1)
    out["sdk_minus_off_us"] = round(out["sdk"]["median_us"] - out["off"]["median_us"], 1)
    return out


def main() -> None:
    """Measure and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = {"deliveries": args.deliveries, "rounds": args.rounds, "parts": parts(args.deliveries, args.rounds),
              "path": asyncio.run(path(args.deliveries, args.rounds))}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
