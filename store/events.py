"""The ``events`` collection: webhook events, their status moves, and the operator's queries.

Writes on the delivery path filter on ``_id`` (plus a guard field), which the local stand-in and MongoDB both
serve from the primary index. Lists are ordered by ``(created_ms, _id)`` and time ranges and paging cursors are
``created_ms`` ranges (an indexed integer): on the stand-in any range on ``_id`` scans the whole collection
(measured 1.1 s at 100,000 events, against 3–80 ms for the same query on ``created_ms``).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hookpost.common.errors import NotFoundError
from hookpost.common.ids import id_time_ms, new_id
from hookpost.common.models import IN_FLIGHT, EventStatus, WebhookEvent, due_fields, now_ms, utcnow
from hookpost.store.docs import from_doc, to_doc

FIELDS_SEARCHED = ("_id", "change_id", "entity.id", "type", "last_error")


def type_pattern_regex(pattern: str) -> str:
    """Return the anchored ``$regex`` string for an event-type pattern (``article.*``)."""
    parts = [r"[^.]+(\.[^.]+)*" if p == "*" else re.escape(p) for p in pattern.split(".")]
    return "^" + r"\.".join(parts) + "$"


@dataclass
class EventFilter:
    """The operator's filters over webhook events; every field is optional and they combine with AND."""

    statuses: Sequence[EventStatus] = ()
    event_type: str | None = None
    webhook_id: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    before: str | None = None
    ids: Sequence[str] = field(default_factory=tuple)

    def query(self) -> dict[str, Any]:
        """Return the MongoDB filter document."""
        q: dict[str, Any] = {}
        if self.ids:
            q["_id"] = {"$in": list(self.ids)}
        if self.statuses:
            q["status"] = {"$in": [s.value for s in self.statuses]}
        if self.event_type:
            q["type"] = ({"$regex": type_pattern_regex(self.event_type)} if "*" in self.event_type
                         else self.event_type)
        if self.webhook_id:
            q["webhook_id"] = self.webhook_id
        if self.entity_id:
            q["entity.id"] = self.entity_id
        created: dict[str, int] = {}
        if self.since:
            created["$gte"] = int(self.since.timestamp() * 1000)
        if self.until:
            created["$lt"] = int(self.until.timestamp() * 1000)
        before_ms = id_time_ms(self.before) if self.before else None
        if before_ms is not None:
            # events of the cursor's millisecond with a larger id are dropped by EventRepo.find
            created["$lte"] = before_ms
            if "$lt" in created and created["$lt"] <= before_ms:
                del created["$lte"]
        if created:
            q["created_ms"] = created
        if self.search:
            rx = {"$regex": re.escape(self.search), "$options": "i"}
            q["$or"] = [{f: rx} for f in FIELDS_SEARCHED]
        return q


