"""The dispatcher's webhook cache on the real store: its subscription index answers exactly what a scan of every
webhook answers, and an incremental reload sees a created, updated, disabled or deleted webhook within the TTL."""

import asyncio
import random

from hookpost.common.matching import any_matches
from hookpost.common.models import now_ms
from hookpost.dispatcher.cache import WebhookCache

WORDS = ["article", "order", "stock", "price", "level", "created", "updated", "deleted", "changed"]


def random_patterns(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.randrange(1, 4)):
        parts = [rng.choice([*WORDS, "*"]) if rng.random() < 0.8 else "*" for _ in range(rng.randrange(1, 4))]
        out.append(".".join(parts))
    return out


def event_types(rng: random.Random, n: int) -> list[str]:
    return sorted({".".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 5))) for _ in range(n)})


async def test_index_matches_like_a_scan_of_every_webhook(store):
    rng = random.Random(20)
    hooks = []
    for i in range(600):
        hooks.append(await store.webhooks.create(f"http://127.0.0.1:9/{i}", random_patterns(rng),
                                                 active=rng.random() > 0.1))
    cache = WebhookCache(store.webhooks, ttl=60)
    types = event_types(rng, 300)
    matched = 0
    for etype in types:
        scan = sorted(h.id for h in hooks if h.active and any_matches(h.event_types, etype))
        assert [h.id for h in await cache.subscribers(etype)] == scan, etype
        matched += bool(scan)
    assert matched > 50 and cache.reloads == {"full": 1, "incremental": 0}


async def test_a_change_is_seen_within_the_ttl_by_an_incremental_reload(store):
    keep = await store.webhooks.create("http://127.0.0.1:9/keep", ["article.*"])
    cache = WebhookCache(store.webhooks, ttl=0.2)
    assert [h.id for h in await cache.subscribers("article.updated")] == [keep.id]

    async def after_ttl(etype: str) -> list[str]:
        await asyncio.sleep(0.25)
        return [h.id for h in await cache.subscribers(etype)]

    new = await store.webhooks.create("http://127.0.0.1:9/new", ["order.created"])
    assert await after_ttl("order.created") == [new.id]  # created
    await store.webhooks.update(new.id, event_types=["article.updated"])
    assert await after_ttl("order.created") == []  # updated
    assert await after_ttl("article.updated") == sorted([keep.id, new.id])
    await store.webhooks.set_active(keep.id, False, "test")
    assert await after_ttl("article.updated") == [new.id]  # disabled
    await store.webhooks.set_active(keep.id, True)
    assert await after_ttl("article.updated") == sorted([keep.id, new.id])  # enabled again
    await store.webhooks.delete(new.id)
    assert await after_ttl("article.updated") == [keep.id]  # deleted
    assert await cache.get(new.id) is None
    assert cache.reloads["full"] == 1 and cache.reloads["incremental"] >= 6


async def test_a_broken_document_is_reported_and_left_out_incrementally(store):
    good = await store.webhooks.create("http://127.0.0.1:9/good", ["*"])
    cache = WebhookCache(store.webhooks, ttl=0.1)
    assert [h.id for h in await cache.subscribers("x.y")] == [good.id]
    await store.webhooks.coll.update_one({"_id": good.id}, {"$set": {"description": 5, "updated_ms": now_ms()}})
    await asyncio.sleep(0.15)
    assert await cache.subscribers("x.y") == [] and cache.problem(good.id)
    await store.webhooks.coll.update_one({"_id": good.id}, {"$set": {"description": "fixed", "updated_ms": now_ms()}})
    await asyncio.sleep(0.15)
    assert [h.id for h in await cache.subscribers("x.y")] == [good.id] and cache.problem(good.id) is None


async def test_a_full_reload_catches_what_changed_without_updated_ms(store):
    hook = await store.webhooks.create("http://127.0.0.1:9/a", ["a.b"])
    cache = WebhookCache(store.webhooks, ttl=0.05, full_every=0.3)
    assert len(await cache.subscribers("a.b")) == 1
    await store.webhooks.coll.update_one({"_id": hook.id}, {"$set": {"active": False, "updated_ms": 0}})  # by hand
    await asyncio.sleep(0.4)
    assert await cache.subscribers("a.b") == [] and cache.reloads["full"] == 2
