"""The soak. Two dispatcher subprocesses deliver a stream of change events to three flaky receivers
while faults are injected over and over: ``kill -9`` of a dispatcher, a cut broker link, a cut store link, and
one real broker restart. At the end nothing may be lost.

Size: ``HOOKPOST_SOAK_EVENTS`` change events (default 200, about a minute). Run it alone with::

    HOOKPOST_SOAK_EVENTS=2000 pytest tests/faults/test_soak.py -m soak -s

``HOOKPOST_SOAK_BROKER_RESTART=0`` skips the broker restart (it disturbs everyone sharing the broker).
A JSON summary is printed and written to ``<pytest tmp dir>/soak-summary.json``.
"""

import asyncio
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hookpost.common.matching import any_matches
from hookpost.common.models import ChangeEvent, EventStatus
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.faults import Tally, event_rows, make_changes, status_counts, wait_settled
from tests.faults.procs import DispatcherProcess, dispatcher_env
from tests.faults.proxy import TcpProxy, via_proxies

pytestmark = pytest.mark.soak

SOAK_EVENTS = int(os.environ.get("HOOKPOST_SOAK_EVENTS", "200"))
BROKER_RESTART = os.environ.get("HOOKPOST_SOAK_BROKER_RESTART", "1") != "0"
TYPES = ("article.updated", "article.deleted", "price.changed")
HOOKS = (["article.*"], ["article.updated"], ["price.*", "article.deleted"])
MIN_ROUNDS = 2          # each round: kill -9, broker cut, store cut
OUTAGE = 2.0            # seconds a cut link stays down
GAP = 1.0               # seconds of normal running between faults


