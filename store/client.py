"""The :class:`Store`: one ``AsyncMongoClient`` and the three collections, with their indexes.

Example::

    store = Store.connect(settings.mongodb_url, settings.mongodb_db)
    await store.ensure_indexes()
    hook = await store.webhooks.get("wh_…")
    await store.close()
"""

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from pymongo.monitoring import CommandListener

from hookpost.store.attempts import AttemptRepo
from hookpost.store.endpoints import EndpointRepo, NoticeRepo
from hookpost.store.events import EventRepo
from hookpost.store.lanes import LaneRepo
from hookpost.store.records import AuditRepo, JobRepo, TokenRepo
from hookpost.store.webhooks import WebhookRepo


class Store:
    """Hookpost's MongoDB database: ``webhooks``, ``events``, ``attempts``, ``endpoints``, ``notices``, and
    ``tokens``, ``audit``, ``jobs``; and for ordered webhooks ``lanes``, ``lane_queue``, ``folds``."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db_name: str) -> None:
        self.client = client
        self.db = client[db_name]
        self.webhooks = WebhookRepo(self.db["webhooks"])
        self.attempts = AttemptRepo(self.db["attempts"], self.db["events"])
        self.events = EventRepo(self.db["events"])
        self.tokens = TokenRepo(self.db["tokens"])
        self.audit = AuditRepo(self.db["audit"])
        self.jobs = JobRepo(self.db["jobs"])
        self.endpoints = EndpointRepo(self.db["endpoints"])
        self.notices = NoticeRepo(self.db["notices"])
        self.lanes = LaneRepo(self.db["lanes"], self.db["lane_queue"], self.db["folds"], self.db["events"])

    @classmethod
    def connect(cls, url: str, db_name: str, *, timeout_ms: int = 5000,
                listeners: list[CommandListener] | None = None) -> "Store":
        """Create a store for ``url``; the URL's own options (``replicaSet``, ``w``, …) pass through untouched.

        ``listeners`` see every command (the dispatcher counts store operations with one). No I/O happens until
        the first operation.
        """
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
            appname="hookpost", event_listeners=listeners or [])
        return cls(client, db_name)

    async def ensure_indexes(self) -> None:
        """Create every index Hookpost needs (idempotent; safe to run at every start-up)."""
        await self.webhooks.ensure_indexes()
        await self.events.ensure_indexes()
        await self.attempts.ensure_indexes()
        await self.tokens.ensure_indexes()
        await self.audit.ensure_indexes()
        await self.lanes.ensure_indexes()

    async def ping(self) -> bool:
        """Tell whether the store answers right now."""
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def close(self) -> None:
        """Close every connection of the client."""
        await self.client.close()
