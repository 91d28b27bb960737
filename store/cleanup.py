"""The janitor's cleanup: delete events (and their attempts) past the retention for their status.

Age counts from an event's last change (``updated_ms``, epoch milliseconds), so a Failed event restarted
yesterday is not deleted today. Work goes in bounded batches: find up to ``batch`` ids with an indexed
query, then delete by ``_id``, attempts first, so no request holds the store for long and a second janitor
running at the same time only finds less to do.
"""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hookpost.common.models import EventStatus, utcnow
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

    @property
    def total(self) -> int:
        """Events deleted over all statuses."""
        return sum(self.events.values())

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {"events": self.events, "total": self.total, "attempts": self.attempts,
                "seconds": round(self.seconds, 3), "dry_run": self.dry_run, "interrupted": self.interrupted}


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


async def cleanup(store: Store, rules: list[RetentionRule], *, batch: int = 500, dry_run: bool = False,
                  now: datetime | None = None, stopping: asyncio.Event | None = None) -> CleanupReport:
    """Run one pass of ``rules``; stop between batches when ``stopping`` is set."""
    started = time.monotonic()
    now = now or utcnow()
    report = CleanupReport(dry_run=dry_run)
    for rule in rules:
        cutoff_ms = int((now - timedelta(seconds=rule.older_than)).timestamp() * 1000)
        query: dict[str, Any] = {"status": rule.status.value, "updated_ms": {"$lt": cutoff_ms}}
        if dry_run:
            report.events[rule.status.value] = await store.events.count(query)
            continue
        deleted = 0
        while True:
            if stopping is not None and stopping.is_set():
                report.interrupted = True
                break
            ids = await store.events.find_ids(query, limit=batch)
            if not ids:
                break
            report.attempts += await store.attempts.delete_for_events(ids)
            deleted += await store.events.delete_only(ids)
            if len(ids) < batch:
                break
        report.events[rule.status.value] = deleted
        if report.interrupted:
            break
    report.seconds = time.monotonic() - started
    return report
