"""A small in-memory webhook cache: every webhook, reloaded when older than ``ttl`` seconds.

It keeps the delivery path free of store reads; a change to a webhook reaches running dispatchers within
``HOOKPOST_WEBHOOK_CACHE_TTL``. A stored document that does not validate is left out — it cannot be served, and
must not stop the others — and reported: a warning naming it and what is wrong (once per reason), and the gauge
``hookpost_webhooks_invalid``.
"""

import asyncio
import logging
import time

from hookpost.common.matching import any_matches
from hookpost.common.models import Webhook
from hookpost.dispatcher.metrics import Metrics
from hookpost.store.webhooks import BrokenWebhook, WebhookRepo

log = logging.getLogger("hookpost.webhooks")


class WebhookCache:
    """All webhooks by id, refreshed at most once per ``ttl`` (one reload at a time)."""

    def __init__(self, repo: WebhookRepo, ttl: float, metrics: Metrics | None = None) -> None:
        self.repo = repo
        self.ttl = ttl
        self.metrics = metrics
        self._reported: dict[str, str] = {}
        self._by_id: dict[str, Webhook] = {}
        self._loaded_at = -1e18
        self._lock = asyncio.Lock()

    async def _fresh(self) -> dict[str, Webhook]:
        if time.monotonic() - self._loaded_at > self.ttl:
            async with self._lock:
                if time.monotonic() - self._loaded_at > self.ttl:
                    hooks, broken = await self.repo.load()
                    self._by_id = {h.id: h for h in hooks}
                    self._report(broken)
                    self._loaded_at = time.monotonic()
        return self._by_id

    def peek(self, webhook_id: str) -> Webhook | None:
        """Return the webhook if the cache is fresh and knows it, else None (then use :meth:`get`); no I/O."""
        if time.monotonic() - self._loaded_at > self.ttl:
            return None
        return self._by_id.get(webhook_id)

    async def get(self, webhook_id: str) -> Webhook | None:
        """Return the webhook, or None if it does not exist (reloading once if it is unknown)."""
        hook = (await self._fresh()).get(webhook_id)
        if hook is None:
            self.invalidate()
            hook = (await self._fresh()).get(webhook_id)
        return hook

    async def all(self) -> list[Webhook]:
        """Return every (valid) webhook, active or not."""
        return list((await self._fresh()).values())

    async def subscribers(self, event_type: str) -> list[Webhook]:
        """Return the active webhooks subscribed to ``event_type``."""
        return [h for h in (await self._fresh()).values() if h.active and any_matches(h.event_types, event_type)]

    def _report(self, broken: list[BrokenWebhook]) -> None:
        if self.metrics is not None:
            self.metrics.webhooks_invalid.set(len(broken))
        now = {b.id: b.error for b in broken}
        for wid, error in now.items():
            if self._reported.get(wid) != error:
                log.warning("webhook document does not validate; its events are not served until it is fixed",
                            extra={"webhook_id": wid, "error": error[:500]})
        self._reported = now

    def problem(self, webhook_id: str) -> str | None:
        """What is wrong with webhook ``webhook_id``'s stored document, if it did not validate at the last load."""
        return self._reported.get(webhook_id)

    def invalidate(self) -> None:
        """Forget the cache so the next read reloads it."""
        self._loaded_at = -1e18
