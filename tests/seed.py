"""Seed the store with a deterministic mix of webhook events for CLI and janitor tests."""

import random
from datetime import UTC, datetime, timedelta

from hookpost.common.ids import new_id
from hookpost.common.models import Entity, EventStatus, WebhookEvent
from hookpost.store import Store

TYPES = ["article.updated", "article.deleted", "order.created", "stock.level.changed"]


def make_events(n: int, webhook_ids: list[str], *, now: datetime | None = None, seed: int = 7,
                spread: timedelta = timedelta(days=10)) -> list[WebhookEvent]:
    """Return ``n`` events spread over ``spread`` before ``now`` (oldest first), every status and type mixed."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    events = []
    statuses = list(EventStatus)
    for i in range(n):
        created = now - spread * (1 - i / n)
        ms = int(created.timestamp() * 1000)
        status = statuses[rng.randrange(4)]
        etype = TYPES[rng.randrange(len(TYPES))]
        eid = new_id("evt", ms)
        failed = status in (EventStatus.FAILED, EventStatus.RETRYING)
        events.append(WebhookEvent(
            id=eid, webhook_id=webhook_ids[rng.randrange(len(webhook_ids))], change_id=f"chg-{i}", type=etype,
            entity=Entity(kind=etype.split(".")[0], id=f"E-{rng.randrange(60)}"),
            payload={"id": eid, "type": etype, "timestamp": created.isoformat(), "data": {"n": i}},
            status=status, attempt_count=10 if status == EventStatus.FAILED else rng.randrange(1, 4),
            last_status_code=503 if failed and i % 3 else None,
            last_error=("Timeout: no complete response within 15s" if failed and i % 3 == 0 else
                        "HTTP 503" if failed else None),
            created_at=created, created_ms=ms, updated_at=created, updated_ms=ms,
            next_attempt_ms=ms + 60000 if status == EventStatus.RETRYING else None))
    return events


async def insert(store: Store, events: list[WebhookEvent]) -> None:
    """Insert events in batches."""
    for i in range(0, len(events), 1000):
        assert len(await store.events.insert_new(events[i:i + 1000])) == len(events[i:i + 1000])
