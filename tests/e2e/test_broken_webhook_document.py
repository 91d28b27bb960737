"""A webhook document edited by hand into something that no longer validates stops nothing: the other webhooks
get their events, the broken one is skipped and reported, and no valid change ends in the invalid queue."""

from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from tests.e2e.test_throughput_semantics import changes, metric
from tests.helpers import queue_depth, running_worker, wait_until


async def test_a_webhook_document_that_does_not_validate_does_not_stop_the_others(settings, store, new_receiver,
                                                                                   caplog):
    healthy, other = await new_receiver([200]), await new_receiver([200])
    await store.webhooks.create(healthy.url, ["article.*"])
    broken = await store.webhooks.create(other.url, ["article.*"])
    await store.webhooks.coll.update_one({"_id": broken.id}, {"$set": {"description": 5}})  # edited by hand
    async with running_worker(settings) as worker:
        async with Publisher.from_settings(settings) as p:
            await p.publish_many(changes("c", "article.updated", 5))

        async def all_finished():
            return await store.events.count({"status": "Finished"}) == 5

        await wait_until(all_finished, 30, message="five events for the healthy webhook finished")
        assert len(healthy.requests) == 5 and other.requests == []
        assert metric(worker, "hookpost_webhooks_invalid") == 1
        assert metric(worker, "hookpost_changes_consumed_total", result="ok") == 5
    assert await store.events.count({"webhook_id": broken.id}) == 0
    assert await queue_depth(settings, topology_from(settings).invalid_queue) == 0
    assert any(broken.id in str(getattr(r, "webhook_id", "")) and "description" in str(getattr(r, "error", ""))
               for r in caplog.records)
