"""The in-memory webhook cache: every webhook, indexed by the event types it subscribes to, kept fresh within
``ttl`` seconds by incremental reloads (started in the background once half the TTL has passed, so that reads do
not wait for them).

It keeps the delivery path free of store reads; a change to a webhook reaches running dispatchers within
``HOOKPOST_WEBHOOK_CACHE_TTL``. A reload after the first reads only the webhooks written since the previous one
(their indexed ``updated_ms``, with 5 s of overlap for writers' clocks and slow writes) and the tombstones of
deleted ones; a full reload every ``full_every`` seconds also catches documents changed by hand without
``updated_ms``.

Matching an event type does not scan the webhooks: exact subscriptions are a dict lookup, patterns are grouped by
their first segment (``article.*`` under ``article``; those starting with ``*`` apart) and tested with
:func:`~hookpost.common.matching.type_matches`; the answer per event type is remembered until the next change.

A stored document that does not validate is left out — it cannot be served, and must not stop the others — and
reported: a warning naming it and what is wrong (once per reason), and the gauge ``hookpost_webhooks_invalid``.
"""

import gc
import logging
import time

from hookpost.common.matching import type_matches
from hookpost.common.models import Webhook, now_ms
from hookpost.common.refresh import TtlRefresh
from hookpost.dispatcher.metrics import Metrics
from hookpost.store.webhooks import BrokenWebhook, WebhookRepo

log = logging.getLogger("hookpost.webhooks")

OVERLAP_MS = 5_000  # an incremental reload also re-reads the 5 s before the previous one: clocks, slow writes
_WILD = "*"


def _first(pattern: str) -> str:
    return pattern.split(".", 1)[0]


class SubscriptionIndex:
    """Active webhooks by the event types they subscribe to; :meth:`match` answers without scanning them all."""

    def __init__(self) -> None:
        self._exact: dict[str, set[str]] = {}
        self._patterns: dict[str, dict[str, set[str]]] = {}  # first segment (or "*") -> pattern -> webhook ids
        self._memo: dict[str, list[str]] = {}

    def add(self, hook: Webhook) -> None:
        """Index ``hook`` (inactive webhooks are not indexed)."""
        if not hook.active:
            return
        for pattern in hook.event_types:
            if "*" in pattern:
                self._patterns.setdefault(_first(pattern), {}).setdefault(pattern, set()).add(hook.id)
            else:
                self._exact.setdefault(pattern, set()).add(hook.id)
        self._memo.clear()

    def remove(self, hook: Webhook) -> None:
        """Forget ``hook`` as indexed by :meth:`add`."""
        for pattern in hook.event_types:
            if "*" in pattern:
                group = self._patterns.get(_first(pattern), {})
                group.get(pattern, set()).discard(hook.id)
                if not group.get(pattern, True):
                    del group[pattern]
                if not group:
                    self._patterns.pop(_first(pattern), None)
            else:
                ids = self._exact.get(pattern)
                if ids is not None:
                    ids.discard(hook.id)
                    if not ids:
                        del self._exact[pattern]
        self._memo.clear()

    def match(self, event_type: str) -> list[str]:
        """Return the ids of the webhooks subscribed to ``event_type``, sorted."""
        found = self._memo.get(event_type)
        if found is None:
            ids = set(self._exact.get(event_type, ()))
            for key in {_first(event_type), _WILD}:
                for pattern, hooks in self._patterns.get(key, {}).items():
                    if type_matches(pattern, event_type):
                        ids |= hooks
            found = sorted(ids)
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[event_type] = found
        return found


class WebhookCache:
    """All webhooks by id and by subscription, refreshed at most once per ``ttl`` (one reload at a time)."""

    def __init__(self, repo: WebhookRepo, ttl: float, metrics: Metrics | None = None, *,
                 full_every: float = 600.0) -> None:
        self.repo = repo
        self.ttl = ttl
        self.metrics = metrics
        self.full_every = full_every
        self._reported: dict[str, str] = {}
        self._by_id: dict[str, Webhook] = {}
        self._index = SubscriptionIndex()
        self._refresh = TtlRefresh(ttl, self._reload, what="webhook cache")
        self._full_at = -1e18
        self._since_ms: int | None = None
        self.reloads = {"full": 0, "incremental": 0}

    async def _fresh(self) -> dict[str, Webhook]:
        """The webhooks by id, at most ``ttl`` old. Past half the TTL a read starts a reload in the background and
        answers from what is loaded, so on a busy dispatcher no read waits for a reload (every change and delivery
        would, while the store is slow to answer it); a cache never loaded, invalidated or idle past the TTL is
        reloaded before the read is answered."""
        await self._refresh.ensure()
        return self._by_id

    async def _reload(self) -> None:
        started_ms = now_ms()
        incremental = (self._since_ms is not None and time.monotonic() - self._full_at <= self.full_every
                       and hasattr(self.repo, "changed_since"))
        if incremental:
            assert self._since_ms is not None
            since = self._since_ms - OVERLAP_MS
            hooks, broken = await self.repo.changed_since(since)
            gone = await self.repo.deleted_since(since)
            for hook in hooks:
                self._put(hook)
            for b in broken:
                self._drop(b.id)
            for webhook_id in gone:
                self._drop(webhook_id)
                self._reported.pop(webhook_id, None)
            fixed = {h.id for h in hooks}
            reported = {k: v for k, v in self._reported.items() if k not in fixed}
            self._report(broken, keep=reported)
            self.reloads["incremental"] += 1
        else:
            hooks, broken = await self.repo.load()
            self._by_id = {}
            self._index = SubscriptionIndex()
            for hook in hooks:
                self._put(hook)
            self._report(broken)
            self._full_at = time.monotonic()
            self.reloads["full"] += 1
            del hooks
            # many webhooks are many long-lived objects that every full garbage collection would walk again; they
            # are freed by reference counting when replaced, so take them (and what else lives now) out of its way
            gc.freeze()
        self._since_ms = started_ms
        self._refresh.loaded()

    def _put(self, hook: Webhook) -> None:
        old = self._by_id.get(hook.id)
        if old == hook:  # read again in the overlap: nothing changed
            return
        if old is not None:
            self._index.remove(old)
        self._by_id[hook.id] = hook
        self._index.add(hook)

    def _drop(self, webhook_id: str) -> None:
        old = self._by_id.pop(webhook_id, None)
        if old is not None:
            self._index.remove(old)

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
        """Return the active webhooks subscribed to ``event_type`` (in id order)."""
        by_id = await self._fresh()
        return [by_id[i] for i in self._index.match(event_type)]

    def _report(self, broken: list[BrokenWebhook], keep: dict[str, str] | None = None) -> None:
        now = {**(keep or {}), **{b.id: b.error for b in broken}}
        if self.metrics is not None:
            self.metrics.webhooks_invalid.set(len(now))
        for b in broken:
            if self._reported.get(b.id) != b.error:
                log.warning("webhook document does not validate; its events are not served until it is fixed",
                            extra={"webhook_id": b.id, "error": b.error[:500]})
        self._reported = now

    def problem(self, webhook_id: str) -> str | None:
        """What is wrong with webhook ``webhook_id``'s stored document, if it did not validate at the last load."""
        return self._reported.get(webhook_id)

    def invalidate(self) -> None:
        """Make the next read reload (incrementally: only what changed since the last reload)."""
        self._refresh.invalidate()
