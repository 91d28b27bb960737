"""The store operations one delivery costs, counted exactly, for a webhook without ordering or coalescing.

Opt-in features must cost nothing to those who do not opt in: a change for an unordered webhook, delivered at
the first attempt, is one ``insert`` (the event) and one ``update`` (its outcome), with no read and no other
write — the same as before ordered webhooks existed. (Reads of the webhooks for the cache and the reconciler's
queries run on timers, not per delivery; they are left out of the count.)
"""

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from tests.helpers import running_worker, wait_until

PER_DELIVERY = {"insert": 1, "update": 1, "delete": 0, "findAndModify": 0}
ON_TIMERS = {"find", "getMore", "aggregate", "count", "ping", "hello", "isMaster", "endSessions", "listIndexes",
             "createIndexes"}


def ops(worker) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s.labels["command"]: s.value for m in worker.metrics.store_ops.collect() for s in m.samples
            if s.name.endswith("_total")}


async def test_an_unordered_delivery_costs_one_insert_and_one_update(stores, new_receiver):
    settings, st = await stores()
    rec = await new_receiver([200])
    await st.webhooks.create(rec.url, ["article.*"])
    n = 20
    async with running_worker(settings) as worker, Publisher.from_settings(settings) as pub:
        await pub.publish(ChangeEvent(id="warm", type="article.updated", entity=Entity(kind="article", id="W")))
        await wait_until(lambda: len(rec.requests) == 1, message="warm-up delivered")
        await wait_until(lambda: _finished(st, 1), message="warm-up recorded")
        before = ops(worker)
        for i in range(n):  # one at a time: each delivery its own batch
            await pub.publish(ChangeEvent(id=f"c{i}", type="article.updated", entity=Entity(kind="article",
                                                                                           id=f"A-{i}")))
            await wait_until(lambda i=i: _finished(st, i + 2), message=f"change {i} recorded")
        after = ops(worker)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    per_delivery = {k: v / n for k, v in delta.items() if k not in ON_TIMERS and v}
    assert per_delivery == {k: v for k, v in PER_DELIVERY.items() if v}, delta
    assert await st.lanes.lanes.estimated_document_count() == 0
    assert await st.lanes.queue.estimated_document_count() == 0


async def _finished(st, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await st.events.count({"status": EventStatus.FINISHED.value}) == n
