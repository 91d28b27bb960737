"""What the web console shows beyond the CLI's operations: counts per status for a filter, the dashboard
(totals, events per minute, oldest Retrying, failing webhooks, queue depths) and per-webhook delivery health.

Read-only; built on :mod:`hookpost.store.insights` (bounded queries) and the broker's passive declares.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import EventStatus, WebhookEvent, utcnow
from hookpost.common.records import OldestRetrying
from hookpost.common.topology import topology_from
from hookpost.store.events import EventFilter
from hookpost.store.insights import InsightQueries, Outcomes

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

STATUSES = [s.value for s in EventStatus]
HEALTH_WINDOW = timedelta(hours=24)

__all__ = ["Dashboard", "FailingWebhook", "InsightOps", "Minute", "Outcomes"]


@dataclass
class Minute:
    """Events created in one minute, by their current status."""

    start: datetime
    by_status: dict[str, int]

    @property
    def total(self) -> int:
        """Events of this minute."""
        return sum(self.by_status.values())


@dataclass
class FailingWebhook:
    """A webhook with Failed or Retrying events created in the last day."""

    webhook_id: str
    failed: int
    retrying: int
    url: str | None = None


@dataclass
class Dashboard:
    """Everything the dashboard shows, computed at ``at``."""

    at: datetime
    last_hour: dict[str, int]
    last_day: dict[str, int]
    per_minute: list[Minute]
    per_minute_capped: bool
    oldest_retrying: OldestRetrying | None
    failing: list[FailingWebhook]
    queues: dict[str, int | None] | None = field(default=None)


def _by_status(counts: dict[str, int]) -> dict[str, int]:
    return {s: counts.get(s, 0) for s in STATUSES}


class InsightOps:
    """Read-only views for the console: ``InsightOps(admin).dashboard()``."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.queries = InsightQueries(admin.store)
        self._dashboard: Dashboard | None = None

    async def status_counts(self, flt: EventFilter) -> dict[str, int]:
        """Return the count of each status among events matching ``flt`` apart from its status condition and
        paging cursor (what a status filter would select)."""
        other = EventFilter(**{**flt.__dict__, "statuses": (), "before": None})
        return _by_status(await self.queries.counts_by("status", other.query()))

    async def dashboard(self, *, max_events: int = 100_000, queue_timeout: float = 2.0,
                        max_age: float = 0.0) -> Dashboard:
        """Return the dashboard: totals per status for the last hour and day, events per minute over the last
        hour (by current status), the oldest Retrying event, the webhooks failing most, and queue depths (None
        when the broker does not answer within ``queue_timeout`` seconds).

        With ``max_age`` a dashboard computed less than that many seconds ago is returned again (several people
        watching it cost the store one computation).
        """
        cached = self._dashboard
        if cached is not None and max_age > 0 and (utcnow() - cached.at).total_seconds() < max_age:
            return cached
        self._dashboard = await self._compute_dashboard(max_events, queue_timeout)
        return self._dashboard

    async def _compute_dashboard(self, max_events: int, queue_timeout: float) -> Dashboard:
        now = utcnow()
        hour_ago = now - timedelta(hours=1)
        day_ago = now - timedelta(days=1)
        last_hour = _by_status(await self.queries.counts_by("status", EventFilter(since=hour_ago).query()))
        last_day = _by_status(await self.queries.counts_by("status", EventFilter(since=day_ago).query()))
        first = hour_ago.replace(second=0, microsecond=0) + timedelta(minutes=1)
        minutes = [Minute(first + timedelta(minutes=i), _by_status({})) for i in range(60)]
        created = await self.queries.created_since(int(first.timestamp() * 1000), limit=max_events)
        first_ms = int(first.timestamp() * 1000)
        for ms, status in created:
            idx = (ms - first_ms) // 60_000
            if 0 <= idx < 60 and status in minutes[idx].by_status:
                minutes[idx].by_status[status] += 1
        oldest = await self.admin.store.events.find(EventFilter(statuses=[EventStatus.RETRYING]), limit=1,
                                                    newest_first=False)
        oldest_retrying = OldestRetrying(id=oldest[0].id, age_seconds=round(
            (now - oldest[0].created_at).total_seconds())) if oldest else None
        failing = await self.failing_webhooks(day_ago)
        queues = await self.queue_depths(queue_timeout)
        return Dashboard(at=now, last_hour=last_hour, last_day=last_day, per_minute=minutes,
                         per_minute_capped=len(created) >= max_events, oldest_retrying=oldest_retrying,
                         failing=failing, queues=queues)

    async def failing_webhooks(self, since: datetime, limit: int = 5) -> list[FailingWebhook]:
        """Return up to ``limit`` webhooks with the most Failed (then Retrying) events created since ``since``."""
        base = EventFilter(since=since)
        failed = await self.queries.counts_by("webhook_id", EventFilter(
            **{**base.__dict__, "statuses": [EventStatus.FAILED]}).query())
        retrying = await self.queries.counts_by("webhook_id", EventFilter(
            **{**base.__dict__, "statuses": [EventStatus.RETRYING]}).query())
        rows = [FailingWebhook(w, failed.get(w, 0), retrying.get(w, 0)) for w in {*failed, *retrying}]
        rows.sort(key=lambda r: (-r.failed, -r.retrying, r.webhook_id))
        rows = rows[:limit]
        urls = await self.webhook_names()
        for row in rows:
            row.url = urls.get(row.webhook_id)
        return rows

    async def events_of_change(self, change_id: str, limit: int = 50) -> list[WebhookEvent]:
        """Return the events fanned out from one change (one per subscribed webhook; indexed)."""
        return (await self.admin.store.events.find_for_change(change_id))[:limit]

    async def webhook_names(self) -> dict[str, str]:
        """Return ``{webhook id: URL}`` of every webhook, oldest first (for pickers and labels)."""
        return {h.id: h.url for h in await self.admin.store.webhooks.list()}

    async def webhook_health(self, webhook_ids: list[str]) -> dict[str, Outcomes]:
        """Return each webhook's delivery outcomes over the last 24 hours."""
        since = utcnow() - HEALTH_WINDOW
        return {w: await self.queries.outcomes(w, since) for w in webhook_ids}

    async def queue_depths(self, timeout: float = 2.0) -> dict[str, int | None] | None:
        """Return the ready messages of each Hookpost queue (None for a missing queue), or None if the broker
        cannot be reached within ``timeout`` seconds."""
        topo = topology_from(self.admin.settings)

        async def read() -> dict[str, int | None]:
            conn = await AmqpConnection.connect(self.admin.settings.rabbitmq_urls)
            try:
                return await conn.queue_depths([spec.name for spec in topo.queues])
            finally:
                await conn.close()

        try:
            return await asyncio.wait_for(read(), timeout)
        except Exception:
            return None
