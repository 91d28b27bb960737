"""The store side of ordered webhooks: lanes, the events waiting in them, and the changes folded into events.

Three collections, written only for webhooks with ``ordering=entity`` (other webhooks' deliveries touch none):

- ``lanes``: one document per lane (``_id`` = the lane id, :func:`hookpost.common.lanes.lane_of`) — its ``head``
  (the event in flight, ``""`` for none) and the key of the last event sent (``last_seq``, ``last_tie``,
  ``last_event``). The head is taken with a write guarded on the head it replaces, so two dispatchers never start
  two events of one lane.
- ``lane_queue``: one document per waiting event (``_id`` = the event id), with its lane key and the time it was
  stored; removed when the event starts or ends.
- ``folds``: one document per change folded into another event (coalesce=latest), ``_id`` =
  ``<change id>|<webhook id>`` (unique: a redelivered change never folds twice).

The events themselves stay in ``events``: a waiting event is ``New`` with ``waiting: true`` and no due time.
"""

from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hookpost.common.ids import new_id
from hookpost.common.lanes import LaneKey, webhook_of
from hookpost.common.models import IN_FLIGHT, EventStatus, WebhookEvent, due_fields, now_ms, utcnow
from hookpost.store.docs import from_doc

NO_HEAD = ""
IN_FLIGHT_VALUES = frozenset(s.value for s in IN_FLIGHT)


def queue_doc(event: WebhookEvent, key: LaneKey, stored_ms: int) -> dict[str, Any]:
    """Return the ``lane_queue`` entry of a waiting ``event``."""
    return {"_id": event.id, "lane": event.lane, "webhook_id": event.webhook_id, "type": event.type,
            "rank": key.rank, "seq": key.seq, "tie": key.tie, "stored_ms": stored_ms}


def head_fields(webhook_id: str, event_id: str, key: LaneKey, last: LaneKey | None) -> dict[str, Any]:
    """The fields a lane document gets when ``event_id`` (keyed ``key``) becomes its head: the last sent key becomes
    the larger of ``last`` and ``key``."""
    top = key if last is None or (key.seq, key.tie) > (last.seq, last.tie) else last
    fields: dict[str, Any] = {"head": event_id, "last_seq": top.seq, "last_tie": top.tie, "updated_ms": now_ms(),
                              "webhook_id": webhook_id}
    if top is key:
        fields["last_event"] = event_id
    return fields


def entry_key(doc: dict[str, Any]) -> LaneKey:
    """Return the lane key of a ``lane_queue`` entry."""
    return LaneKey(int(doc["rank"]), int(doc["seq"]), str(doc["tie"]))


