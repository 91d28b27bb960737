"""A message whose handling fails every time is ended by the dispatcher itself — its event Failed with a reason
an operator can read and a failure notice, or its change set aside with the reason — before the broker would
dead-letter it without one; the other messages flow on. On quorum and on classic queues (no delivery limit)."""

import json

import pytest

from hookpost.common.models import EventStatus
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_throughput_semantics import changes
from tests.helpers import drain_queue, running_worker, wait_until


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_delivery_that_fails_every_time_ends_failed_with_its_reason(settings_factory, new_receiver,
                                                                             queue_type):
    s = settings_factory(queue_type=queue_type)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    receiver = await new_receiver([200])
    await store.webhooks.create(receiver.url, ["article.*"])
    async with running_worker(s) as worker:
        real_send = worker.delivery.send

        async def send(hook, dm, slot):  # a bug that hits one event every time
            if dm.payload["data"]["entity"]["id"] == "1":
                worker.limiter.release(slot.endpoint, slot.token)
                raise RuntimeError("cannot serialise this payload")
            return await real_send(hook, dm, slot)

        worker.delivery.send = send
        async with Publisher.from_settings(s) as p:
            await p.publish_many(changes("p", "article.updated", 3))

        async def settled():
            return (await store.events.count({"status": "Finished"}) == 2
                    and await store.events.count({"status": "Failed"}) == 1)

        await wait_until(settled, 60, message="two events Finished and the poisoned one Failed")
    failed = (await store.events.find_for_change("p-1"))[0]
    assert failed.status == EventStatus.FAILED and failed.attempt_count == 0
    assert "could not be handled (5 tries): RuntimeError: cannot serialise this payload" in failed.last_error
    notices = await drain_queue(s, topology_from(s).failed_queue)
    assert [json.loads(body)["event_id"] for _, body in notices] == [failed.id]
    assert len(receiver.requests) == 2
    await store.close()


async def test_a_change_whose_fan_out_fails_every_time_is_set_aside_with_its_reason(settings, store, new_receiver):
    receiver = await new_receiver([200])
    await store.webhooks.create(receiver.url, ["article.*"])
    async with running_worker(settings) as worker:
        real = worker.fanout.store_events

        async def store_events(change, events, *, replay):
            if change.id == "f-0":
                raise RuntimeError("fan-out bug")
            return await real(change, events, replay=replay)

        worker.fanout.store_events = store_events
        async with Publisher.from_settings(settings) as p:
            await p.publish_many(changes("f", "article.updated", 3))
        await wait_until(lambda: len(receiver.requests) == 2, 30, message="the two other changes delivered")

        async def set_aside():
            return len(held := await drain_queue(settings, topology_from(settings).invalid_queue)) == 1 and held

        held = await wait_until(set_aside, 60, message="the poisoned change in the invalid queue")
    headers, body = held[0]
    assert json.loads(body)["id"] == "f-0"
    assert "fan-out could not be handled (5 tries): RuntimeError: fan-out bug" in headers["x-hookpost-error"]
