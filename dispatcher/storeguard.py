"""Store outages: hold work (unacked) until MongoDB answers again, instead of failing or acking it.

>>> # await guard.run(lambda: store.events.insert_new(events))   # retries while the store is unreachable
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymongo.errors import ConnectionFailure

from hookpost.dispatcher.metrics import Metrics

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
