"""A change event published to RabbitMQ reaches a webhook endpoint and is recorded Finished."""

import asyncio

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from hookpost.store.events import EventFilter
from tests.helpers import wait_until


def change(cid: str, etype: str = "article.updated", entity_id: str = "A-1001") -> ChangeEvent:
    return ChangeEvent(id=cid, type=etype, entity=Entity(kind=etype.split(".")[0], id=entity_id))


async def test_change_reaches_matching_webhook_and_is_finished(settings, store, dispatcher, new_receiver):
    articles = await new_receiver([200])
    orders = await new_receiver([200])
    hook_a = await store.webhooks.create(articles.url, ["article.*"])
    await store.webhooks.create(orders.url, ["order.created"])
    dispatcher.cache.invalidate()

    async with Publisher.from_settings(settings) as publisher:
        assert await publisher.publish(change("chg-1")) == "chg-1"

    await wait_until(lambda: len(articles.requests) == 1, message="article receiver got the POST")
    events = await wait_until(
        lambda: _finished(store), message="event recorded Finished")
    body = articles.requests[0].json
    assert body["type"] == "article.updated"
    assert body["data"]["entity"] == {"kind": "article", "id": "A-1001"}
    assert body["data"]["change_id"] == "chg-1"
    assert articles.requests[0].headers["webhook-id"] == body["id"] == events[0].id
    assert articles.requests[0].headers["Content-Type"] == "application/json"

    assert len(events) == 1
    ev = events[0]
    assert ev.webhook_id == hook_a.id and ev.status == EventStatus.FINISHED and ev.attempt_count == 1
    attempts = await store.attempts.for_event(ev.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 200)]
    assert attempts[0].response_excerpt == "answer 1: 200"
    # the order receiver got nothing, and nothing else is stored
    await asyncio.sleep(0.3)
    assert orders.requests == []
    assert len(articles.requests) == 1
    assert await store.events.count({}) == 1


async def _finished(store):
    events = await store.events.find(EventFilter(), limit=10)
    return events if events and all(e.status == EventStatus.FINISHED for e in events) else None


async def test_same_change_published_twice_makes_one_event(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([200])
    await store.webhooks.create(rec.url, ["article.updated"])
    async with Publisher.from_settings(settings) as publisher:
        await publisher.publish(change("chg-dup"))
        await wait_until(lambda: len(rec.requests) == 1, message="first delivery")
        await publisher.publish(change("chg-dup"))
        await publisher.publish(change("chg-other"))
    await wait_until(lambda: len(rec.requests) == 2, message="delivery of the other change")
    await wait_until(lambda: _finished(store), message="all finished")
    assert await store.events.count({"change_id": "chg-dup"}) == 1
    assert await store.events.count({}) == 2
    assert sorted(r.json["data"]["change_id"] for r in rec.requests) == ["chg-dup", "chg-other"]


async def test_inactive_and_unsubscribed_webhooks_get_nothing(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([200])
    off = await new_receiver([200])
    await store.webhooks.create(rec.url, ["*"])
    disabled = await store.webhooks.create(off.url, ["article.*"])
    await store.webhooks.set_active(disabled.id, False, "test")
    async with Publisher.from_settings(settings) as publisher:
        await publisher.publish(change("c-1", "stock.level.changed", "S-1"))
    await wait_until(lambda: len(rec.requests) == 1)
    await asyncio.sleep(0.3)
    assert off.requests == []
    assert await store.events.count({"webhook_id": disabled.id}) == 0
