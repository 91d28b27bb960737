"""The webhook cache refreshes ahead of its TTL while it is read: a reload of the webhooks never holds up fan-out or
delivery on a busy dispatcher (all of them waited for it, every TTL, when the store was slow to answer), and a
change is still seen within the TTL."""

import asyncio
import time

from hookpost.common.models import Webhook
from hookpost.dispatcher.cache import WebhookCache


class SlowRepo:
    """A webhook repository whose every read takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.hooks: dict[str, Webhook] = {}
        self.reads = 0

    def put(self, hook_id: str, types: list[str]) -> None:
        self.hooks[hook_id] = Webhook(id=hook_id, url="http://x", event_types=types, secret="s")

    async def load(self):
        self.reads += 1
        await asyncio.sleep(self.delay)
        return list(self.hooks.values()), []

    async def changed_since(self, since_ms: int):
        return await self.load()

    async def deleted_since(self, since_ms: int) -> list[str]:
        return []


async def test_reads_on_a_busy_dispatcher_never_wait_for_a_reload_and_see_changes_within_the_ttl() -> None:
    ttl = 0.2
    repo = SlowRepo(delay=ttl / 4)
    repo.put("wh_1", ["article.*"])
    cache = WebhookCache(repo, ttl=ttl)  # type: ignore[arg-type]
    assert [h.id for h in await cache.subscribers("article.updated")] == ["wh_1"]  # the first load waits
    slowest, seen_at = 0.0, None
    changed_at = time.monotonic() + 2 * ttl
    deadline = time.monotonic() + 6 * ttl
    while time.monotonic() < deadline:
        if seen_at is None and time.monotonic() >= changed_at and "wh_2" not in repo.hooks:
            repo.put("wh_2", ["article.*"])
        t = time.monotonic()
        found = [h.id for h in await cache.subscribers("article.updated")]
        slowest = max(slowest, time.monotonic() - t)
        if seen_at is None and "wh_2" in found:
            seen_at = time.monotonic()
        await asyncio.sleep(ttl / 20)
    assert slowest < ttl / 8, f"a read waited {slowest * 1000:.0f} ms for a reload"
    assert seen_at is not None and seen_at - changed_at <= ttl + repo.delay
    assert repo.reads >= 5  # it kept refreshing


async def test_an_idle_cache_past_its_ttl_and_an_invalidated_one_reload_before_answering() -> None:
    repo = SlowRepo(delay=0.01)
    repo.put("wh_1", ["article.*"])
    cache = WebhookCache(repo, ttl=0.05)  # type: ignore[arg-type]
    await cache.subscribers("article.updated")
    await asyncio.sleep(0.08)
    repo.put("wh_2", ["article.*"])
    assert [h.id for h in await cache.subscribers("article.updated")] == ["wh_1", "wh_2"]
    repo.put("wh_3", ["article.*"])
    cache.invalidate()
    assert await cache.get("wh_3") is not None
