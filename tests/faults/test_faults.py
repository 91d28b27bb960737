"""Fault tolerance. Each test injects one kind of fault into a running dispatcher and checks that no
event is lost: a cut broker link, a cut store link, purged queues, a graceful stop under load."""

import asyncio
import logging
import time

import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import EventStatus, now_ms
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.store import Store
from tests.faults import (
    Tally,
    attempts_per_event,
    event_rows,
    make_changes,
    one_in,
    publish,
    status_counts,
    wait_settled,
)
from tests.faults.procs import dispatcher_env, probe
from tests.faults.proxy import TcpProxy, via_proxies
from tests.helpers import running_worker, wait_until


async def open_store(settings: Settings) -> Store:
    """Connect to the test's database (directly, not through a proxy) and create the indexes."""
    store = Store.connect(settings.mongodb_url, settings.mongodb_db)
    await store.ensure_indexes()
    return store


async def wait_ready(url: str, status: int, timeout: float, check: str | None = None) -> dict:
    """Wait until ``url`` answers ``status`` with ``check`` reported false (503) or true (200)."""
    async def cond() -> dict | None:
        code, body = await probe(url)
        if code == status and (check is None or body.get(check) is (status == 200)):
            return body or {"status": code}
        return None
    return await wait_until(cond, timeout, interval=0.1, message=f"{url} -> {status} ({check})")


def assert_all_delivered(rows: list[dict], tallies: list[Tally]) -> None:
    """Every Finished event got at least one 2xx at its receiver, by webhook-id."""
    delivered = set()
    for t in tallies:
        delivered |= set(t.delivered())
    missing = [r["_id"] for r in rows if r["status"] == EventStatus.FINISHED.value and r["_id"] not in delivered]
    assert not missing, f"{len(missing)} Finished events never received a 2xx: {missing[:5]}"


def assert_attempts_recorded(rows: list[dict], attempts: dict[str, int], tallies: list[Tally]) -> None:
    """Every attempt counted on an event has its record, and its receiver saw at least that many requests."""
    seen: dict[str, int] = {}
    for t in tallies:
        for eid, n in t.requests().items():
            seen[eid] = seen.get(eid, 0) + n
    bad = [(r["_id"], r["attempt_count"], attempts.get(r["_id"], 0)) for r in rows
           if attempts.get(r["_id"], 0) != r["attempt_count"]]
    assert not bad, f"events whose attempt records do not match attempt_count (id, count, records): {bad[:5]}"
    unseen = [(r["_id"], r["attempt_count"], seen.get(r["_id"], 0)) for r in rows
              if seen.get(r["_id"], 0) < r["attempt_count"]]
    assert not unseen, f"attempts recorded that the receiver never saw (id, count, requests): {unseen[:5]}"


async def explain_stuck(store: Store, log: list[logging.LogRecord]) -> str:
    """Describe the events that are not Finished, with what the in-process worker logged about them."""
    rows = [r for r in await event_rows(store) if r["status"] != EventStatus.FINISHED.value]
    lines = []
    for r in rows[:10]:
        said = [f"{rec.getMessage()} (attempt {getattr(rec, 'attempt', '?')})" for rec in log
                if getattr(rec, "event_id", None) == r["_id"]]
        if r["status"] == EventStatus.NEW.value and r["attempt_count"] == 0 and not said:
            said = ["fanned out, but no delivery was ever made"]
        lines.append(f"{r['_id']} (change {r['change_id']}) {r['status']} attempt_count={r['attempt_count']}: "
                     f"{said}")
    return f"{len(rows)} events not Finished:\n" + "\n".join(lines)


