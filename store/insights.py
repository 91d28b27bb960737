"""Read-only queries behind the console's dashboard and webhook health: events per minute, per-webhook
delivery outcomes over a window, failing webhooks. Every query is bounded (``limit``) and uses indexed fields
(``created_ms``, ``webhook_id``, ``status``); dates in ``$match`` are avoided (outside the subset the local
store serves: docs/platform-notes.md, item 11)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hookpost.store.client import Store


@dataclass
class Outcomes:
    """Delivery attempts of one webhook over a window: how many, how many answered 2xx, the latest."""

    attempts: int = 0
    succeeded: int = 0
    last_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    capped: bool = False


class InsightQueries:
    """Bounded read-only aggregates over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def created_since(self, since_ms: int, limit: int = 100_000) -> list[tuple[int, str]]:
        """Return ``(created_ms, status)`` of events created at or after ``since_ms`` (at most ``limit``)."""
        cursor = self.store.events.coll.find({"created_ms": {"$gte": since_ms}},
                                             {"created_ms": 1, "status": 1, "_id": 0}).limit(limit).batch_size(5000)
        return [(int(d["created_ms"]), str(d["status"])) async for d in cursor]

    async def outcomes(self, webhook_id: str, since: datetime, limit: int = 1000) -> Outcomes:
        """Return the outcomes of ``webhook_id``'s attempts started since ``since`` (the newest ``limit``)."""
        out = Outcomes()
        for doc in await self.store.attempts.latest(webhook_id, limit, since):
            out.attempts += 1
            code = doc["status_code"]
            if isinstance(code, int) and 200 <= code < 300:
                out.succeeded += 1
            if out.last_at is None:  # newest first
                out.last_at, out.last_status_code, out.last_error = doc["started_at"], code, doc["error"]
        out.capped = out.attempts >= limit
        return out

    async def counts_by(self, key: str, query: dict[str, Any]) -> dict[str, int]:
        """Return ``{value of key: count}`` of events matching ``query``."""
        return await self.store.events.group_counts(key, query)
