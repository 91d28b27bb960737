"""A slow store. Every reply of the store arrives 2 s late (the fault proxy's latency mode) while 100
change events a second keep coming. The dispatcher must keep its memory and its in-flight work bounded: the
back-pressure goes through the prefetch windows, and the backlog waits in the broker, not in the dispatcher's
memory. Once the store is fast again, everything is delivered and nothing is lost.

Checked while the store is slow, every few seconds, on a private one-node RabbitMQ (ready messages from a passive
declare, unacked ones per channel from ``rabbitmqctl list_channels``; ``list_queues`` lags by up to 5 s on quorum
queues):

- the unacked messages of each of the dispatcher's two consumer channels (``PREFIX.changes``, ``PREFIX.deliver``)
  stay within its prefetch window;
- every published change is either in the broker (ready or unacked) or already fanned out in the store: nothing
  was taken from the broker and held only in memory;
- the dispatcher's RSS grows by less than 50 MB over its size after a warm-up round.

Then the store is made fast again: every event ends Finished, each received by the webhook, none twice in the
store. The run lasts ``HOOKPOST_BACKPRESSURE_SECONDS`` (30 in CI; the issue's figure is 60)::

    HOOKPOST_BACKPRESSURE_SECONDS=60 pytest tests/faults/test_backpressure.py -s

A JSON summary is printed and written to ``<pytest tmp dir>/backpressure-summary.json``.
"""

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.cluster.rabbit_cluster import RabbitNode
from tests.faults import Tally, event_rows, status_counts, wait_settled
from tests.faults.procs import DispatcherProcess, dispatcher_env
from tests.faults.proxy import TcpProxy, via_proxies
from tests.helpers import wait_until

SECONDS = float(os.environ.get("HOOKPOST_BACKPRESSURE_SECONDS", "30"))
RATE = 100              # change events per second
LATENCY = 2.0           # seconds added to every store reply
PREFETCH = 100
RSS_LIMIT_MB = 50.0
WARM_UP = 200
SAMPLE_EVERY = 3.0      # rabbitmqctl starts an Erlang VM each time: not too often on two cores
BLOB = "x" * 1000       # about 1 KiB of data per change


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def changes(start: int, count: int) -> list[ChangeEvent]:
    """Change events ``bp-<i>`` with about 1 KiB of data each."""
    return [ChangeEvent(id=f"bp-{i}", type="article.updated", entity=Entity(kind="article", id=f"A-{i}"),
                        data={"i": i, "blob": BLOB}) for i in range(start, start + count)]


class SteadyProducer:
    """Publishes ``rate`` changes a second (confirmed, in ticks of 0.1 s) for ``seconds``; ``sent`` counts them."""

    def __init__(self, publisher: Publisher, start: int, rate: float, seconds: float) -> None:
        self.publisher = publisher
        self.start = start
        self.rate = rate
        self.seconds = seconds
        self.sent = 0

    async def run(self) -> None:
        """Publish until the time is up."""
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < self.seconds:
            due = min(int(elapsed * self.rate) + 1, round(self.rate * self.seconds)) - self.sent
            if due > 0:
                await self.publisher.publish_many(changes(self.start + self.sent, due))
                self.sent += due
            await asyncio.sleep(max(0.0, began + self.sent / self.rate - time.monotonic()))


