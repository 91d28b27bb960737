"""The ``endpoints`` collection: the shared health of receiver endpoints (circuit breakers), and the ``notices``
collection that rate-limits Hookpost's own notices across dispatcher processes.

Both are small (one document per endpoint, one per webhook and notice kind). Every write filters on ``_id`` plus
guard fields, so concurrent dispatchers settle each transition with one atomic update: whoever's update matches
opened the breaker, owns the next probe, or closed it. The run of failed attempts in a row is counted here too, by
every process together: an ``$inc`` per batch of failed attempts, and a reset only when a process that knows of a
run sees an answer — a healthy endpoint costs no write.
"""

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from hookpost.common.endpoints import BreakerState, EndpointHealth, trouble_since
from hookpost.common.models import now_ms
from hookpost.store.docs import from_doc, grouped

# ends a run: absent, not null (``$min`` would keep a null on MongoDB, where null sorts before numbers)
_NO_RUN_SINCE: dict[str, Any] = {"$unset": {"run_since_ms": ""}}


class EndpointRepo:
    """Endpoint health documents, keyed by the endpoint (``scheme://host:port``)."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def all(self, limit: int = 100_000) -> list[EndpointHealth]:
        """Return every endpoint document (a small collection: one per endpoint that ever failed)."""
        return [from_doc(EndpointHealth, d) async for d in self.coll.find({}).limit(limit)]

    async def get(self, key: str) -> EndpointHealth | None:
        """Return the health of endpoint ``key`` (None if it never failed)."""
        doc = await self.coll.find_one({"_id": key})
        return None if doc is None else from_doc(EndpointHealth, doc)

    async def count_failures(self, key: str, n: int, first_ms: int) -> tuple[int, int | None]:
        """Add ``n`` failed attempts (the first at ``first_ms``) to the run of ``key`` shared by every process;
        return the run and when it began. One ``$inc`` by ``_id`` (a document is made on the first failure)."""
        change = {"$inc": {"run": n}, "$min": {"run_since_ms": first_ms}}
        for _ in range(2):
            doc = await self.coll.find_one_and_update({"_id": key}, change, return_document=ReturnDocument.AFTER)
            if doc is not None:
                return int(doc["run"]), doc.get("run_since_ms")
            try:
                await self.coll.update_one({"_id": key}, {
                    **change, "$setOnInsert": {"state": BreakerState.CLOSED.value, "releasing": False,
                                               "release_lease_ms": 0, "release_owner": None}}, upsert=True)
                return n, first_ms
            except DuplicateKeyError:  # another process made it first: add to it
                continue
        raise RuntimeError(f"endpoint document {key!r} neither found nor made")  # not reached

    async def end_run(self, key: str) -> None:
        """The endpoint answered: its shared run of failures is over (no write unless there is one)."""
        await self.coll.update_one({"_id": key, "run": {"$gt": 0}}, {"$set": {"run": 0}, **_NO_RUN_SINCE})

    async def _upsert_unless(self, key: str, state: BreakerState, changes: dict[str, Any]) -> bool:
        """Set ``changes`` unless the endpoint is in ``state`` already; return whether this call did it."""
        try:
            res = await self.coll.update_one({"_id": key, "state": {"$ne": state.value}},
                                             {"$set": {**changes, "state": state.value, "updated_ms": now_ms()}},
                                             upsert=True)
        except DuplicateKeyError:  # it exists in that state: someone else made the move
            return False
        return res.matched_count == 1 or res.upserted_id is not None

    async def mark_failing(self, key: str, since_ms: int, error: str | None, recovery: float) -> bool:
        """Note a run of failures (closed → failing) that began at ``since_ms``; return whether this call made the
        move. An endpoint whose breaker closed less than ``recovery`` seconds ago keeps the start of its trouble."""
        doc = await self.get(key)
        kept = trouble_since(doc, now_ms(), recovery)
        changes: dict[str, Any] = {"state": BreakerState.FAILING.value, "failing_since_ms": kept or since_ms,
                                   "last_error": error, "updated_ms": now_ms()}
        if kept is None:
            changes["closed_ms"] = None
        try:
            res = await self.coll.update_one(
                {"_id": key, "state": BreakerState.CLOSED.value},
                {"$set": changes,
                 "$setOnInsert": {"releasing": False, "release_lease_ms": 0, "release_owner": None}}, upsert=True)
        except DuplicateKeyError:
            return False
        return res.matched_count == 1 or res.upserted_id is not None

    async def open(self, key: str, since_ms: int, probe: float, error: str | None, recovery: float) -> bool:
        """Open the breaker of ``key`` (first probe after ``probe`` seconds); return whether this call opened it.

        ``failing_since_ms`` keeps the start of the endpoint's trouble if it is still in trouble (marked failing
        before, or its breaker closed less than ``recovery`` seconds ago: a flapping endpoint); else it is
        ``since_ms``, the start of this run.
        """
        now = now_ms()
        kept = trouble_since(await self.get(key), now, recovery)
        changes: dict[str, Any] = {
            "failing_since_ms": kept or since_ms, "opened_ms": now, "next_probe_ms": now + round(probe * 1000),
            "probe_interval": probe, "last_error": error, "releasing": False, "release_lease_ms": 0,
            "release_owner": None}
        if kept is None:
            changes["closed_ms"] = None
        return await self._upsert_unless(key, BreakerState.OPEN, changes)

    async def claim_probe(self, key: str, seen_next_ms: int, lease: float) -> bool:
        """Take the probe that was due at ``seen_next_ms``; no other probe may start for ``lease`` seconds unless
        :meth:`probed` says this one ended. Return whether this call took it (one process, one probe)."""
        now = now_ms()
        res = await self.coll.update_one(
            {"_id": key, "state": BreakerState.OPEN.value, "next_probe_ms": seen_next_ms},
            {"$set": {"next_probe_ms": now + round(lease * 1000), "updated_ms": now}})
        return res.matched_count == 1

    async def probed(self, key: str, cap: float) -> None:
        """A probe of the open breaker of ``key`` failed: the next one is due ``probe_interval`` seconds from now,
        and the interval after it doubles (up to ``cap`` seconds)."""
        doc = await self.get(key)
        if doc is None or doc.state != BreakerState.OPEN:
            return
        now = now_ms()
        await self.coll.update_one(
            {"_id": key, "state": BreakerState.OPEN.value, "opened_ms": doc.opened_ms},
            {"$set": {"next_probe_ms": now + round(doc.probe_interval * 1000),
                      "probe_interval": min(doc.probe_interval * 2, cap), "updated_ms": now}})

    async def close(self, key: str, recovery: float) -> bool:
        """Close the breaker of ``key`` (a probe or a request succeeded) and mark its held deliveries for release;
        return whether this call closed an open breaker. Its ``failing_since_ms`` is kept for ``recovery`` seconds
        (:meth:`settle` clears it then): should it open again before, its trouble goes on from the same start."""
        now = now_ms()
        keep = recovery > 0
        changes: dict[str, Any] = {"state": BreakerState.CLOSED.value, "opened_ms": None, "next_probe_ms": None,
                                   "releasing": True, "closed_ms": now if keep else None, "run": 0,
                                   "updated_ms": now}
        if not keep:
            changes["failing_since_ms"] = None
        res = await self.coll.update_one({"_id": key, "state": BreakerState.OPEN.value},
                                         {"$set": changes, **_NO_RUN_SINCE})
        return res.matched_count == 1

    async def recover(self, key: str) -> bool:
        """A failing (not open) endpoint answered: back to closed; return whether this call moved it. A run that
        came after a close within the recovery window keeps the start of the trouble (the window still runs)."""
        doc = await self.get(key)
        if doc is None or doc.state != BreakerState.FAILING:
            return False
        changes: dict[str, Any] = {"state": BreakerState.CLOSED.value, "run": 0, "updated_ms": now_ms()}
        if doc.closed_ms is None:
            changes["failing_since_ms"] = None
        res = await self.coll.update_one(
            {"_id": key, "state": BreakerState.FAILING.value, "closed_ms": doc.closed_ms},
            {"$set": changes, **_NO_RUN_SINCE})
        return res.matched_count == 1

    async def settle(self, key: str, closed_ms: int) -> bool:
        """The endpoint stayed closed since ``closed_ms`` for the whole recovery window: its trouble is over (clear
        ``failing_since_ms``); return whether this call did it."""
        res = await self.coll.update_one(
            {"_id": key, "state": BreakerState.CLOSED.value, "closed_ms": closed_ms},
            {"$set": {"failing_since_ms": None, "closed_ms": None, "updated_ms": now_ms()}})
        return res.matched_count == 1

    async def disable(self, key: str, opened_ms: int) -> bool:
        """Move an endpoint whose breaker opened at ``opened_ms`` to disabled (its webhooks are disabled by the
        caller) and mark its held deliveries for release; return whether this call did it."""
        res = await self.coll.update_one(
            {"_id": key, "state": BreakerState.OPEN.value, "opened_ms": opened_ms},
            {"$set": {"state": BreakerState.DISABLED.value, "next_probe_ms": None, "releasing": True, "run": 0,
                      "updated_ms": now_ms()}, **_NO_RUN_SINCE})
        return res.matched_count == 1

    async def lease_release(self, key: str, owner: str, seconds: float) -> bool:
        """Take (or keep) the release of ``key``'s held deliveries for ``seconds``: one process re-publishes them
        at a time."""
        now = now_ms()
        res = await self.coll.update_one(grouped(
            {"_id": key, "releasing": True,
             "$or": [{"release_lease_ms": {"$lt": now}}, {"release_lease_ms": None}, {"release_owner": owner}]}),
            {"$set": {"release_lease_ms": now + round(seconds * 1000), "release_owner": owner}})
        return res.matched_count == 1

    async def mark_releasing(self, key: str) -> None:
        """Ask for a release of ``key``'s held deliveries unless its breaker is open (a process held some on a
        view that was out of date)."""
        await self.coll.update_one({"_id": key, "state": {"$ne": BreakerState.OPEN.value}},
                                   {"$set": {"releasing": True}})

    async def released(self, key: str) -> None:
        """Note that every held delivery of ``key`` was re-published (unless it opened again meanwhile)."""
        await self.coll.update_one({"_id": key, "releasing": True, "state": {"$ne": BreakerState.OPEN.value}},
                                   {"$set": {"releasing": False, "release_lease_ms": 0, "release_owner": None}})


class NoticeRepo:
    """When each (kind, webhook) notice may next be sent, so every dispatcher together sends at most one per
    interval."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def take(self, kind: str, webhook_id: str, interval: float) -> bool:
        """Take the right to send notice ``kind`` about ``webhook_id`` now; False if one went out within
        ``interval`` seconds."""
        now = now_ms()
        try:
            res = await self.coll.update_one({"_id": f"{kind}:{webhook_id}", "until_ms": {"$lt": now}},
                                             {"$set": {"until_ms": now + round(interval * 1000)}}, upsert=True)
        except DuplicateKeyError:
            return False
        return res.matched_count == 1 or res.upserted_id is not None
