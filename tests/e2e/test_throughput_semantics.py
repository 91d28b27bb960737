"""Throughput semantics (not speed): batched store writes, a hanging endpoint that cannot starve the others, and
a backlog that drains at an ordinary receiver's pace."""

import asyncio
import threading

from aiohttp import web

from bench.kinds import Record, stdlib_server
from hookpost.common.models import ChangeEvent, Entity
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.helpers import running_worker, wait_until


def changes(prefix: str, event_type: str, n: int) -> list[ChangeEvent]:
    """``n`` change events ``{prefix}-0`` … of one type."""
    return [ChangeEvent(id=f"{prefix}-{i}", type=event_type, entity=Entity(kind="a", id=str(i))) for i in range(n)]


def metric(worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_store_operations_per_delivery_are_batched(settings_factory, new_receiver):
    s = settings_factory(prefetch=300, concurrency=300, endpoint_concurrency=100)
    a, b = await new_receiver([200]), await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(a.url, ["article.*"])
    await store.webhooks.create(b.url, ["article.*"])
    async with running_worker(s) as worker:
        before = sum(metric(worker, "hookpost_store_operations_total", command=c)
                     for c in ("insert", "update", "find", "delete", "aggregate"))
        async with Publisher.from_settings(s) as p:
            await p.publish_many(changes("c", "article.updated", 300))

        async def done():
            return await store.events.count({"status": "Finished"}) == 600

        await wait_until(done, 60, message="600 deliveries finished")
        ops = {c: metric(worker, "hookpost_store_operations_total", command=c)
               for c in ("insert", "update", "find", "delete", "aggregate")}
    per_delivery = (sum(ops.values()) - before) / 600
    print(f"store operations: {ops}, per delivery {per_delivery:.2f}")
    assert per_delivery <= 1.5, ops
    assert len(a.requests) == len(b.requests) == 300
    await store.close()


async def test_hanging_endpoint_does_not_starve_others(settings_factory, new_receiver):
    s = settings_factory(prefetch=40, concurrency=40, endpoint_concurrency=2, http_timeout="20s", defer_delay="200ms")
    release = asyncio.Event()

    async def hang(n, request):
        await release.wait()
        return web.Response(status=200)

    slow = await new_receiver(respond=hang)
    fast = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(slow.url, ["slow.*"])
    await store.webhooks.create(fast.url, ["fast.*"])
    async with running_worker(s) as worker:
        async with Publisher.from_settings(s) as p:
            # the slow endpoint's deliveries come first and would fill every prefetch slot if they waited in-process
            await p.publish_many(changes("s", "slow.x", 60))
            await p.publish_many(changes("f", "fast.x", 100))
        await wait_until(lambda: len(fast.requests) == 100, 20, message="all fast deliveries while slow hangs")
        assert len(slow.requests) <= 2  # never more than its limit at once
        assert metric(worker, "hookpost_deliveries_deferred_total") > 0
        release.set()

        async def all_done():
            return await store.events.count({"status": "Finished"}) == 160

        await wait_until(all_done, 60, message="every event finished once the endpoint recovers")
    # deferring never counted an attempt
    assert await store.events.count({"attempt_count": {"$ne": 1}}) == 0
    await store.close()


async def test_deferred_longer_than_the_reconcile_grace_is_not_sent_twice(settings_factory, new_receiver):
    # one slot, requests that time out after 1 s: the other deliveries are deferred for seconds, longer than the
    # reconciler's grace; the reconciler must not take them for lost and publish second copies
    s = settings_factory(prefetch=20, concurrency=20, endpoint_concurrency=1, http_timeout="1s", defer_delay="100ms",
                         max_attempts=2, retry_delays="1m", reconcile_interval="200ms", reconcile_grace="3s")
    release = asyncio.Event()

    async def hang(n, request):
        await release.wait()
        return web.Response(status=200)

    slow = await new_receiver(respond=hang)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(slow.url, ["slow.*"])
    async with running_worker(s) as worker:
        async with Publisher.from_settings(s) as p:
            await p.publish_many(changes("s", "slow.x", 6))

        async def all_tried_once():
            return await store.events.count({"status": "Retrying"}) == 6

        await wait_until(all_tried_once, 60, message="every event attempted (and timed out) once")
        assert metric(worker, "hookpost_deliveries_deferred_total") > 0
        assert metric(worker, "hookpost_reconciled_total") == 0
    release.set()
    ids = [r.headers["webhook-id"] for r in slow.requests]
    assert len(ids) == 6 and len(set(ids)) == 6, ids
    assert await store.events.count({"attempt_count": 1}) == 6
    await store.close()


async def test_a_backlog_to_a_plain_threaded_receiver_drains_at_its_pace_without_deferrals(settings_factory):
    # the standard library's threaded server (HTTP/1.0: a connection per request), a 20 ms handler: an ordinary
    # receiver. A backlog of 500 waits its turn in memory; nothing is parked in the defer ladder.
    s = settings_factory()
    record = Record()
    server = stdlib_server(0, record, backlog=128, delay=0.02)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    try:
        await store.ensure_indexes()
        await store.webhooks.create(f"http://127.0.0.1:{server.server_address[1]}/hook", ["article.*"])
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("b", "article.updated", 500))

            async def all_finished():
                return await store.events.count({"status": "Finished"}) == 500

            await wait_until(all_finished, 120, interval=0.2, message="500 deliveries finished")
            assert metric(worker, "hookpost_deliveries_deferred_total") == 0
        assert record.stats()["unique"] == 500
    finally:
        server.shutdown()
        server.server_close()
        await store.close()
