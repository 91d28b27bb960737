"""The ``attempts`` collection: one document per HTTP attempt, ``_id`` = ``{event_id}.{attempt:03d}``.

The id is derived from the event and the attempt number, so recording the same attempt twice (a replay after a
crash) keeps the first record instead of adding a second one.
"""

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hookpost.common.models import Attempt
from hookpost.store.docs import from_doc, to_doc


def attempt_id(event_id: str, attempt: int) -> str:
    """Return the id of attempt number ``attempt`` of ``event_id``."""
    return f"{event_id}.{attempt:03d}"


class AttemptRepo:
    """Attempt records, read per event, written once each."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

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
        """Return every attempt of ``event_id``, in order."""
        cursor = self.coll.find({"event_id": event_id}).sort("_id", ASCENDING).limit(10000)
        return [from_doc(Attempt, d) async for d in cursor]

    async def recent_outcomes(self, webhook_id: str, limit: int = 100) -> list[int | None]:
        """Return the status codes (None for errors) of the webhook's latest ``limit`` attempts."""
        cursor = self.coll.find({"webhook_id": webhook_id}, {"status_code": 1}).sort("_id", -1).limit(limit)
        return [d.get("status_code") async for d in cursor]

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
