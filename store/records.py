"""The management collections: ``tokens`` (API tokens, hashes only), ``audit`` (who changed what) and ``jobs``
(background operations and their progress). Every write filters on ``_id``."""

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from hookpost.common.errors import NotFoundError
from hookpost.common.records import ApiToken, AuditEntry, Job
from hookpost.store.docs import from_doc, to_doc


class TokenRepo:
    """API token records, keyed by ``tok_`` ids, found by the hash of the token."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        """Make the token hash unique (and indexed: every API request looks one up)."""
        await self.coll.create_index([("hash", ASCENDING)], unique=True)

    async def insert(self, token: ApiToken) -> None:
        """Store a new token record."""
        await self.coll.insert_one(to_doc(token))

    async def by_hash(self, digest: str) -> ApiToken | None:
        """Return the token whose hash is ``digest``, or None."""
        doc = await self.coll.find_one({"hash": digest})
        return None if doc is None else from_doc(ApiToken, doc)

    async def get(self, token_id: str) -> ApiToken:
        """Return the token ``token_id``; raise :class:`NotFoundError` if there is none."""
        doc = await self.coll.find_one({"_id": token_id})
        if doc is None:
            raise NotFoundError(f"no token {token_id!r}")
        return from_doc(ApiToken, doc)

    async def list(self, limit: int = 1000) -> list[ApiToken]:
        """Return tokens, oldest first."""
        return [from_doc(ApiToken, d) async for d in self.coll.find({}).sort("_id", ASCENDING).limit(limit)]

    async def set(self, token_id: str, **fields: Any) -> None:
        """Set ``fields`` on a token record."""
        await self.coll.update_one({"_id": token_id}, {"$set": fields})


class AuditRepo:
    """Audit entries, keyed by time-sortable ``aud_`` ids; listed newest first."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def ensure_indexes(self) -> None:
        """Index the time and the actor (the audit list filters on them)."""
        await self.coll.create_index([("at_ms", ASCENDING)])
        await self.coll.create_index([("actor", ASCENDING)])

    async def insert(self, entry: AuditEntry) -> None:
        """Store an audit entry."""
        await self.coll.insert_one(to_doc(entry))

    async def list(self, *, actor: str | None = None, action: str | None = None, since_ms: int | None = None,
                   limit: int = 100) -> list[AuditEntry]:
        """Return entries, newest first, optionally for one actor, one action, or since a time."""
        query: dict[str, Any] = {}
        if actor:
            query["actor"] = actor
        if action:
            query["action"] = action
        if since_ms is not None:
            query["at_ms"] = {"$gte": since_ms}
        cursor = self.coll.find(query).sort([("at_ms", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [from_doc(AuditEntry, d) async for d in cursor]


class JobRepo:
    """Background jobs, keyed by ``job_`` ids."""

    def __init__(self, coll: AsyncCollection[dict[str, Any]]) -> None:
        self.coll = coll

    async def insert(self, job: Job) -> None:
        """Store a new job."""
        await self.coll.insert_one(to_doc(job))

    async def get(self, job_id: str) -> Job:
        """Return the job ``job_id``; raise :class:`NotFoundError` if there is none."""
        doc = await self.coll.find_one({"_id": job_id})
        if doc is None:
            raise NotFoundError(f"no job {job_id!r}")
        return from_doc(Job, doc)

    async def set(self, job_id: str, **fields: Any) -> None:
        """Set ``fields`` on a job (progress, result)."""
        await self.coll.update_one({"_id": job_id}, {"$set": fields})
