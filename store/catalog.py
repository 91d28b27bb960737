"""The event-type catalog: ``event_types`` (what admins declared) and ``event_type_days`` (what fan-out saw).

Seen types are kept as one document per (type, UTC day): ``{_id: "<type>|<day>", event_type, day_ms, count, first_ms,
last_ms}``. Dispatchers add their counts in batches (:meth:`CatalogRepo.record_seen`, one ``bulk_write`` of
upserts); nothing is written per change. Declared types are one document each, ``_id`` the type's name, the schema
kept as JSON text (its keys start with ``$``, which a stored document should not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from hookpost.common.errors import NotFoundError
from hookpost.common.models import now_ms, utcnow

DAY_MS = 86_400_000
KEEP_DAYS = 31  # "seen in the last 30 days", and the day that is still running


def day_of(ms: int) -> int:
    """Return the start of the UTC day of ``ms`` (epoch milliseconds)."""
    return ms - ms % DAY_MS


@dataclass
class Seen:
    """How often one type was seen over a time span, and when first and last."""

    count: int
    first_ms: int
    last_ms: int

    def add(self, other: Seen) -> None:
        """Fold ``other``'s counts into this one."""
        self.count += other.count
        self.first_ms = min(self.first_ms, other.first_ms)
        self.last_ms = max(self.last_ms, other.last_ms)


@dataclass(frozen=True)
class DeclaredType:
    """A declared event type as stored."""

    name: str
    title: str
    description: str
    schema: dict[str, Any] | None
    enforce: bool
    deprecated: bool
    created_at: datetime
    updated_at: datetime


def _declared(doc: dict[str, Any]) -> DeclaredType:
    raw = doc.get("schema_json")
    return DeclaredType(name=str(doc["_id"]), title=str(doc.get("title") or ""),
                        description=str(doc.get("description") or ""),
                        schema=json.loads(raw) if raw else None, enforce=bool(doc.get("enforce")),
                        deprecated=bool(doc.get("deprecated")), created_at=doc.get("created_at") or utcnow(),
                        updated_at=doc.get("updated_at") or utcnow())


class CatalogRepo:
    """Declared event types and per-day sightings."""

    def __init__(self, declared: AsyncCollection[dict[str, Any]], days: AsyncCollection[dict[str, Any]]) -> None:
        self.declared = declared
        self.days = days

    async def ensure_indexes(self) -> None:
        """Index the sightings by day and by type."""
        await self.days.create_index([("day_ms", ASCENDING)])
        await self.days.create_index([("event_type", ASCENDING)])

    # --- seen ---------------------------------------------------------------------------------------------------

    async def record_seen(self, counts: dict[tuple[str, int], Seen]) -> None:
        """Add ``counts`` (by type and day start) to the stored sightings: one ``bulk_write`` of upserts."""
        if not counts:
            return
        ops = [UpdateOne({"_id": f"{name}|{day}"},
                         {"$inc": {"count": s.count}, "$min": {"first_ms": s.first_ms},
                          "$max": {"last_ms": s.last_ms}, "$setOnInsert": {"event_type": name, "day_ms": day}},
                         upsert=True)
               for (name, day), s in counts.items()]
        await self.days.bulk_write(ops, ordered=False)

    async def seen_since(self, since_ms: int) -> dict[str, Seen]:
        """Return each type seen on a day starting at or after ``since_ms``, with its count and first and last
        sighting over those days."""
        cursor = await self.days.aggregate([
            {"$match": {"day_ms": {"$gte": day_of(since_ms)}}},
            {"$group": {"_id": "$event_type", "count": {"$sum": "$count"}, "first_ms": {"$min": "$first_ms"},
                        "last_ms": {"$max": "$last_ms"}}}])
        return {str(d["_id"]): Seen(int(d["count"]), int(d["first_ms"]), int(d["last_ms"]))
                async for d in cursor}

    async def prune(self, before_ms: int, batch: int = 1000) -> int:
        """Delete up to ``batch`` sightings of days before ``before_ms``; return how many."""
        ids = [d["_id"] async for d in self.days.find({"day_ms": {"$lt": before_ms}}, {"_id": 1}).limit(batch)]
        if not ids:
            return 0
        res = await self.days.delete_many({"_id": {"$in": ids}})
        return res.deleted_count

    # --- declared -----------------------------------------------------------------------------------------------

    async def declared_all(self, limit: int = 10_000) -> list[DeclaredType]:
        """Return every declared type, by name."""
        docs = await self.declared.find({}).sort("_id", ASCENDING).limit(limit).to_list()
        return [_declared(d) for d in docs]

    async def get(self, name: str) -> DeclaredType | None:
        """Return the declared type ``name``, or None."""
        doc = await self.declared.find_one({"_id": name})
        return _declared(doc) if doc is not None else None

    async def save(self, name: str, *, title: str, description: str, schema: dict[str, Any] | None,
                   enforce: bool, deprecated: bool) -> DeclaredType:
        """Declare ``name`` or replace its declaration; return it."""
        now = utcnow()
        fields = {"title": title, "description": description,
                  "schema_json": json.dumps(schema) if schema is not None else None,
                  "enforce": enforce, "deprecated": deprecated, "updated_at": now, "updated_ms": now_ms()}
        await self.declared.update_one({"_id": name}, {"$set": fields, "$setOnInsert": {"created_at": now}},
                                       upsert=True)
        found = await self.get(name)
        if found is None:  # deleted in between by someone else
            raise NotFoundError(f"no declared event type {name!r}")
        return found