async def test_broker_cut_mid_run_reconnects_and_finishes_everything(
        fault_settings, broker_proxy: TcpProxy, new_receiver, delivery_log: list[logging.LogRecord]) -> None:
    """(a) The broker link is cut (connections reset, new ones refused) for 3 s while events flow.

    The reconciler is off (``reconcile_interval=1h``): a broker blip must not need it.
    """
    s = fault_settings(reconcile_interval="1h")
    tallies = [Tally(fail_rate=0.2, seed=1), Tally(fail_rate=0.2, seed=2)]
    store = await open_store(s)
    for t in tallies:
        rec = await new_receiver(respond=t.respond)
        await store.webhooks.create(rec.url, ["article.*"])
    n = 60
    async with running_worker(via_proxies(s, broker=broker_proxy)) as worker:
        readyz = f"http://127.0.0.1:{worker.ops.port}/readyz"
        await publish(s, make_changes("a", n // 2))
        await wait_until(lambda: sum(len(t.log) for t in tallies) >= 20, 20, message="first deliveries")

        cut = await broker_proxy.cut("refuse")
        assert cut >= 1, "the worker had no connection through the proxy"
        body = await wait_ready(readyz, 503, 10, check="broker")
        assert body["store"] is True
        await publish(s, make_changes("a", n // 2, start=n // 2))  # producers still reach the broker
        await asyncio.sleep(3)  # the outage lasts 3 s; the worker retries with backoff meanwhile
        assert not worker.connected.is_set()
        await broker_proxy.restore()

        await wait_ready(readyz, 200, 30, check="broker")
        assert worker.reconnects >= 1
        try:
            counts = await wait_settled(store, 2 * n, 30, stall=10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await explain_stuck(store, delivery_log)}") from None
    rows = await event_rows(store)
    assert counts == {"Finished": 2 * n}
    assert {r["change_id"] for r in rows} == {f"a-{i}" for i in range(n)}
    assert_all_delivered(rows, tallies)
    assert broker_proxy.stats.refused >= 1, "the worker never tried to reconnect during the outage"
    await store.close()


async def test_store_cut_mid_run_holds_work_and_loses_nothing(
        fault_settings, store_proxy: TcpProxy, new_receiver, delivery_log: list[logging.LogRecord],
        caplog: pytest.LogCaptureFixture) -> None:
    """(b) The store link is cut twice for 2 s while changes keep arriving; replies in flight at each cut are
    lost (the requests ran on the server, the client never learns it).

    Held work must stay unacked (no requeue loop: no event is attempted twice during an outage), /readyz
    says 503 meanwhile and 200 after, and in the end every event is Finished with every attempt recorded. The
    reconciler is off (``reconcile_interval=1h``), so an acked-but-unrecorded message shows up as a stuck event.
    """
    s = fault_settings(reconcile_interval="1h")
    tallies = [Tally(fail_rate=0.3, seed=3), Tally(fail_rate=0.3, seed=4)]
    store = await open_store(s)
    for t in tallies:
        rec = await new_receiver(respond=t.respond)
        await store.webhooks.create(rec.url, ["article.*"])
    batch, produced, enough = 5, [0], asyncio.Event()

    async def produce() -> None:
        while not enough.is_set():  # a steady trickle, so fan-out and deliveries are busy at each cut
            await publish(s, make_changes("b", batch, start=produced[0]))
            produced[0] += batch
            await asyncio.sleep(0.1)

    def requests() -> int:
        return sum(len(t.log) for t in tallies)

    async with running_worker(via_proxies(s, store=store_proxy)) as worker:
        readyz = f"http://127.0.0.1:{worker.ops.port}/readyz"
        producer = asyncio.create_task(produce())
        for _ in range(2):
            before = requests()
            await wait_until(lambda b=before: requests() >= b + 40, 20, message="deliveries under way")
            await store_proxy.cut("refuse", lose_replies=1.0)
            cut_at = time.monotonic()
            body = await wait_ready(readyz, 503, 15, check="store")
            assert body["broker"] is True
            await asyncio.sleep(2)  # the outage goes on; held work must wait, not spin
            restored_at = time.monotonic()
            await store_proxy.restore()
            during: dict[str, int] = {}
            for t in tallies:
                during.update(t.requests(cut_at, restored_at))
            twice = {eid: c for eid, c in during.items() if c > 1}
            assert not twice, f"events attempted more than once while the store was down (requeue loop?): {twice}"
            await wait_ready(readyz, 200, 20, check="store")
        enough.set()
        await asyncio.wait_for(producer, 60)
        n = produced[0]
        print(f"\nstore cut: {n} changes; {store_proxy.stats.connections_cut} connections cut, "
              f"{store_proxy.stats.replies_dropped} replies lost")
        try:
            await wait_settled(store, 2 * n, 60, stall=10, message="every event Finished after the store came back")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await explain_stuck(store, delivery_log)}") from None
        rows = await event_rows(store)
    assert len(rows) == 2 * n
    assert {r["change_id"] for r in rows} == {f"b-{i}" for i in range(n)}
    assert_all_delivered(rows, tallies)
    assert_attempts_recorded(rows, await attempts_per_event(store), tallies)
    unexpected = [r.getMessage() for r in caplog.records if "unexpected error" in r.getMessage()]
    assert not unexpected, unexpected[:3]
    await store.close()


async def test_purged_queues_are_reconciled_within_grace(fault_settings, new_receiver) -> None:
    """(c) ``PREFIX.deliver``, every retry queue and the defer queue are purged mid-run, with Retrying events
    parked.

    The reconciler (every 1 s, grace 2 s) must re-publish each lost delivery: every affected event ends
    Finished within its due time + grace + one sweep + slack.
    """
    interval, grace, delay, slack = 1.0, 2.0, 2.0, 10.0
    s = fault_settings(reconcile_interval="1s", reconcile_grace="2s", max_attempts=4, retry_delays="2s,2s,2s",
                       prefetch=10, endpoint_concurrency=2)
    tallies = [Tally(delay=0.02, fail_first=one_in(3)), Tally(delay=0.02, fail_first=one_in(3))]
    store = await open_store(s)
    for t in tallies:
        rec = await new_receiver(respond=t.respond)
        await store.webhooks.create(rec.url, ["article.*"])
    n = 120
    topo = topology_from(s)
    async with running_worker(s) as worker:
        await publish(s, make_changes("c", n))
        conn = await AmqpConnection.connect(s.rabbitmq_urls)
        try:
            ch = await conn.channel()

            async def backlog_and_parked() -> bool:
                parked = [await ch.queue_depth(q) for q in topo.retry_queues]
                return await ch.queue_depth(topo.deliver_queue) > 0 and sum(parked) > 0
            await wait_until(backlog_and_parked, 20, interval=0.05, message="a deliver backlog and parked retries")
            purged_at = now_ms()
            purged = {q: await ch.purge(q) for q in [topo.deliver_queue, *topo.retry_queues, *topo.defer_queues]}
        finally:
            await conn.close()
        in_flight = [e for e in await event_rows(store) if e["status"] in ("New", "Retrying")]
        assert purged[topo.deliver_queue] > 0 and sum(purged.values()) > purged[topo.deliver_queue], purged
        latest_due = max([purged_at, *[d.next_attempt_ms or 0 for d in
                                       [await store.events.get(e["_id"]) for e in in_flight]]])
        budget = (latest_due - purged_at) / 1000 + grace + interval + slack
        began = time.monotonic()
        await wait_settled(store, 2 * n, budget, message="every purged event Finished by the reconciler")
        took = time.monotonic() - began
        reconciled = worker.metrics.registry.get_sample_value("hookpost_reconciled_total") or 0.0
    print(f"\npurge: {purged}; {len(in_flight)} events in flight at the purge, reconciled {reconciled:.0f}, "
          f"all Finished {took:.1f}s after the purge (budget {budget:.1f}s, retry delay {delay}s)")
    assert reconciled >= sum(purged.values()) * 0.9
    rows = await event_rows(store)
    assert_all_delivered(rows, tallies)
    assert await status_counts(store) == {"Finished": 2 * n}
    await store.close()


async def test_sigterm_under_load_exits_within_grace_and_a_new_dispatcher_finishes_all(
        fault_settings, dispatchers, new_receiver) -> None:
    """(d) SIGTERM while deliveries are in flight, some of them hanging longer than the grace: exit code 0 within
    ``HOOKPOST_SHUTDOWN_GRACE`` (+1 s); what was left unacked is redelivered to a new dispatcher and every event
    ends Finished."""
    grace = 3.0
    s = fault_settings(shutdown_grace="3s", http_timeout="10s")
    hang = {"on": False}  # switched on just before the SIGTERM: requests then outlast the grace

    def slow(event_id: str, n: int) -> float:
        return 8.0 if hang["on"] else 0.1

    tallies = [Tally(delay_for=slow), Tally(delay_for=slow)]
    store = await open_store(s)
    for t in tallies:
        rec = await new_receiver(respond=t.respond)
        await store.webhooks.create(rec.url, ["article.*"])
    n = 150
    env = dispatcher_env(s)
    first = dispatchers(env, "first")
    await first.wait_ready()
    await publish(s, make_changes("d", n))
    await wait_until(lambda: sum(len(t.log) for t in tallies) >= 40, 30, message="deliveries under way")
    hang["on"] = True
    await wait_until(lambda: sum(t.active for t in tallies) >= 5, 10, message="requests hanging at the receivers")

    code, took = await first.terminate(timeout=grace + 20)
    hang["on"] = False
    assert code == 0, f"exit code {code}; log:\n{first.log_tail()}"
    assert took <= grace + 1.0, f"took {took:.1f}s to stop with a {grace}s grace"
    left = await status_counts(store)
    assert sum(v for k, v in left.items() if k != "Finished") > 0, f"nothing left in flight at the stop: {left}"
    stopping = [f"{r['message']} {r.get('count', r.get('in_flight', ''))}" for r in first.log_records()
                if r.get("message", "").startswith("stopping:")]
    assert any("gave back" in m for m in stopping), f"no work outlasted the grace (test needs slower work): {stopping}"

    second = dispatchers(env, "second")
    await second.wait_ready()
    await wait_settled(store, 2 * n, 60, stall=20)
    rows = await event_rows(store)
    assert_all_delivered(rows, tallies)
    duplicates = sum(c - 1 for t in tallies for c in t.delivered().values() if c > 1)
    print(f"\nSIGTERM: exit {code} after {took:.2f}s (grace {grace}s); left {left}; {stopping}; "
          f"duplicate deliveries {duplicates}")
    await store.close()
