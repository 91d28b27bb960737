"""The janitor's cleanup: delete events (and their attempts) past the retention for their status.

The records of ordered webhooks' events (their lane queue entries and the changes folded into them) are deleted
with them, when there are any. A lane whose head is deleted moves on (``store/lane_moves.py``).

Age counts from an event's last change (``updated_ms``, epoch milliseconds), so a Failed event restarted
yesterday is not deleted today. Work goes in small batches: find up to ``batch`` expired events with an indexed
query (``(status, updated_ms)``, no sort), delete their attempts by ``_id`` (attempt ids derive from the event id
and the attempt number) and then the events by ``_id``; a filter other than ``_id`` would make each delete scan the
whole collection on the local stand-in. A second janitor running at the same time only finds less to do.

It paces itself so deliveries keep their latency while it works: each batch's store time is measured, the batch
size follows the measured time per event (each request near ``target_request_s``), and a pause after each batch
keeps the janitor's share of the store at ``duty`` (0.3: it waits 2.3 times as long as it worked).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hookpost.common.models import EventStatus, attempt_id, utcnow
from hookpost.store.client import Store


@dataclass(frozen=True)
class RetentionRule:
    """Delete events in ``status`` whose last change is older than ``older_than`` seconds."""

    status: EventStatus
    older_than: float


@dataclass
class CleanupReport:
    """What one pass deleted (or, in a dry run, would delete), per status, and how long it took."""

    events: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    batches: int = 0
    busy_seconds: float = 0.0   # waiting for the store
    paused_seconds: float = 0.0  # pacing pauses
    largest_batch: int = 0

    @property
    def total(self) -> int:
        """Events deleted over all statuses."""
        return sum(self.events.values())

    @property
    def rate(self) -> float:
        """Events deleted per second of the pass (pauses included)."""
        return self.total / self.seconds if self.seconds > 0 else 0.0

    @property
    def duty(self) -> float:
        """The share of the pass spent waiting for the store."""
        return self.busy_seconds / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {"events": self.events, "total": self.total, "attempts": self.attempts,
                "seconds": round(self.seconds, 3), "dry_run": self.dry_run, "interrupted": self.interrupted,
                "events_per_s": round(self.rate, 1), "batches": self.batches,
                "busy_seconds": round(self.busy_seconds, 3), "paused_seconds": round(self.paused_seconds, 3),
                "store_duty": round(self.duty, 3), "largest_batch": self.largest_batch}


def retention_rules(finished: float | None, failed: float | None, stuck: float | None) -> list[RetentionRule]:
    """Build the rules from the retention settings; ``None`` keeps that kind of event forever."""
    rules = []
    if finished is not None:
        rules.append(RetentionRule(EventStatus.FINISHED, finished))
    if failed is not None:
        rules.append(RetentionRule(EventStatus.FAILED, failed))
    if stuck is not None:
        rules += [RetentionRule(EventStatus.NEW, stuck), RetentionRule(EventStatus.RETRYING, stuck)]
    return rules


@dataclass
class Pacer:
    """Sizes the janitor's batches and its pauses from its own measured store time.

    After a batch of ``n`` events that kept the store busy ``busy`` seconds (its slowest request ``slowest``), the
    next batch holds about ``target_request_s`` per request (between ``min_batch`` and ``max_batch``), and the
    pause is ``busy * (1 - duty) / duty``.
    """

    max_batch: int = 500
    duty: float = 0.3
    target_request_s: float = 0.02
    min_batch: int = 10
    batch: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.min_batch = min(self.min_batch, self.max_batch)
        self.batch = self.batch or min(100, self.max_batch)

    def after(self, n: int, busy: float, slowest: float) -> float:
        """Record a batch; return the pause to make before the next one (seconds)."""
        if n >= self.batch and slowest > 0:
            scale = min(2.0, max(0.25, self.target_request_s / slowest))
            self.batch = max(self.min_batch, min(self.max_batch, int(self.batch * scale)))
        elif slowest > self.target_request_s:
            self.batch = max(self.min_batch, int(self.batch * self.target_request_s / slowest))
        return busy * (1 - self.duty) / self.duty


async def cleanup(store: Store, rules: list[RetentionRule], *, batch: int = 500, dry_run: bool = False,
                  now: datetime | None = None, stopping: asyncio.Event | None = None, duty: float = 0.3,
                  target_request_s: float = 0.02,
                  sleep: Callable[[float], Awaitable[Any]] | None = None,
                  progress: Callable[[CleanupReport], None] | None = None) -> CleanupReport:
    """Run one pass of ``rules`` in paced batches of at most ``batch`` events (see :class:`Pacer`); stop between
    batches when ``stopping`` is set. ``sleep`` makes the pauses (default: wait, or until ``stopping``);
    ``progress`` sees the report after each batch."""
    started = time.monotonic()
    now = now or utcnow()
    report = CleanupReport(dry_run=dry_run)
    pacer = Pacer(max_batch=batch, duty=duty, target_request_s=target_request_s)
    pause = sleep or (lambda s: _pause(s, stopping))
    lanes_used = not dry_run and await store.lanes.in_use()  # ordered webhooks' records go with their events
    for rule in rules:
        cutoff_ms = int((now - timedelta(seconds=rule.older_than)).timestamp() * 1000)
        query: dict[str, Any] = {"status": rule.status.value, "updated_ms": {"$lt": cutoff_ms}}
        if dry_run:
            report.events[rule.status.value] = await store.events.count(query)
            continue
        report.events[rule.status.value] = 0
        while True:
            if stopping is not None and stopping.is_set():
                report.interrupted = True
                break
            size = pacer.batch
            times = []
            t0 = time.monotonic()
            found = await store.events.expired(query, limit=size)
            times.append(time.monotonic() - t0)
            if not found:
                report.busy_seconds += times[0]
                break
            ids = [event_id for event_id, _ in found]
            t1 = time.monotonic()
            # attempt_count counts every attempt made; one more covers an attempt recorded just before its event
            report.attempts += await store.attempts.delete_ids(
                [attempt_id(event_id, n) for event_id, count in found for n in range(1, count + 2)])
            t2 = time.monotonic()
            report.events[rule.status.value] += await store.events.delete_only(ids)
            if lanes_used:
                await store.lanes.forget(ids)
            t3 = time.monotonic()
            times += [t2 - t1, t3 - t2]
            busy = sum(times)
            report.busy_seconds += busy
            report.batches += 1
            report.largest_batch = max(report.largest_batch, len(ids))
            wait = pacer.after(len(ids), busy, max(times))
            if progress is not None:
                report.seconds = time.monotonic() - started
                progress(report)
            if len(ids) < size:
                break
            p0 = time.monotonic()
            await pause(wait)
            report.paused_seconds += time.monotonic() - p0 if sleep is None else wait
        if report.interrupted:
            break
    report.seconds = time.monotonic() - started
    return report


async def _pause(seconds: float, stopping: asyncio.Event | None) -> None:
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass
