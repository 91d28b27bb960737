"""Store outages: hold work (unacked) until MongoDB answers again, instead of failing or acking it.

The dispatcher reaches the store only through a :class:`GuardedStore`: every repository method it calls retries
through an outage (capped backoff) and raises ``asyncio.CancelledError`` if the worker stops meanwhile.

Example::

    store = GuardedStore(Store.connect(url, db), StoreGuard(metrics, stopping))
    await store.events.insert_new(events)       # waits out an outage instead of raising
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from pymongo.errors import ConnectionFailure

from hookpost.dispatcher.metrics import Metrics
from hookpost.store import Store
from hookpost.store.attempts import AttemptRepo
from hookpost.store.endpoints import EndpointRepo, NoticeRepo
from hookpost.store.events import EventRepo
from hookpost.store.lanes import LaneRepo
from hookpost.store.webhooks import WebhookRepo

T = TypeVar("T")
log = logging.getLogger("hookpost.store")


class StoreGuard:
    """Runs store operations, retrying with capped backoff while the store is unreachable.

    ``up`` tells readiness; the loss and the recovery are each logged once.
    """

    def __init__(self, metrics: Metrics, stopping: asyncio.Event) -> None:
        self.metrics = metrics
        self.stopping = stopping
        self.up = True
        metrics.store_up.set(1)

    def mark(self, up: bool, reason: str = "") -> None:
        """Record that the store is (un)reachable; log only the transitions."""
        if up == self.up:
            return
        if up:
            log.info("store reachable again")
        else:
            log.warning("store unreachable; holding work until it is back", extra={"error": reason[:300]})
        self.up = up
        self.metrics.store_up.set(1 if up else 0)

    async def run(self, op: Callable[[], Awaitable[T]]) -> T:
        """Await ``op()``; on a connection failure wait and try again until it succeeds.

        Raises ``asyncio.CancelledError`` if the worker stops meanwhile (the message stays unacked).
        """
        delay = 0.2
        while True:
            try:
                result = await op()
            except ConnectionFailure as exc:
                self.mark(False, str(exc))
                if self.stopping.is_set():
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.mark(True)
            return result


R = TypeVar("R")


class _GuardedRepo:
    """A repository whose coroutine methods run through :meth:`StoreGuard.run`."""

    def __init__(self, repo: object, guard: StoreGuard) -> None:
        self._repo = repo
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._repo, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            return await self._guard.run(lambda: attr(*args, **kwargs))
        return guarded


def guarded(repo: R, guard: StoreGuard) -> R:
    """Return ``repo`` with every coroutine method guarded (same interface)."""
    return cast(R, _GuardedRepo(repo, guard))


class GuardedStore:
    """The store as the dispatcher sees it: the repositories it uses, each guarded against outages."""

    def __init__(self, store: Store, guard: StoreGuard) -> None:
        self.raw = store
        self.guard = guard
        self.events: EventRepo = guarded(store.events, guard)
        self.attempts: AttemptRepo = guarded(store.attempts, guard)
        self.webhooks: WebhookRepo = guarded(store.webhooks, guard)
        self.endpoints: EndpointRepo = guarded(store.endpoints, guard)
        self.notices: NoticeRepo = guarded(store.notices, guard)
        self.lanes: LaneRepo = guarded(store.lanes, guard)
