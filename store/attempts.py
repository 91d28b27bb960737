"""The attempt history of each event: attempt 1 in the event's own document, every later one in ``attempts``.

Most events are delivered by their first attempt, so that one is written with the event's update
(:meth:`~hookpost.store.events.EventRepo.record_attempts`, field ``first_attempt``): recording an attempt that
delivers at once costs one write, not two. Attempt 2 and later are documents of the ``attempts`` collection, ``_id`` =
``{event_id}.{attempt:03d}``, derived from the event and the attempt number, so recording the same attempt twice
(a replay after a crash) keeps the first record instead of adding a second one. Events recorded by earlier versions
have attempt 1 in the collection; :meth:`AttemptRepo.for_event` reads both.
"""

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hookpost.common.models import Attempt, as_utc
from hookpost.store.docs import from_doc, to_doc
from hookpost.store.events import indexable


def _as_datetime(value: object) -> datetime | None:
    """A stored time as a datetime: a date, or the ISO text some stores give back for a date written by ``$set``."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def kept_in_event(attempt: Attempt) -> bool:
    """Tell whether ``attempt`` is recorded in its event's document (the first) rather than in ``attempts``."""
    return attempt.attempt == 1


def first_attempt_field(attempt: Attempt | None) -> dict[str, Any]:
    """The event field that keeps ``attempt`` if it is the event's first, for its update; else empty."""
    return {"first_attempt": attempt.model_dump()} if attempt is not None and kept_in_event(attempt) else {}


class AttemptRepo:
    """Attempt records, read per event, written once each (the first one with its event: see the module
    docstring)."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]], events: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll
        self.events = events

    async def ensure_indexes(self) -> None:
        """Index the event id (history of one event, and the janitor's deletes)."""
        await self.coll.create_index([("event_id", ASCENDING)])
        await self.coll.create_index([("webhook_id", ASCENDING)])

    async def insert(self, attempts: list[Attempt]) -> None:
        """Store attempt records in one round trip; records that already exist are kept as they are."""
        if not attempts:
            return
        docs = [to_doc(a) for a in attempts]
        try:
            if len(docs) == 1:
                await self.coll.insert_one(docs[0])
            else:
                await self.coll.insert_many(docs, ordered=False)
        except DuplicateKeyError:
            pass
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def for_event(self, event_id: str) -> list[Attempt]:
        """Return every attempt of ``event_id``, in order: the first from the event's document, the rest from the
        collection."""
        event = await self.events.find_one({"_id": event_id}, {"first_attempt": 1})
        first = (event or {}).get("first_attempt")
        cursor = self.coll.find({"event_id": event_id}).sort("_id", ASCENDING).limit(10000)
        rest = [from_doc(Attempt, d) async for d in cursor]
        if first is None:
            return rest
        return [Attempt.model_validate(first), *(a for a in rest if a.attempt != 1)]

    async def latest(self, webhook_id: str, limit: int = 100, since: datetime | None = None) -> list[dict[str, Any]]:
        """Return the ``status_code``, ``error`` and ``started_at`` of the webhook's newest ``limit`` attempts
        (started at ``since`` or later), newest first: the first attempts of its newest ``limit`` events (created
        since ``since``; an index range of at most ``limit`` documents, also when its newest events wait unsent)
        with its latest later attempts."""
        fields = ("started_at", "status_code", "error")
        query: dict[str, Any] = {"webhook_id": webhook_id}
        if since is not None:
            query["created_ms"] = {"$gte": round(since.timestamp() * 1000)}
        firsts = self.events.find(indexable(query), {"first_attempt": 1}).sort("created_ms", DESCENDING)
        made = [{k: a.get(k) for k in fields} async for d in firsts.limit(limit) if (a := d.get("first_attempt"))]
        later: dict[str, Any] = {"webhook_id": webhook_id}
        if since is not None:
            later["started_at"] = {"$gte": since}
        cursor = self.coll.find(later, dict.fromkeys(fields, 1)).sort("_id", DESCENDING).limit(limit)
        made += [{k: d.get(k) for k in fields} async for d in cursor]
        made = [{**m, "started_at": as_utc(at)} for m in made if (at := _as_datetime(m["started_at"])) is not None]
        made = [m for m in made if since is None or m["started_at"] >= as_utc(since)]
        made.sort(key=lambda m: m["started_at"], reverse=True)
        return made[:limit]

    async def recent_outcomes(self, webhook_id: str, limit: int = 100) -> list[int | None]:
        """Return the status codes (None for errors) of the webhook's latest ``limit`` attempts (see
        :meth:`latest`)."""
        return [m["status_code"] for m in await self.latest(webhook_id, limit)]

    async def delete_ids(self, ids: list[str]) -> int:
        """Delete attempts by id (ids that do not exist are fine); return how many were deleted."""
        if not ids:
            return 0
        res = await self.coll.delete_many({"_id": {"$in": ids}})
        return res.deleted_count

    async def delete_for_events(self, event_ids: list[str]) -> int:
        """Delete the attempts of ``event_ids``; return how many (filters on ``event_id``: on the stand-in this scans
        every attempt; the janitor deletes by id with :meth:`delete_ids`)."""
        if not event_ids:
            return 0
        res = await self.coll.delete_many({"event_id": {"$in": event_ids}})
        return res.deleted_count
