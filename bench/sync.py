"""What keeping receivers in sync costs: an ordered webhook's backlog rate, and the change log's broker work.

``python -m bench.sync [--pairs 3] [--changes 10000] [--entities 1000]`` runs, alternated in one run:

- **ordering**: a backlog of CHANGES changes over ENTITIES entities (each with its ``sequence``), published before
  the dispatcher starts, to one webhook on a fast receiver, with ``ordering: none`` and with ``ordering: entity``;
  deliveries/s from the dispatcher's start to the last receipt. The target: ordered ≥ 70% of unordered.
- **change log**: the throughput scenario (``bench.scenarios``) with ``HOOKPOST_CHANGE_LOG_RETENTION=0`` and with the
  default ``7d``; the broker's CPU per change, and the dispatcher's and the store's.

The figures go to ``docs/benchmarks.md`` (section "sync") and ``bench/results/sync-<stamp>.json``.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import Receivers, broker_pid
from bench.report import save_run
from bench.scenarios import Bench
from hookpost.common.models import ChangeEvent, Entity, Ordering
from hookpost.store.localserver import LocalMongo


async def ordered_backlog(bench: Bench, ordering: Ordering, n: int, entities: int) -> dict[str, Any]:
    """Drain a backlog of ``n`` changes over ``entities`` entities to one webhook with ``ordering``."""
    async with bench.trial(ok=0) as trial:
        port = bench.receivers.ok_ports[0]
        hook = await trial.store.webhooks.create(bench.receivers.url(port), ["article.*"], ordering=ordering)
        trial.webhook_ids.append(hook.id)
        backlog = [ChangeEvent(id=f"{trial.tag}-{i}", type="article.updated",
                               entity=Entity(kind="article", id=f"A-{i % entities}"), sequence=i // entities)
                   for i in range(n)]
        async with bench.publisher(trial, declare=True) as pub:
            await pub.publish_many(backlog, window=500)
        disp = bench.dispatcher(trial, name=f"dispatcher-{ordering.value}")
        t0 = time.time()
        disp.start()
        try:
            await disp.wait_ready()
            meter = bench.meter(disp)
            c0 = meter.snapshot()
            stats = await bench.wait_received([port], n, timeout=900)
            c1 = meter.snapshot()
        finally:
            disp.stop()
    seconds = stats[str(port)]["last"] - t0
    usage = c1 - c0
    return {"ordering": ordering.value, "changes": n, "entities": entities, "seconds": seconds,
            "deliveries_per_s": n / seconds, "requests": stats[str(port)]["requests"],
            "cpu_ms_per_delivery": {k: v * 1000 / n for k, v in usage.seconds.items()}}


async def change_log(bench: Bench, retention: str, n: int) -> dict[str, Any]:
    """The throughput scenario with the change log's retention ``retention`` (``0``: no change log)."""
    r = await bench.run_throughput(n, k=1, change_log_retention=retention)
    return {"retention": retention, "deliveries_per_s": r["deliveries_per_s"],
            "cpu_ms_per_delivery": r["cpu"]["per_1000"]}


def spread(values: list[float]) -> str:
    """``median (min–max)`` with one decimal."""
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def render(res: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md."""
    rates = {o: [r["deliveries_per_s"] for r in res["ordering"] if r["ordering"] == o] for o in ("none", "entity")}
    ratios = [e / u for u, e in zip(rates["none"], rates["entity"], strict=True)]
    cpu = {o: [r["cpu_ms_per_delivery"].get("dispatcher", 0) for r in res["ordering"] if r["ordering"] == o]
           for o in ("none", "entity")}
    store = {o: [r["cpu_ms_per_delivery"].get("store", 0) for r in res["ordering"] if r["ordering"] == o]
             for o in ("none", "entity")}
    log = {t: [r["cpu_ms_per_delivery"] for r in res["change_log"] if r["retention"] == t] for t in ("0", "7d")}
    lines = [
        "## Keeping receivers in sync: ordered backlog and change log (`python -m bench.sync`)",
        "",
        f"Run {res['stamp']}, {res['pairs']} alternated pairs; a backlog of {res['changes']:,} changes over "
        f"{res['entities']:,} entities (each with its `sequence`), published before one dispatcher starts, to one "
        "webhook on a fast receiver. Median (min–max).",
        "",
        "| ordering | deliveries/s | dispatcher CPU ms per delivery | store CPU ms per delivery |",
        "|---|---|---|---|",
        f"| none | {spread(rates['none'])} | {spread(cpu['none'])} | {spread(store['none'])} |",
        f"| entity | {spread(rates['entity'])} | {spread(cpu['entity'])} | {spread(store['entity'])} |",
        "",
        f"Ordered / unordered, pair by pair: {', '.join(f'{r:.2f}' for r in ratios)} (target ≥ 0.70: "
        f"{'met' if statistics.median(ratios) >= 0.7 else 'not met'} at the median).",
        "",
        f"The change log (the stream `PREFIX.changelog`), throughput scenario of {res['log_changes']:,} changes, "
        "CPU ms per delivery:",
        "",
        "| change log | broker | dispatcher | store |",
        "|---|---|---|---|",
    ]
    for t, label in (("0", "off (`HOOKPOST_CHANGE_LOG_RETENTION=0`)"), ("7d", "on (`7d`, the default)")):
        lines.append(f"| {label} | {spread([c['broker'] for c in log[t]])} | "
                     f"{spread([c['dispatcher'] for c in log[t]])} | {spread([c['store'] for c in log[t]])} |")
    return "\n".join(lines)


async def main(pairs: int, n: int, entities: int, log_changes: int) -> None:
    """Run the pairs and write the section."""
    work = Path(tempfile.mkdtemp(prefix="hookpost-sync-"))
    mongo = LocalMongo(work / "mongo")
    mongo.start()
    receivers = Receivers(1, 0, work / "receivers.log").start()
    res: dict[str, Any] = {"stamp": time.strftime("%Y-%m-%dT%H:%M"), "pairs": pairs, "changes": n,
                           "entities": entities, "log_changes": log_changes, "ordering": [], "change_log": []}
    try:
        await receivers.wait_ready()
        bench = Bench(work, mongo, receivers, "amqp://guest:guest@127.0.0.1:5672/%2F", broker_pid())
        for i in range(pairs):
            order = (Ordering.NONE, Ordering.ENTITY) if i % 2 == 0 else (Ordering.ENTITY, Ordering.NONE)
            for ordering in order:
                r = await ordered_backlog(bench, ordering, n, entities)
                print(f"ordering={r['ordering']}: {r['deliveries_per_s']:.0f}/s", flush=True)
                res["ordering"].append(r)
            for retention in (("0", "7d") if i % 2 == 0 else ("7d", "0")):
                r = await change_log(bench, retention, log_changes)
                print(f"change log {retention}: broker {r['cpu_ms_per_delivery']['broker']:.3f} ms/delivery",
                      flush=True)
                res["change_log"].append(r)
    finally:
        receivers.stop()
        mongo.stop()
    out = save_run("sync", res["stamp"], res, "sync", render(res))
    print(render(res))
    print(f"saved {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--log-changes", type=int, default=3_000)
    args = parser.parse_args()
    asyncio.run(main(args.pairs, args.changes, args.entities, args.log_changes))