async def rabbitmqctl(*args: str, timeout: float = 90.0) -> None:
    """Run ``rabbitmqctl ARGS`` without blocking the event loop; fail with its output if it fails."""
    proc = await asyncio.create_subprocess_exec("rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"rabbitmqctl {' '.join(args)} took more than {timeout:.0f}s") from None
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {out.decode(errors='replace')[-500:]}"


class Producer:
    """Publishes the soak's change events at a steady rate, riding out broker outages.

    A batch that fails is published again (same change ids: the unique (change, webhook) index makes the
    repeat harmless, which is exactly what a real upstream producer does).
    """

    def __init__(self, settings: Any, changes: list[ChangeEvent], seconds: float) -> None:
        self.settings = settings
        self.changes = changes
        self.batch = max(1, round(len(changes) / max(seconds, 1.0) / 2))  # two batches a second
        self.sent = 0
        self.republished = 0
        self.errors: Counter[str] = Counter()

    async def run(self) -> None:
        """Publish everything; each batch gets 120 s to be confirmed."""
        publisher: Publisher | None = None
        try:
            for start in range(0, len(self.changes), self.batch):
                chunk = self.changes[start:start + self.batch]
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if publisher is None:
                            publisher = Publisher.from_settings(self.settings, timeout=60,
                                                                name="hookpost-soak-producer")
                            await publisher.connect()
                        await publisher.publish_many(chunk)
                        break
                    except Exception as exc:  # broker restarting: reconnect and publish the batch again
                        self.errors[type(exc).__name__] += 1
                        self.republished += len(chunk)
                        publisher = await _discard(publisher)
                        assert time.monotonic() < deadline, f"could not publish a batch for 120s: {exc!r}"
                        await asyncio.sleep(1.0)
                self.sent += len(chunk)
                await asyncio.sleep(0.5)
        finally:
            await _discard(publisher)


async def _discard(publisher: Publisher | None) -> None:
    if publisher is not None:
        try:
            await publisher.close()
        except Exception as exc:
            print(f"soak producer: closing a broken publisher failed: {exc!r}")


async def test_soak(fault_settings, broker_proxy: TcpProxy, store_proxy: TcpProxy,
                    dispatchers: Callable[..., DispatcherProcess], new_receiver, tmp_path: Path) -> None:
    """Publish N changes under repeated faults; in the end every event is accounted for and nothing is lost."""
    if BROKER_RESTART and shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found; set HOOKPOST_SOAK_BROKER_RESTART=0 to soak without a broker restart")
    began = time.monotonic()
    n = SOAK_EVENTS
    # reconcile grace 10s > HTTP_TIMEOUT × PREFETCH / ENDPOINT_CONCURRENCY = 2s × 50 / 10 (docs/operations.md), so
    # the reconciler re-publishes lost deliveries, not ones merely queued in a dispatcher
    s = fault_settings(max_attempts=10, retry_delays="100ms,200ms,400ms,800ms,1s,1s,1s,1s,1s",
                       reconcile_interval="2s", reconcile_grace="10s", prefetch=50, webhook_cache_ttl="1s",
                       shutdown_grace="5s", http_timeout="2s")
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    tallies = [Tally(fail_rate=0.2, seed=10 + i) for i in range(len(HOOKS))]
    hook_types = {}
    for tally, types in zip(tallies, HOOKS, strict=True):
        rec = await new_receiver(respond=tally.respond)
        hook = await store.webhooks.create(rec.url, types)
        hook_types[hook.id] = types

    env = dispatcher_env(via_proxies(s, broker=broker_proxy, store=store_proxy))
    procs = [dispatchers(env, "d1"), dispatchers(env, "d2")]
    for p in procs:
        await p.wait_ready(30)

    changes = make_changes("soak", n, TYPES)
    expected = {c.id: sum(1 for types in hook_types.values() if any_matches(types, c.type)) for c in changes}
    producer = Producer(s, changes, seconds=40)
    producing = asyncio.create_task(producer.run())

    faults: Counter[str] = Counter()
    timeline: list[dict[str, Any]] = []

    async def all_ready(timeout: float) -> None:
        for p in procs:
            await p.wait_ready(timeout)

    async def inject(kind: str, action: Callable[[], Any], recover: float) -> None:
        at = time.monotonic()
        await action()
        await all_ready(recover)
        faults[kind] += 1
        timeline.append({"fault": kind, "at_s": round(at - began, 1),
                         "recovered_after_s": round(time.monotonic() - at, 1)})
        await asyncio.sleep(GAP)  # let the system run normally before the next fault

    async def kill9(p: DispatcherProcess) -> None:
        p.kill9()
        await asyncio.sleep(0.5)  # the process stays dead for a moment; its unacked work goes back
        p.start()

    async def cut(proxy: TcpProxy, lose_replies: float = 0.0) -> None:
        await proxy.cut("refuse", lose_replies=lose_replies)
        await asyncio.sleep(OUTAGE)  # the link stays down
        await proxy.restore()

    async def restart_broker() -> None:
        await rabbitmqctl("stop_app")
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")

    rounds = 0
    while rounds < MIN_ROUNDS or not producing.done():
        victim = procs[rounds % 2]
        await inject("kill9", lambda v=victim: kill9(v), 30)
        await inject("broker_cut", lambda: cut(broker_proxy), 40)
        await inject("store_cut", lambda: cut(store_proxy, lose_replies=0.5), 40)
        rounds += 1
        if rounds == 1 and BROKER_RESTART:
            await inject("broker_restart", restart_broker, 90)
        if producing.done():
            producing.result()
    await producing
    fault_phase = time.monotonic() - began

    total = sum(expected.values())
    settle_timeout = 60 + n / 20
    try:
        await wait_settled(store, total, settle_timeout, failed_ok=True, stall=45,
                           message="every soak event Finished or Failed")
        settled = True
    except AssertionError as exc:
        settled = False
        print(f"soak did not settle: {exc}")
    duration = time.monotonic() - began

    # ---- accounting ----
    rows = await event_rows(store)
    per_change = Counter(r["change_id"] for r in rows)
    pairs = Counter((r["change_id"], r["webhook_id"]) for r in rows)
    missing_events = sum(max(0, want - per_change.get(cid, 0)) for cid, want in expected.items())
    extra_events = sum(max(0, per_change.get(cid, 0) - want) for cid, want in expected.items())
    extra_events += sum(c for cid, c in per_change.items() if cid not in expected)
    duplicate_events = sum(c - 1 for c in pairs.values() if c > 1)
    delivered: Counter[str] = Counter()
    for t in tallies:
        delivered.update(t.delivered())
    unfinished = [r for r in rows if r["status"] in (EventStatus.NEW.value, EventStatus.RETRYING.value)]
    failed = [r for r in rows if r["status"] == EventStatus.FAILED.value]
    bad_failed = [r["_id"] for r in failed if r["attempt_count"] - r.get("budget_start", 0) != s.max_attempts]
    finished = [r for r in rows if r["status"] == EventStatus.FINISHED.value]
    never_received = [r["_id"] for r in finished if delivered.get(r["_id"], 0) == 0]
    lost = missing_events + len(unfinished) + len(never_received)
    logs = [rec for p in procs for rec in p.log_records()]
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "change_events": n,
        "webhooks": len(HOOKS),
        "webhook_events_expected": total,
        "webhook_events_stored": len(rows),
        "status": await status_counts(store),
        "faults": dict(faults),
        "fault_timeline": timeline,
        "lost": lost,
        "lost_detail": {"missing_events": missing_events, "not_finished": len(unfinished),
                        "finished_never_received": len(never_received)},
        "duplicate_events": duplicate_events,
        "extra_events": extra_events,
        "duplicate_deliveries": sum(c - 1 for c in delivered.values() if c > 1),
        "http_requests": sum(len(t.log) for t in tallies),
        "failed_with_wrong_budget": len(bad_failed),
        "reconciled": sum(int(r.get("count", 0)) for r in logs
                          if r.get("message") == "re-published lost deliveries"),
        "broker_reconnects": sum(1 for r in logs if r.get("message") == "lost the broker connection; reconnecting"),
        "store_outages_seen": sum(1 for r in logs if r.get("message", "").startswith("store unreachable")),
        "dispatcher_starts": sum(p.starts for p in procs),
        "producer_republished": producer.republished,
        "producer_errors": dict(producer.errors),
        "fault_phase_s": round(fault_phase, 1),
        "duration_s": round(duration, 1),
    }
    path = tmp_path / "soak-summary.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nsoak summary: {json.dumps(summary)}\nsoak summary written to {path}")

    for p in procs:
        assert p.running, f"{p.name} died on its own; log:\n{p.log_tail()}"
    assert settled and lost == 0, f"lost {lost}: {summary['lost_detail']}; not finished e.g. {unfinished[:5]}"
    assert missing_events == 0 and extra_events == 0 and duplicate_events == 0
    assert not bad_failed, f"Failed events without a spent budget: {bad_failed[:5]}"
    assert faults["kill9"] >= MIN_ROUNDS and faults["broker_cut"] >= MIN_ROUNDS and faults["store_cut"] >= MIN_ROUNDS
    await store.close()