class LaneRepo:
    """Lanes, their waiting events and folded changes (see the module docstring)."""

    def __init__(self, lanes: AsyncCollection[dict[str, Any]], queue: AsyncCollection[dict[str, Any]],
                 folds: AsyncCollection[dict[str, Any]], events: AsyncCollection[dict[str, Any]]) -> None:
        self.lanes = lanes
        self.queue = queue
        self.folds = folds
        self.events = events

    async def ensure_indexes(self) -> None:
        """Create the indexes lane queries need."""
        await self.lanes.create_index([("webhook_id", ASCENDING)])
        await self.queue.create_index([("lane", ASCENDING)])
        await self.queue.create_index([("webhook_id", ASCENDING)])
        await self.queue.create_index([("stored_ms", ASCENDING)])
        await self.folds.create_index([("event_id", ASCENDING)])
        await self.folds.create_index([("change_id", ASCENDING)])

    # -- the lane document -------------------------------------------------------------------------------------

    async def take_head(self, lane: str, webhook_id: str, expected: str, event_id: str, key: LaneKey,
                        last: LaneKey | None) -> bool:
        """Make ``event_id`` the head of ``lane`` if its head is still ``expected`` (``""``: none); the last sent key
        becomes the larger of ``last`` and ``key``. Return whether this write took it."""
        fields = head_fields(webhook_id, event_id, key, last)
        try:
            res = await self.lanes.update_one({"_id": lane, "head": expected}, {"$set": fields},
                                              upsert=expected == NO_HEAD)
        except DuplicateKeyError:  # the lane exists with another head: someone else moved it
            return False
        return res.matched_count == 1 or res.upserted_id is not None

    async def get_many(self, lanes: list[str]) -> dict[str, dict[str, Any]]:
        """Return the documents of ``lanes`` that exist, by lane id (one read)."""
        return {d["_id"]: d async for d in self.lanes.find({"_id": {"$in": lanes}})}

    async def take_heads(self, takes: list[tuple[str, str, str, LaneKey, LaneKey | None]]) -> set[str]:
        """Take the heads of several lanes in one bulk write: each ``(lane, expected head, event id, key, last sent
        key)`` as :meth:`take_head`. Return the lanes this call took (each write leaves a token, read back)."""
        if not takes:
            return set()
        if len(takes) == 1:  # one lane: the write's own count says (no read back)
            lane, expected, event_id, key, last = takes[0]
            return {lane} if await self.take_head(lane, webhook_of(lane), expected, event_id, key, last) else set()
        token = new_id("w")
        ops = []
        for lane, expected, event_id, key, last in takes:
            fields = {**head_fields(webhook_of(lane), event_id, key, last), "writer": token}
            ops.append(UpdateOne({"_id": lane, "head": expected}, {"$set": fields}, upsert=expected == NO_HEAD))
        try:
            await self.lanes.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:  # a lane created meanwhile by another process: not taken here
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
        lanes = [t[0] for t in takes]
        return {d["_id"] async for d in self.lanes.find({"_id": {"$in": lanes}}, {"writer": 1})
                if d.get("writer") == token}

    async def drop_lanes(self, webhook_id: str) -> None:
        """Forget the lanes of ``webhook_id`` (its ordering was turned off, or it was deleted)."""
        await self.lanes.delete_many({"webhook_id": webhook_id})

    # -- waiting events ----------------------------------------------------------------------------------------

    async def enqueue(self, entries: list[dict[str, Any]]) -> None:
        """Add waiting events to their lanes (an entry already there is left as it is)."""
        if not entries:
            return
        try:
            await self.queue.insert_many(entries, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def dequeue(self, event_ids: list[str]) -> None:
        """Remove events from their lanes' queues."""
        if event_ids:
            await self.queue.delete_many({"_id": {"$in": event_ids}})

    async def newest_waiting(self, lane: str) -> dict[str, Any] | None:
        """Return the highest-key waiting entry of ``lane`` (the tail), or None."""
        return await self.queue.find_one({"lane": lane},
                                         sort=[("rank", DESCENDING), ("seq", DESCENDING), ("tie", DESCENDING)])

    async def stale_lanes(self, stored_before_ms: int, limit: int, *, after_ms: int = -1) -> tuple[list[str], int]:
        """Return up to ``limit`` lanes with an entry waiting since before ``stored_before_ms`` and after
        ``after_ms``, oldest entries first, and the ``stored_ms`` to go on after (-1: none left, start over)."""
        cursor = self.queue.find({"stored_ms": {"$gt": after_ms, "$lt": stored_before_ms}},
                                 {"lane": 1, "stored_ms": 1}).sort("stored_ms", ASCENDING).limit(limit * 10)
        lanes: dict[str, None] = {}
        last = -1
        async for doc in cursor:
            lanes.setdefault(doc["lane"])
            last = int(doc["stored_ms"])
            if len(lanes) >= limit:
                return list(lanes), last
        return list(lanes), -1

    async def waiting_of(self, *, lane: str | None = None, webhook_id: str | None = None,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """Return up to ``limit`` waiting entries of one lane or of one webhook."""
        query = {"lane": lane} if lane is not None else {"webhook_id": webhook_id}
        return await self.queue.find(query).limit(limit).to_list()

    async def waiting_in(self, lanes: list[str], limit: int = 10_000) -> list[dict[str, Any]]:
        """Return the waiting entries of ``lanes`` (one read; up to ``limit``)."""
        return await self.queue.find({"lane": {"$in": lanes}}).limit(limit).to_list()

    async def waiting_ids(self, event_ids: list[str]) -> set[str]:
        """Return which of ``event_ids`` wait in a lane."""
        if not event_ids:
            return set()
        return {d["_id"] async for d in self.queue.find({"_id": {"$in": event_ids}}, {"_id": 1})}

    async def heads(self, lanes: list[str]) -> dict[str, str]:
        """Return ``{lane: head event id}`` for the lanes that have a head."""
        if not lanes:
            return {}
        return {d["_id"]: d["head"] async for d in self.lanes.find({"_id": {"$in": lanes}}, {"head": 1})
                if d.get("head")}

    # -- the events of a lane ----------------------------------------------------------------------------------

    async def event(self, event_id: str) -> WebhookEvent | None:
        """Return the event ``event_id``, or None if it is gone (deleted by the janitor)."""
        doc = await self.events.find_one({"_id": event_id})
        return None if doc is None else from_doc(WebhookEvent, doc)

    async def events_by_id(self, event_ids: list[str]) -> dict[str, WebhookEvent]:
        """Return the events of ``event_ids`` that exist (one read)."""
        if not event_ids:
            return {}
        return {d["_id"]: from_doc(WebhookEvent, d) async for d in self.events.find({"_id": {"$in": event_ids}})}

    async def heads_for(self, asks: list[tuple[str, int]]) -> list[bool]:
        """:meth:`is_head_for` of several ``(event id, attempt)`` in one read."""
        ids = list({e for e, _ in asks})
        docs = {d["_id"]: d async for d in self.events.find({"_id": {"$in": ids}},
                                                            {"status": 1, "attempt_count": 1, "waiting": 1})}
        return [_waits(docs.get(e), attempt) for e, attempt in asks]

    async def start_many(self, event_ids: list[str], due_ms: int) -> list[WebhookEvent]:
        """:meth:`start` several waiting events in one bulk write; return those this call started (read back by
        the token each write leaves)."""
        if not event_ids:
            return []
        if len(event_ids) == 1:
            one = await self.start(event_ids[0], due_ms)
            return [one] if one is not None else []
        token = new_id("w")
        await self.events.bulk_write([
            UpdateOne({"_id": e, "status": EventStatus.NEW.value, "waiting": True},
                      {"$set": {"waiting": False, "updated_at": utcnow(), "updated_ms": now_ms(), "writer": token,
                                **due_fields(due_ms)}}) for e in event_ids], ordered=False)
        return [from_doc(WebhookEvent, d) async for d in self.events.find({"_id": {"$in": event_ids}})
                if d.get("writer") == token]

    async def supersede_many(self, pairs: list[tuple[str, str]]) -> int:
        """:meth:`supersede` several ``(event id, by)`` in one bulk write; return how many were ended."""
        if not pairs:
            return 0
        now = utcnow()
        res = await self.events.bulk_write([
            UpdateOne({"_id": e, "status": EventStatus.NEW.value, "waiting": True},
                      {"$set": {"status": EventStatus.FINISHED.value, "waiting": False, "superseded_by": by,
                                "last_error": None, "finished_at": now, "updated_at": now, "updated_ms": now_ms(),
                                **due_fields(None)}}) for e, by in pairs], ordered=False)
        return res.modified_count

    async def start(self, event_id: str, due_ms: int) -> WebhookEvent | None:
        """Start a waiting event (it becomes its lane's head, due at ``due_ms``); return it, or None if it is no
        longer a waiting ``New`` event."""
        res = await self.events.update_one(
            {"_id": event_id, "status": EventStatus.NEW.value, "waiting": True},
            {"$set": {"waiting": False, "updated_at": utcnow(), "updated_ms": now_ms(), **due_fields(due_ms)}})
        if res.matched_count != 1:
            return None
        return await self.event(event_id)

    async def fail_waiting(self, event_ids: list[str], reason: str) -> int:
        """End waiting events ``Failed`` with ``reason`` (their webhook is disabled or deleted); return how many."""
        if not event_ids:
            return 0
        now = utcnow()
        res = await self.events.bulk_write([
            UpdateOne({"_id": e, "status": EventStatus.NEW.value, "waiting": True},
                      {"$set": {"status": EventStatus.FAILED.value, "waiting": False, "last_error": reason,
                                "error_kind": "other", "finished_at": now, "updated_at": now,
                                "updated_ms": now_ms(), **due_fields(None)}}) for e in event_ids], ordered=False)
        return res.modified_count

    async def release(self, event_ids: list[str], due_ms: int) -> list[WebhookEvent]:
        """Take waiting events out of their lanes (ordering turned off): each becomes an ordinary ``New`` event due
        at ``due_ms``; return those released."""
        out = []
        for event_id in event_ids:
            res = await self.events.update_one(
                {"_id": event_id, "status": EventStatus.NEW.value, "waiting": True},
                {"$set": {"waiting": False, "lane": None, "updated_at": utcnow(), "updated_ms": now_ms(),
                          **due_fields(due_ms)}})
            if res.matched_count == 1 and (ev := await self.event(event_id)) is not None:
                out.append(ev)
        return out

    async def rejoin(self, event: WebhookEvent, key: LaneKey, *, stored_ms: int) -> bool:
        """Put a restarted event back into its lane, at the tail (``key.rank`` is the restart time): ``New``,
        waiting, no due time, queued as stored at ``stored_ms``. Guarded on its status and count; return False
        if it changed meanwhile."""
        now = utcnow()
        res = await self.events.update_one(
            {"_id": event.id, "status": event.status.value, "attempt_count": event.attempt_count},
            {"$set": {"status": EventStatus.NEW.value, "budget_start": event.attempt_count, "waiting": True,
                      "superseded_by": None, "finished_at": None, "updated_at": now, "updated_ms": now_ms(),
                      **due_fields(None)}})
        if res.matched_count != 1:
            return False
        entry = queue_doc(event, key, stored_ms)
        del entry["_id"]
        await self.queue.update_one({"_id": event.id}, {"$set": entry}, upsert=True)
        return True

    async def in_use(self) -> bool:
        """Tell whether any webhook ever waited in a lane or folded a change (the janitor then cleans up here)."""
        return (await self.queue.estimated_document_count() > 0
                or await self.folds.estimated_document_count() > 0)

    async def forget(self, event_ids: list[str]) -> None:
        """Delete the queue entries of, and the changes folded into, deleted events."""
        if event_ids:
            await self.queue.delete_many({"_id": {"$in": event_ids}})
            await self.folds.delete_many({"event_id": {"$in": event_ids}})

    # -- folded changes ----------------------------------------------------------------------------------------

    async def record_fold(self, change_id: str, webhook_id: str, event_id: str, occurred_ms: int) -> bool:
        """Record that ``change_id`` folded into ``event_id``; False if it was recorded before (a redelivery)."""
        try:
            await self.folds.insert_one({"_id": f"{change_id}|{webhook_id}", "change_id": change_id,
                                         "webhook_id": webhook_id, "event_id": event_id,
                                         "occurred_ms": occurred_ms, "at_ms": now_ms()})
        except DuplicateKeyError:
            return False
        return True

    async def refold(self, change_id: str, webhook_id: str, event_id: str) -> None:
        """Point the fold record of ``change_id`` at ``event_id`` (its own event, when folding lost a race)."""
        await self.folds.update_one({"_id": f"{change_id}|{webhook_id}"}, {"$set": {"event_id": event_id}})

    async def fold(self, event_id: str, seen: int, changes: dict[str, Any]) -> bool:
        """Fold one more change into the waiting event ``event_id`` whose ``coalesced`` count was read as ``seen``:
        the count goes up by one and ``changes`` are set. Return False if the event started or moved meanwhile."""
        res = await self.events.update_one(
            {"_id": event_id, "status": EventStatus.NEW.value, "waiting": True, "coalesced": seen},
            {"$set": {"coalesced": seen + 1, "updated_ms": now_ms(), **changes}})
        return res.matched_count == 1

    async def folded_into(self, event_id: str, limit: int = 100) -> list[str]:
        """Return the ids of the newest ``limit`` changes folded into ``event_id``."""
        cursor = self.folds.find({"event_id": event_id}, {"change_id": 1}).sort("at_ms", DESCENDING).limit(limit)
        return [d["change_id"] async for d in cursor]

    async def folded_change(self, change_id: str) -> list[str]:
        """Return the events the change ``change_id`` folded into (one per webhook)."""
        return [d["event_id"] async for d in self.folds.find({"change_id": change_id}, {"event_id": 1}).limit(100)]


def _waits(doc: dict[str, Any] | None, attempt: int) -> bool:
    """Whether a stored event (status, count and waiting flag read) is a started in-flight event waiting for
    ``attempt``."""
    return (doc is not None and doc.get("status") in IN_FLIGHT_VALUES and not doc.get("waiting")
            and doc.get("attempt_count") == attempt - 1)