async def test_a_slow_store_keeps_memory_and_in_flight_work_bounded(
        fault_settings, private_broker: RabbitNode, store_proxy: TcpProxy, dispatchers, new_receiver,
        tmp_path: Path) -> None:
    load_start = os.getloadavg()
    s = fault_settings(rabbitmq_url=private_broker.url, prefetch=PREFETCH, webhook_cache_ttl="2s")
    topo = topology_from(s)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    tally = Tally()
    receiver = await new_receiver(respond=tally.respond)
    await store.webhooks.create(receiver.url, ["article.*"])
    proc: DispatcherProcess = dispatchers(dispatcher_env(via_proxies(s, store=store_proxy)), "slow-store")
    await proc.wait_ready(30)
    assert proc.pid is not None
    pid = proc.pid
    try:
        async with Publisher.from_settings(s, timeout=60) as publisher:
            # warm-up at full speed: connection pools, caches and one-time allocations before the baseline
            await publisher.publish_many(changes(0, WARM_UP))
            await wait_settled(store, WARM_UP, 60, stall=20, message="the warm-up events Finished")
            rss_before = rss_mb(pid)

            store_proxy.set_latency(LATENCY)
            slow_from = time.monotonic()
            producer = SteadyProducer(publisher, WARM_UP, RATE, SECONDS)
            producing = asyncio.create_task(producer.run())
            samples: list[dict[str, Any]] = []
            conn = await AmqpConnection.connect([private_broker.url], name="hookpost-test-sampler")
            ch = await conn.channel()

            async def sample() -> dict[str, Any]:
                # in this order, each published change is counted at least once on the right-hand side of the
                # check below: ready, then unacked, then (acked only after its events are stored) fanned out
                sent = WARM_UP + producer.sent
                ready_c = await ch.queue_depth(topo.changes_queue)
                ready_d = await ch.queue_depth(topo.deliver_queue)
                consumers = [c for c in await asyncio.to_thread(private_broker.channels) if c["prefetch"]]
                stored = await store.events.count({})  # one webhook: one event per change fanned out
                row = {"t_s": round(time.monotonic() - slow_from, 1), "rss_mb": round(rss_mb(pid), 1),
                       "published": sent, "fanned_out": stored, "changes_ready": ready_c, "deliver_ready": ready_d,
                       "unacked": sum(c["unacked"] for c in consumers),
                       "unacked_per_channel": {c["number"]: c["unacked"] for c in consumers},
                       "prefetch_per_channel": {c["number"]: c["prefetch"] for c in consumers}}
                samples.append(row)
                return row

            try:
                while not producing.done():
                    await asyncio.wait({producing}, timeout=SAMPLE_EVERY)
                    await sample()
                producing.result()
            finally:
                await conn.close()
            slow_rss = [rss_mb(pid)] + [r["rss_mb"] for r in samples]
            last = samples[-1]

            store_proxy.set_latency(0.0)
            fast_from = time.monotonic()
            total = WARM_UP + producer.sent
            peak = [max(slow_rss)]

            async def settled() -> dict[str, int] | None:
                peak[0] = max(peak[0], rss_mb(pid))
                counts = await status_counts(store)
                return counts if counts.get(EventStatus.FINISHED.value, 0) == total else None

            await wait_until(settled, 120, interval=0.5, message=f"all {total} events Finished after the store "
                             "was fast again")
            drained_s = time.monotonic() - fast_from

        rows = await event_rows(store)
        per_change: dict[str, int] = {}
        for r in rows:
            per_change[r["change_id"]] = per_change.get(r["change_id"], 0) + 1
        received = tally.delivered()
        summary = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores",
            "load_1_5_15_start": [round(v, 2) for v in load_start],
            "load_1_5_15_end": [round(v, 2) for v in os.getloadavg()],
            "slow_seconds": SECONDS, "rate_per_s": RATE, "store_latency_s": LATENCY, "prefetch": PREFETCH,
            "published_while_slow": producer.sent,
            "rss_before_mb": round(rss_before, 1), "rss_peak_slow_mb": round(max(slow_rss), 1),
            "rss_growth_slow_mb": round(max(slow_rss) - rss_before, 1),
            "rss_peak_overall_mb": round(peak[0], 1), "rss_growth_overall_mb": round(peak[0] - rss_before, 1),
            "max_unacked_per_channel": max(max(r["unacked_per_channel"].values(), default=0) for r in samples),
            "max_unacked": max(r["unacked"] for r in samples),
            "at_end_of_slow_phase": last,
            "fanned_out_per_s_while_slow": round((last["fanned_out"] - WARM_UP) / max(last["t_s"], 1.0), 1),
            "drained_after_fast_s": round(drained_s, 1),
            "events": len(rows), "received": len(received),
            "duplicate_deliveries": sum(c - 1 for c in received.values() if c > 1),
            "samples": samples,
        }
        path = tmp_path / "backpressure-summary.json"
        path.write_text(json.dumps(summary, indent=2))
        print(f"\nback-pressure summary: {json.dumps({k: v for k, v in summary.items() if k != 'samples'})}")

        assert proc.running, f"the dispatcher died; log:\n{proc.log_tail()}"
        for r in samples:
            assert len(r["prefetch_per_channel"]) == 2 and set(r["prefetch_per_channel"].values()) == {PREFETCH}, r
            assert all(n <= PREFETCH for n in r["unacked_per_channel"].values()), r
            held = r["published"] - r["fanned_out"]
            assert held <= r["changes_ready"] + r["unacked"], (
                f"{held} changes published but not fanned out, only {r['changes_ready'] + r['unacked']} in the "
                f"broker: the rest were acked and held in the dispatcher's memory ({r})")
        assert last["changes_ready"] + last["deliver_ready"] > 0, (
            f"no backlog in the broker at the end: the store was not the bottleneck, nothing was tested ({last})")
        assert summary["rss_growth_overall_mb"] < RSS_LIMIT_MB, summary
        assert len(rows) == total and all(c == 1 for c in per_change.values()), "missing or duplicate events"
        assert {r["_id"] for r in rows} <= set(received), "Finished events the receiver never got"
        assert set(per_change) == {f"bp-{i}" for i in range(total)}
    finally:
        store_proxy.set_latency(0.0)
        await store.close()
