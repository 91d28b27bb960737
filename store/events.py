"""The ``events`` collection: webhook events, their status moves, and the operator's queries.

Search (``--search``) is a set of indexed single-field conditions, one per kind of term, each run as its own query
and merged here (see :func:`search_conditions`): an ``$or`` or an unanchored ``$regex`` scans the whole collection on
the local stand-in. Every filter field has a compound ``(field, created_ms)`` index, so an equality plus the
newest-first order is served from one index on MongoDB and on the stand-in alike.

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

from bson import encode
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from hookpost.common.errors import NotFoundError, StoreRefusedError
from hookpost.common.ids import id_time_ms, new_id
from hookpost.common.models import IN_FLIGHT, EventStatus, WebhookEvent, due_fields, now_ms, utcnow
from hookpost.store.docs import from_doc, grouped, one_of, to_doc

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's limit on one document (``maxBsonObjectSize``). The local stand-in reports it too but stores larger
documents, so the limit is checked here rather than left to the store."""
EVENT_ROOM = 64 * 1024
"""Room a new event document keeps under :data:`MAX_DOCUMENT_BYTES` for the fields its attempts set later."""

FIELDS_SEARCHED = ("_id", "change_id", "entity.id", "type", "last_status_code", "error_kind")
FILTER_FIELDS = ("status", "webhook_id", "type", "entity.id", "change_id", "last_status_code", "error_kind")

# every index but the unique (change, webhook) one: an equality on a filter field plus the newest-first order
# (MongoDB and the stand-in alike), the janitor's age query, the list without filter, and the held / overdue queries
EVENT_INDEXES: tuple[tuple[tuple[str, int], ...], ...] = (
    *(((name, ASCENDING), ("created_ms", ASCENDING)) for name in FILTER_FIELDS if name != "change_id"),
    (("status", ASCENDING), ("updated_ms", ASCENDING)),
    (("created_ms", ASCENDING),),
    (("held", ASCENDING), ("next_attempt_ms", ASCENDING)),
)
# the fields of indexes earlier versions created whose queries one of the above now serves (dropped on start-up)
RETIRED_INDEXES = frozenset({
    *((name,) for name in ("status", "webhook_id", "type", "entity.id", "change_id", "next_attempt_ms", "updated_ms",
                           "last_status_code", "error_kind", "held")),
    ("change_id", "created_ms"),
})

# what ``error_kind`` holds: the first kind whose words appear in the error text (lower-cased)
ERROR_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timeout", "timed out")),
    ("refused", ("refused",)),
    ("dns", ("dnserror", "name or service not known", "nodename nor servname", "name resolution")),
    ("tls", ("tlserror", "sslerror", "[ssl", "certificate")),
    ("redirect", ("redirect",)),
    ("gone", ("410 gone",)),
    ("disconnected", ("disconnected", "reset by peer")),
    ("connect", ("connecterror", "cannot connect")),
    ("http", ("http",)),
)
ERROR_KIND_NAMES = tuple(k for k, _ in ERROR_KINDS)
_STATUS_CODE = re.compile(r"^[1-5][0-9][0-9]$")
_ULID = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def error_kind(error: str | None) -> str | None:
    """Classify an error text into one searchable word (``timeout``, ``refused``, ``http``…), or None.

    >>> error_kind("Timeout: no complete response within 15s"), error_kind("gave up after 10 attempts: HTTP 503")
    ('timeout', 'http')
    """
    if not error:
        return None
    text = error.lower()
    for kind, words in ERROR_KINDS:
        if any(w in text for w in words):
            return kind
    return "other"


