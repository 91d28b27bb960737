"""Fault-injection tests and the helpers they share: a tallying receiver, publishing, store checks."""

import asyncio
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.settings import Settings
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.helpers import attempt_records, wait_until


@dataclass
class Tally:
    """A receiver's ``respond`` callback that answers 200 or 500 and records what it answered, per webhook-id.

    ``fail_rate`` fails that share of requests at random (seeded); ``fail_first`` fails the first request of
    the events it selects (by webhook-id); ``delay`` is waited before each answer, or ``delay_for(event_id, n)``
    for the ``n``-th request of that event when given. ``active`` counts requests being waited on right now.
    """

    fail_rate: float = 0.0
    seed: int = 0
    delay: float = 0.0
    fail_first: Callable[[str], bool] | None = None
    delay_for: Callable[[str, int], float] | None = None
    log: list[tuple[float, str, int]] = field(default_factory=list)
    active: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._seen: Counter[str] = Counter()

    async def respond(self, _n: int, request: web.Request) -> web.Response:
        """Answer one webhook request (the :class:`tests.helpers.Receiver` callback)."""
        event_id = request.headers.get("webhook-id", "")
        self._seen[event_id] += 1
        delay = self.delay_for(event_id, self._seen[event_id]) if self.delay_for else self.delay
        if delay:
            self.active += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.active -= 1
        fail = self._rng.random() < self.fail_rate
        if self.fail_first is not None and self._seen[event_id] == 1 and self.fail_first(event_id):
            fail = True
        status = 500 if fail else 200
        self.log.append((time.monotonic(), event_id, status))
        return web.Response(status=status, text="no" if fail else "ok")

    def requests(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Count requests per webhook-id received in ``[since, until)`` (monotonic time)."""
        return Counter(eid for at, eid, _ in self.log if since <= at < until)

    def delivered(self) -> Counter[str]:
        """Count 2xx answers per webhook-id."""
        return Counter(eid for _, eid, status in self.log if status < 300)


def one_in(n: int) -> Callable[[str], bool]:
    """Select about one event id in ``n``, the same ones on every run (for ``Tally.fail_first``)."""
    return lambda event_id: zlib.crc32(event_id.encode()) % n == 0


def make_changes(tag: str, count: int, types: Sequence[str] = ("article.updated",), start: int = 0
                 ) -> list[ChangeEvent]:
    """Build ``count`` change events ``{tag}-{i}``, cycling through ``types``."""
    return [ChangeEvent(id=f"{tag}-{i}", type=types[i % len(types)], entity=Entity(kind="article", id=f"A-{i}"))
            for i in range(start, start + count)]


async def publish(settings: Settings, changes: Sequence[ChangeEvent], *, timeout: float = 60.0) -> None:
    """Publish change events to the broker in ``settings`` (confirmed; retried for ``timeout`` seconds)."""
    async with Publisher.from_settings(settings, timeout=timeout, name="hookpost-faults-producer") as publisher:
        await publisher.publish_many(changes)


async def status_counts(store: Store) -> dict[str, int]:
    """Return ``{status: number of events}``."""
    return await store.events.group_counts("status", {})


async def wait_settled(store: Store, expected: int, timeout: float, *, failed_ok: bool = False,
                       stall: float | None = None, message: str = "every event Finished",
                       interval: float = 0.25) -> dict[str, int]:
    """Wait until the store holds ``expected`` events, none New or Retrying (none Failed unless ``failed_ok``).

    Fails after ``timeout`` seconds, or earlier once the status counts have not changed for ``stall`` seconds.
    The counts are read every ``interval`` seconds (each read groups every event: keep it long for big runs).
    """
    last: dict[str, Any] = {"counts": None, "since": time.monotonic()}

    async def settled() -> dict[str, int] | None:
        counts = await status_counts(store)
        done = counts.get(EventStatus.FINISHED.value, 0) + (counts.get(EventStatus.FAILED.value, 0) if failed_ok
                                                            else 0)
        if sum(counts.values()) == expected and done == expected:
            return counts
        if counts != last["counts"]:
            last.update(counts=counts, since=time.monotonic())
        elif stall is not None and time.monotonic() - last["since"] > stall:
            raise AssertionError(f"no progress for {stall:.0f}s waiting for {message}")
        return None
    try:
        return await wait_until(settled, timeout, interval=interval, message=message)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status counts now {await status_counts(store)}, expected {expected}") from None


async def event_rows(store: Store, limit: int = 200000) -> list[dict[str, Any]]:
    """Return every event's id, change, webhook, status and counters (one query, top-level projection)."""
    fields = {"_id": 1, "change_id": 1, "webhook_id": 1, "status": 1, "attempt_count": 1, "budget_start": 1}
    cursor = store.events.coll.find({}, fields).limit(limit).batch_size(5000)
    return [doc async for doc in cursor]


async def attempts_per_event(store: Store, limit: int = 500000) -> Counter[str]:
    """Return the number of attempt records per event id (the first in the event, the others in ``attempts``)."""
    return Counter(event_id for event_id, _ in await attempt_records(store, limit=limit))