class EventRepo:
    """Webhook event documents, keyed by ``evt_`` ids."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        """Create the unique (change, webhook) index and single-field indexes for every filter."""
        await self.coll.create_index([("change_id", ASCENDING), ("webhook_id", ASCENDING)], unique=True,
                                     name="change_webhook_unique")
        for name in ("status", "webhook_id", "type", "entity.id", "change_id", "next_attempt_ms", "updated_ms",
                     "created_ms", "held"):
            await self.coll.create_index([(name, ASCENDING)])

    async def insert_new(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        """Insert fanned-out events in one round trip; return those that were new.

        An event whose (change id, webhook id) already exists is skipped: a replayed change makes no second event.
        """
        if not events:
            return []
        try:
            await self.coll.insert_many([to_doc(e) for e in events], ordered=False)
            return events
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            dup = {e["index"] for e in errors}
        except DuplicateKeyError:
            dup = set(range(len(events)))
        # a duplicate that carries one of *our* ids was inserted by an earlier try of this same call whose reply
        # was lost (the store guard retried it): it is new, and its delivery still has to be published
        mine = [events[i].id for i in dup]
        ours = {d["_id"] async for d in self.coll.find({"_id": {"$in": mine}}, {"_id": 1})}
        return [e for i, e in enumerate(events) if i not in dup or e.id in ours]

    async def insert_flags(self, events: list[WebhookEvent]) -> list[bool]:
        """Like :meth:`insert_new`, but return per event whether it was new (for batched fan-out)."""
        created = {e.id for e in await self.insert_new(events)}
        return [e.id in created for e in events]

    async def get(self, event_id: str) -> WebhookEvent:
        """Return the event ``event_id``; raise :class:`NotFoundError` if there is none."""
        doc = await self.coll.find_one({"_id": event_id})
        if doc is None:
            raise NotFoundError(f"no event {event_id!r}")
        return from_doc(WebhookEvent, doc)

    async def find_for_change(self, change_id: str) -> list[WebhookEvent]:
        """Return the events fanned out from change ``change_id``."""
        cursor = self.coll.find({"change_id": change_id}).limit(10000)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def find(self, flt: EventFilter, *, limit: int = 50, newest_first: bool = True) -> list[WebhookEvent]:
        """Return up to ``limit`` events matching ``flt``, newest first (page on with ``before=<last id>``)."""
        direction = DESCENDING if newest_first else ASCENDING
        query = flt.query()
        extra = 64 if flt.before else 0
        while True:
            docs = await self.coll.find(query).sort([("created_ms", direction), ("_id", direction)]).limit(
                limit + extra).to_list()
            kept = [d for d in docs if not flt.before or d["_id"] < flt.before]
            if len(kept) >= limit or len(docs) < limit + extra:
                return [from_doc(WebhookEvent, d) for d in kept[:limit]]
            extra *= 4  # many events share the cursor's millisecond: look further

    async def find_ids(self, query: dict[str, Any], *, limit: int) -> list[str]:
        """Return up to ``limit`` ids matching a raw filter, oldest first."""
        cursor = self.coll.find(query, {"_id": 1}).sort("_id", ASCENDING).limit(limit)
        return [d["_id"] async for d in cursor]

    async def count(self, query: dict[str, Any]) -> int:
        """Count events matching ``query`` (an aggregation: ``count_documents`` is too slow on the stand-in)."""
        res = await (await self.coll.aggregate([{"$match": query}, {"$count": "n"}])).to_list()
        return int(res[0]["n"]) if res else 0

    async def group_counts(self, key: str, query: dict[str, Any]) -> dict[str, int]:
        """Return ``{value of key: count}`` over events matching ``query``."""
        pipeline = [{"$match": query}, {"$group": {"_id": f"${key}", "n": {"$sum": 1}}}]
        res = await (await self.coll.aggregate(pipeline)).to_list()
        return {str(r["_id"]): int(r["n"]) for r in res if r["n"]}

    async def record_attempts(self, updates: list[tuple[str, int, dict[str, Any]]],
                              tokens: list[str] | None = None) -> list[bool]:
        """Write the outcomes of attempts in one bulk write; return per update whether it applied.

        Each ``(event_id, attempt, changes)`` sets ``attempt_count`` to ``attempt`` and applies ``changes``,
        guarded on the previous count and an in-flight status, so a duplicate delivery of the same attempt
        records nothing.

        A bulk result only counts matches, so each update also writes a unique ``writer`` token; only when fewer
        updates matched than were sent (duplicates) are the tokens read back to tell which ones applied.
        """
        now, ms = utcnow(), now_ms()
        tokens = tokens or [new_id("w") for _ in updates]
        in_flight = [s.value for s in IN_FLIGHT]
        ops = [UpdateOne({"_id": event_id, "attempt_count": attempt - 1, "status": {"$in": in_flight}},
                         {"$set": {"attempt_count": attempt, "updated_at": now, "updated_ms": ms, **changes,
                                   "writer": token}})
               for (event_id, attempt, changes), token in zip(updates, tokens, strict=True)]
        res = await self.coll.bulk_write(ops, ordered=False)
        if res.matched_count == len(ops):
            return [True] * len(ops)
        ids = list({u[0] for u in updates})
        writers = {d["_id"]: d.get("writer") async for d in self.coll.find({"_id": {"$in": ids}}, {"writer": 1})}
        return [writers.get(u[0]) == token for u, token in zip(updates, tokens, strict=True)]

    async def restart(self, event: WebhookEvent, *, at_ms: int | None = None) -> bool:
        """Move ``event`` (Failed, or Finished when forced) back to New with a fresh attempt budget.

        Guarded on its current status and count; return False if it changed meanwhile.
        """
        now = utcnow()
        ms = at_ms if at_ms is not None else now_ms()
        res = await self.coll.update_one(
            {"_id": event.id, "status": event.status.value, "attempt_count": event.attempt_count},
            {"$set": {"status": EventStatus.NEW.value, "budget_start": event.attempt_count, "updated_at": now,
                      "updated_ms": ms, "finished_at": None, **due_fields(ms)}})
        return res.matched_count == 1

    async def postpone(self, event_id: str, attempt: int, until_ms: int) -> bool:
        """Move the due time of attempt ``attempt`` (a deferred delivery) later, to ``until_ms``, if the event is
        still waiting for that attempt and not due later already; return whether it moved."""
        res = await self.coll.update_one(
            {"_id": event_id, "attempt_count": attempt - 1, "status": {"$in": [s.value for s in IN_FLIGHT]},
             "next_attempt_ms": {"$lt": until_ms}},  # never earlier: a reconciler's claim may already be later
            {"$set": due_fields(until_ms)})
        return res.matched_count == 1

    async def hold(self, items: list[tuple[str, int, str, int]]) -> None:
        """Hold deliveries behind an open breaker, in one bulk write: each ``(event_id, attempt, endpoint,
        due_ms)`` marks the event, still waiting for ``attempt``, as held by ``endpoint`` and due at ``due_ms`` (the
        breaker's next probe). A held event has no message in any queue; the reconciler leaves it alone."""
        if not items:
            return
        in_flight = [s.value for s in IN_FLIGHT]
        await self.coll.bulk_write([
            UpdateOne({"_id": event_id, "attempt_count": attempt - 1, "status": {"$in": in_flight}},
                      {"$set": {"held": endpoint, **due_fields(due_ms)}})
            for event_id, attempt, endpoint, due_ms in items], ordered=False)

    async def held_by(self, endpoint: str, limit: int) -> list[WebhookEvent]:
        """Return up to ``limit`` events held by ``endpoint``'s breaker, held longest first (so probes rotate
        through the held events)."""
        cursor = self.coll.find({"held": endpoint}).sort("next_attempt_ms", ASCENDING).limit(limit)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def unhold(self, event_ids: list[str], endpoint: str, due_ms: int) -> None:
        """Release held events (their deliveries are about to be published), due at ``due_ms``."""
        if event_ids:
            await self.coll.update_many({"_id": {"$in": event_ids}, "held": endpoint},
                                        {"$set": {"held": None, **due_fields(due_ms)}})

    async def oldest_retrying_age(self) -> float | None:
        """Return the age in seconds of the oldest ``Retrying`` event, or None if there is none."""
        doc = await self.coll.find_one({"status": EventStatus.RETRYING.value}, {"created_ms": 1},
                                       sort=[("created_ms", ASCENDING)])
        return None if doc is None else max(0.0, (now_ms() - int(doc["created_ms"])) / 1000)

    async def overdue(self, before_ms: int, limit: int) -> list[WebhookEvent]:
        """Return in-flight events whose next attempt was due before ``before_ms`` (the reconciler's work)."""
        cursor = self.coll.find({"next_attempt_ms": {"$lt": before_ms}, "held": None,
                                 "status": {"$in": [s.value for s in IN_FLIGHT]}}).sort(
            "next_attempt_ms", ASCENDING).limit(limit)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def claim_overdue(self, event: WebhookEvent, until_ms: int) -> bool:
        """Push an overdue event's next attempt to ``until_ms`` if nobody touched it meanwhile."""
        res = await self.coll.update_one(
            {"_id": event.id, "attempt_count": event.attempt_count, "next_attempt_ms": event.next_attempt_ms},
            {"$set": due_fields(until_ms)})
        return res.matched_count == 1

    async def delete_only(self, event_ids: list[str]) -> int:
        """Delete events by id (not their attempts: see :func:`store.cleanup.cleanup`); return how many."""
        if not event_ids:
            return 0
        res = await self.coll.delete_many({"_id": {"$in": event_ids}})
        return res.deleted_count