def _successor(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix`` (a non-empty prefix)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _prefix_range(prefix: str) -> dict[str, str]:
    return {"$gte": prefix, "$lt": _successor(prefix)}


def _ulid_ms(symbols: str) -> int:
    value = 0
    for ch in symbols:
        value = value * 32 + _ULID.index(ch)
    return value


def _event_id_conditions(term: str, prefix: bool) -> list[dict[str, Any]]:
    """Conditions for an event id or id prefix (``evt_01J9Z…``), served by ``_id`` equality or ``created_ms``
    (an event id's first ten symbols are its creation millisecond; ranges on ``_id`` scan on the stand-in)."""
    kind, _, body = term.partition("_")
    body = body.upper()
    if any(ch not in _ULID for ch in body) or len(body) > 26:
        return []
    ident = f"{kind}_{body}"
    if not prefix:
        return [{"_id": ident}] if len(body) == 26 else []
    if not body:
        return []
    if len(body) <= 10:  # exactly the events created in that span of milliseconds
        return [{"created_ms": {"$gte": _ulid_ms(body.ljust(10, "0")), "$lte": _ulid_ms(body.ljust(10, "Z"))}}]
    return [{"created_ms": _ulid_ms(body[:10]), "_id": {"$regex": "^" + re.escape(ident)}}]


def search_conditions(text: str) -> list[dict[str, Any]]:
    """Return the single-field conditions a search term means; an event matches the search if it matches any.

    One term, no spaces. ``X`` matches exactly, ``X*`` by prefix:

    - the event id (``evt_…``, any case), the change id, the entity id (as stored, case-sensitive);
    - the event type (``order.created``; ``order.*`` is the prefix ``order.``);
    - a status code (three digits: the event's last HTTP status, ``503``);
    - an error kind, one of :data:`ERROR_KIND_NAMES` (any case: ``timeout``, ``refused``…), the kind of the
      event's last error.

    >>> search_conditions("503")[-1]
    {'last_status_code': 503}
    """
    term = text.strip()
    prefix = term.endswith("*")
    if prefix:
        term = term.rstrip("*")
    if not term:
        return []
    conds: list[dict[str, Any]] = []
    if term.lower().startswith("evt_"):
        conds += _event_id_conditions(term, prefix)
    value: Any = _prefix_range(term) if prefix else term
    conds += [{"change_id": value}, {"entity.id": value}, {"type": value}]
    if not prefix and _STATUS_CODE.match(term):
        conds.append({"last_status_code": int(term)})
    if not prefix and term.lower() in ERROR_KIND_NAMES:
        conds.append({"error_kind": term.lower()})
    return conds


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

    def _common(self, steer: bool = False) -> dict[str, Any]:
        """The conditions other than status and search; with ``steer`` the equalities are written as one-value
        ``$in`` (the same meaning), which the stand-in does not serve from an index, so it uses the search
        field's index rather than, say, the webhook's (its planner has no statistics to choose by)."""
        q: dict[str, Any] = {}
        if self.ids:
            q["_id"] = {"$in": list(self.ids)}
        if self.event_type:
            if "*" in self.event_type:
                q["type"] = {"$regex": type_pattern_regex(self.event_type)}
            else:
                q["type"] = {"$in": [self.event_type]} if steer else self.event_type
        if self.webhook_id:
            q["webhook_id"] = {"$in": [self.webhook_id]} if steer else self.webhook_id
        if self.entity_id:
            q["entity.id"] = {"$in": [self.entity_id]} if steer else self.entity_id
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
        return q

    def query(self) -> dict[str, Any]:
        """Return the filter as one MongoDB filter document (for counts; lists use :meth:`branches`).

        Beside a search, the statuses are :func:`~hookpost.store.docs.one_of` rather than an ``$in`` (a restart
        dry run of a search within a status took seconds at 50,000 events on the stand-in, ``docs/benchmarks.md``,
        "restart-counts"); without a search the ``$in`` is faster there.
        """
        q = self._common()
        statuses = [s.value for s in self.statuses]
        if self.search is None:
            if statuses:
                q["status"] = {"$in": statuses}
            return q
        q["$or"] = search_conditions(self.search) or [{"_id": {"$in": []}}]
        if statuses:
            q["$and"] = [one_of("status", statuses)]
        return q

    def branches(self) -> list[tuple[dict[str, Any], str | None]]:
        """Return the filter as queries of equalities and ranges only, one per status and search condition;
        an event matches the filter if it matches any (they are run apart and merged: an ``$or`` or an ``$in``
        of several values is served by no index on the stand-in).

        Each comes with an event-id prefix to check on the results, or None: a prefix that reaches into an id's
        random part is queried as its millisecond (``created_ms``), since a ``$regex`` or a range on ``_id``
        scans the whole collection on the stand-in. A search condition that contradicts another filter (the
        entity ``A-1`` searched within ``--entity A-2``) makes no query.
        """
        searched: list[dict[str, Any] | None] = [None]
        if self.search is not None:
            searched = list(search_conditions(self.search))
        statuses: list[str | None] = [s.value for s in dict.fromkeys(self.statuses)] or [None]
        out: list[tuple[dict[str, Any], str | None]] = []
        for cond in searched:
            for status in statuses:
                q: dict[str, Any] | None = self._common(steer=cond is not None)
                assert q is not None
                if status is not None:
                    q["status"] = {"$in": [status]} if cond is not None else status
                id_prefix = None
                if cond is not None:
                    cond = dict(cond)
                    rx = cond.get("_id")
                    if isinstance(rx, dict) and "$regex" in rx and "created_ms" in cond:
                        del cond["_id"]
                        id_prefix = rx["$regex"][1:].replace("\\", "")
                    for key, value in cond.items():
                        q = _merge(q, key, value)
                        if q is None:
                            break
                if q is not None:
                    out.append((q, id_prefix))
        return out


def _one(value: Any) -> tuple[bool, Any]:
    """Tell whether a condition is one plain value (``v`` or ``{"$in": [v]}``), and which."""
    if not isinstance(value, dict):
        return True, value
    if set(value) == {"$in"} and len(value["$in"]) == 1:
        return True, value["$in"][0]
    return False, None


def _holds(cond: dict[str, Any], v: Any) -> bool:
    """Evaluate a range, ``$in`` or anchored ``$regex`` condition on a value."""
    try:
        for op, arg in cond.items():
            ok = {"$gte": lambda a: v >= a, "$gt": lambda a: v > a, "$lt": lambda a: v < a,
                  "$lte": lambda a: v <= a, "$in": lambda a: v in a,
                  "$regex": lambda a: re.search(a, str(v)) is not None}.get(op, lambda a: True)(arg)
            if not ok:
                return False
    except TypeError:
        return False
    return True


def _merge(q: dict[str, Any], key: str, value: Any) -> dict[str, Any] | None:
    """AND ``{key: value}`` into ``q``, keeping one condition per field where possible; None if they
    contradict."""
    if key not in q:
        return {**q, key: value}
    old = q[key]
    old_one, a = _one(old)
    new_one, b = _one(value)
    if old_one and new_one:
        return q if a == b else None
    if old_one or new_one:
        plain, other = (b, old) if new_one else (a, value)
        return {**q, key: plain} if _holds(other, plain) else None
    ranges = {"$gte", "$gt", "$lt", "$lte"}
    if set(old) <= ranges and set(value) <= ranges:
        merged = dict(old)
        for op, arg in value.items():
            merged[op] = arg if op not in merged else (max(merged[op], arg) if op in ("$gte", "$gt")
                                                         else min(merged[op], arg))
        return {**q, key: merged}
    return {**q, "$and": [*q.get("$and", []), {key: value}]}


def event_doc(event: WebhookEvent) -> dict[str, Any]:
    """Return ``event`` as a stored document, with the fields derived for search (``error_kind``)."""
    doc = to_doc(event)
    doc["error_kind"] = error_kind(event.last_error)
    return doc


def encode_event(event: WebhookEvent, codec_options: CodecOptions[Any]) -> RawBSONDocument:
    """Return ``event``'s stored document as BSON, ready to insert (encoded once, here).

    Raise :class:`StoreRefusedError` if it is over the store's document limit (less :data:`EVENT_ROOM`): MongoDB
    would refuse it every time, whoever retries.
    """
    raw = encode(event_doc(event), codec_options=codec_options)
    if len(raw) > MAX_DOCUMENT_BYTES - EVENT_ROOM:
        raise StoreRefusedError(
            f"webhook event too large for the store: {len(raw):,} bytes of BSON, over MongoDB's limit of 16 MiB per "
            f"document (less {EVENT_ROOM // 1024} KiB kept for its attempts)")
    return RawBSONDocument(raw)


def _derived(changes: dict[str, Any]) -> dict[str, Any]:
    """The derived fields a set of changes implies (``error_kind`` when ``last_error`` changes)."""
    return {"error_kind": error_kind(changes["last_error"])} if "last_error" in changes else {}


def indexable(query: dict[str, Any]) -> dict[str, Any]:
    """Return ``query`` with each equality to a value written ``{"$eq": value}`` and each ``$or`` beside other
    conditions inside an ``$and`` (:func:`~hookpost.store.docs.grouped`): the same filter on MongoDB.

    The local stand-in reads a bare ``{field: value}`` as "equals, or is an array holding it" and then uses no
    index unless a single-field index on ``field`` exists; ``$eq`` it serves from any index that starts with the
    field. So the ``(field, created_ms)`` indexes serve every equality without a single-field copy written on
    each insert and update.

    >>> indexable({"status": "Failed", "held": None, "created_ms": {"$gte": 1}})
    {'status': {'$eq': 'Failed'}, 'held': None, 'created_ms': {'$gte': 1}}
    """
    return grouped(_equalities(query))


def _equalities(query: dict[str, Any]) -> dict[str, Any]:
    """``query`` with each equality to a value written ``{"$eq": value}``."""
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("$or", "$and", "$nor"):
            out[key] = [_equalities(q) for q in value]
        elif key.startswith("$") or key == "_id" or value is None or isinstance(value, dict):
            out[key] = value
        else:
            out[key] = {"$eq": value}
    return out


def waiting_for(event_id: str, attempt: int) -> dict[str, Any]:
    """The guard of a write about ``attempt`` of an event: the event ``event_id``, still in flight (New or
    Retrying) and waiting for that attempt (so a second copy of the same message writes nothing).

    The status condition is :func:`~hookpost.store.docs.one_of`, not an ``$in``: with an ``$in`` the stand-in read
    the whole document into Python before each update, a fifth of its work per delivery (``docs/benchmarks.md``).
    """
    return {"_id": event_id, "attempt_count": attempt - 1, "$and": [one_of("status", [s.value for s in IN_FLIGHT])]}


class EventRepo:
    """Webhook event documents, keyed by ``evt_`` ids."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        """Create the indexes the queries need, and drop those an earlier version created that no query needs.

        Each index is written on every event insert and update (on the stand-in the row's every index is
        rewritten), so there is one per query shape and no single-field index that a compound one starts with:
        ``(field, created_ms)`` serves an equality on ``field`` alone as well as with the newest-first order.
        """
        await self.coll.create_index([("change_id", ASCENDING), ("webhook_id", ASCENDING)], unique=True,
                                     name="change_webhook_unique")
        for keys in EVENT_INDEXES:
            await self.coll.create_index(list(keys))
        for name, info in (await self.coll.index_information()).items():
            if tuple(k[0] for k in info["key"]) in RETIRED_INDEXES:
                await self.coll.drop_index(name)

    async def insert_new(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        """Insert fanned-out events in one round trip; return those that were new.

        An event whose (change id, webhook id) already exists is skipped: a replayed change makes no second event.
        Raise :class:`StoreRefusedError`, writing nothing, if one of them is too large to store.
        """
        if not events:
            return []
        docs = [encode_event(e, self.coll.codec_options) for e in events]
        try:
            await self.coll.insert_many(docs, ordered=False)
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
        cursor = self.coll.find(indexable({"change_id": change_id})).limit(10000)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def find(self, flt: EventFilter, *, limit: int = 50, newest_first: bool = True) -> list[WebhookEvent]:
        """Return up to ``limit`` events matching ``flt``, newest first (page on with ``before=<last id>``).

        Each of the filter's :meth:`~EventFilter.branches` is one indexed query; their pages are merged.
        """
        branches = flt.branches()
        if len(branches) == 1:
            docs = await self._find_branch(*branches[0], flt.before, limit, newest_first)
        else:
            seen: dict[str, dict[str, Any]] = {}
            for query, id_prefix in branches:
                for d in await self._find_branch(query, id_prefix, flt.before, limit, newest_first):
                    seen.setdefault(d["_id"], d)
            docs = sorted(seen.values(), key=lambda d: (d["created_ms"], d["_id"]), reverse=newest_first)
        return [from_doc(WebhookEvent, d) for d in docs[:limit]]

    async def _find_branch(self, query: dict[str, Any], id_prefix: str | None, before: str | None, limit: int,
                           newest_first: bool) -> list[dict[str, Any]]:
        direction = DESCENDING if newest_first else ASCENDING
        extra = 64 if before or id_prefix else 0
        while True:
            docs = await self.coll.find(indexable(query)).sort([("created_ms", direction), ("_id", direction)]).limit(
                limit + extra).to_list()
            kept = [d for d in docs if (not before or d["_id"] < before)
                    and (not id_prefix or d["_id"].startswith(id_prefix))]
            if len(kept) >= limit or len(docs) < limit + extra:
                return kept[:limit]
            extra *= 4  # many events share the cursor's millisecond: look further

    async def find_ids(self, query: dict[str, Any], *, limit: int) -> list[str]:
        """Return up to ``limit`` ids matching a raw filter, oldest first."""
        cursor = self.coll.find(indexable(query), {"_id": 1}).sort("_id", ASCENDING).limit(limit)
        return [d["_id"] async for d in cursor]

    async def expired(self, query: dict[str, Any], *, limit: int) -> list[tuple[str, int]]:
        """Return up to ``limit`` ``(id, attempt_count)`` of events matching a raw filter, in no particular order
        (the janitor's batches: no sort, so the store stops at ``limit``)."""
        cursor = self.coll.find(indexable(query), {"_id": 1, "attempt_count": 1}).limit(limit)
        return [(d["_id"], int(d.get("attempt_count") or 0)) async for d in cursor]

    async def count(self, query: dict[str, Any]) -> int:
        """Count events matching ``query`` with the ``count`` command (an index count on MongoDB).

        Not ``count_documents``: pymongo sends it as an aggregation, and on the stand-in every aggregation first
        counts the whole collection (25–90 ms at 1,000,000 events, against 2–7 ms for the command).
        """
        res = await self.coll.database.command("count", self.coll.name, query=indexable(query))
        return int(res["n"])

    async def group_counts(self, key: str, query: dict[str, Any]) -> dict[str, int]:
        """Return ``{value of key: count}`` over events matching ``query``."""
        pipeline = [{"$match": indexable(query)}, {"$group": {"_id": f"${key}", "n": {"$sum": 1}}}]
        res = await (await self.coll.aggregate(pipeline)).to_list()
        return {str(r["_id"]): int(r["n"]) for r in res if r["n"]}

    async def counts_by(self, key: str, query: dict[str, Any], *, max_values: int = 50) -> dict[str, int]:
        """Return ``{value of key: count}`` over events matching ``query``: the values ``key`` has ever had (read
        from its index, :meth:`values_of`), then one indexed count per value (``(key, created_ms)`` serves a count
        over a time range), or, beyond ``max_values`` values, one aggregation.

        On the stand-in an aggregation or a ``distinct`` whose filter has a ``created_ms`` range reads every
        matching document (0.7 s per key for one day of 100,000 events); counting per value takes milliseconds.
        """
        values = await self.values_of(key, limit=max_values + 1)
        if len(values) > max_values:
            return await self.group_counts(key, query)
        out = {}
        for value in values:
            n = await self.count({**query, key: value})
            if n:
                out[str(value)] = n
        return out

    async def values_of(self, key: str, *, limit: int) -> list[str]:
        """Return up to ``limit`` distinct values of the string field ``key`` over all events, in order: one
        seek in the ``(key, created_ms)`` index per value (a loose index scan), not a read of every event."""
        values: list[str] = []
        while len(values) < limit:
            after = values[-1] if values else ""
            doc = await self.coll.find_one({key: {"$gt": after}}, {key: 1}, sort=[(key, ASCENDING)])
            if doc is None:
                return values
            value = doc
            for part in key.split("."):
                value = value[part]
            values.append(value)
        return values

    async def reindex(self, *, batch: int = 1000) -> tuple[int, int]:
        """Write the search fields derived from others (``error_kind``) on events stored without them (before
        0.2), a page of ``batch`` at a time by ``created_ms`` and by ``_id``; return (events read, events changed).

        Idempotent; safe while the dispatcher runs (each write is guarded on the ``last_error`` it was derived
        from).
        """
        read = changed = 0
        cursor_ms: int | None = None
        seen: set[str] = set()
        while True:
            q: dict[str, Any] = {} if cursor_ms is None else {"created_ms": {"$gte": cursor_ms}}
            docs = await self.coll.find(q, {"created_ms": 1, "last_error": 1, "error_kind": 1}).sort(
                "created_ms", ASCENDING).limit(batch + len(seen)).to_list()
            fresh = [d for d in docs if d["_id"] not in seen]
            read += len(fresh)
            ops = [UpdateOne({"_id": d["_id"], "last_error": d.get("last_error")},
                             {"$set": {"error_kind": error_kind(d.get("last_error"))}})
                   for d in fresh if "error_kind" not in d or d["error_kind"] != error_kind(d.get("last_error"))]
            if ops:
                changed += (await self.coll.bulk_write(ops, ordered=False)).modified_count
            if len(docs) < batch + len(seen) or not fresh:
                return read, changed
            cursor_ms = docs[-1]["created_ms"]
            seen = {d["_id"] for d in docs if d["created_ms"] == cursor_ms}

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
        ops = [UpdateOne(waiting_for(event_id, attempt),
                         {"$set": {"attempt_count": attempt, "updated_at": now, "updated_ms": ms, **changes,
                                   **_derived(changes), "writer": token}})
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
        # never earlier: a reconciler's claim may already be later
        res = await self.coll.update_one({**waiting_for(event_id, attempt), "next_attempt_ms": {"$lt": until_ms}},
                                         {"$set": due_fields(until_ms)})
        return res.matched_count == 1

    async def hold(self, items: list[tuple[str, int, str, int]]) -> None:
        """Hold deliveries behind an open breaker, in one bulk write: each ``(event_id, attempt, endpoint,
        due_ms)`` marks the event, still waiting for ``attempt``, as held by ``endpoint`` and due at ``due_ms`` (the
        breaker's next probe). A held event has no message in any queue; the reconciler leaves it alone."""
        if not items:
            return
        await self.coll.bulk_write([
            UpdateOne(waiting_for(event_id, attempt),
                      {"$set": {"held": endpoint, **due_fields(due_ms)}})
            for event_id, attempt, endpoint, due_ms in items], ordered=False)

    async def held_by(self, endpoint: str, limit: int) -> list[WebhookEvent]:
        """Return up to ``limit`` events held by ``endpoint``'s breaker, held longest first (so probes rotate
        through the held events)."""
        cursor = self.coll.find(indexable({"held": endpoint})).sort("next_attempt_ms", ASCENDING).limit(limit)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def unhold(self, events: list[tuple[str, int | None]], endpoint: str, due_ms: int) -> None:
        """Release held events (their deliveries are about to be published), due at ``due_ms``; one bulk write.

        Each ``(event_id, next_attempt_ms)`` is released only if it is still held as it was read: a delivery that
        was consumed and held again meanwhile (its breaker opened again) carries the new probe's time and stays
        held, rather than being left unheld with no message in any queue.
        """
        if events:
            await self.coll.bulk_write([
                UpdateOne({"_id": event_id, "held": endpoint, "next_attempt_ms": seen_ms},
                          {"$set": {"held": None, **due_fields(due_ms)}})
                for event_id, seen_ms in events], ordered=False)

    async def oldest_retrying_age(self) -> float | None:
        """Return the age in seconds of the oldest ``Retrying`` event, or None if there is none."""
        doc = await self.coll.find_one(indexable({"status": EventStatus.RETRYING.value}), {"created_ms": 1},
                                       sort=[("created_ms", ASCENDING)])
        return None if doc is None else max(0.0, (now_ms() - int(doc["created_ms"])) / 1000)

    async def overdue(self, before_ms: int, limit: int) -> list[WebhookEvent]:
        """Return in-flight events whose next attempt was due before ``before_ms`` (the reconciler's work)."""
        cursor = self.coll.find({"next_attempt_ms": {"$lt": before_ms}, "held": None,
                                 "status": {"$in": [s.value for s in IN_FLIGHT]}}).sort(
            "next_attempt_ms", ASCENDING).limit(limit)
        return [from_doc(WebhookEvent, d) async for d in cursor]

    async def claim_overdue(self, event: WebhookEvent, until_ms: int, token: str) -> bool:
        """Push an overdue event's next attempt to ``until_ms`` if nobody touched it meanwhile; return whether
        this claim (writer ``token``, made by the caller once) holds it — also when a retry after a lost reply
        finds its own earlier write."""
        res = await self.coll.update_one(
            {"_id": event.id, "attempt_count": event.attempt_count, "next_attempt_ms": event.next_attempt_ms},
            {"$set": {**due_fields(until_ms), "writer": token}})
        if res.matched_count == 1:
            return True
        doc = await self.coll.find_one({"_id": event.id}, {"writer": 1})
        return doc is not None and doc.get("writer") == token

    async def delete_only(self, event_ids: list[str]) -> int:
        """Delete events by id (not their attempts: see :func:`store.cleanup.cleanup`); return how many."""
        if not event_ids:
            return 0
        res = await self.coll.delete_many({"_id": {"$in": event_ids}})
        return res.deleted_count
