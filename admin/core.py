"""The :class:`Admin`: the store and the broker clients that the operations share, opened once per process.

The CLI opens one per command (``async with Admin.open(settings) as admin``); ``hookpost server`` keeps one for
its lifetime. Broker connections open on first use, so read-only operations never touch the broker.
"""

import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hookpost.common.errors import NotFoundError
from hookpost.common.ids import new_id
from hookpost.common.models import Webhook
from hookpost.common.records import AuditEntry
from hookpost.common.settings import Settings
from hookpost.producer import Publisher
from hookpost.producer.deliveries import DeliveryPublisher
from hookpost.store import Store
from hookpost.store.lane_moves import LaneMover


def os_actor() -> str:
    """Return the audit name of the person running the CLI: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container
        return "cli:unknown"


class Admin:
    """The shared state of the operations in :mod:`hookpost.admin` (store, broker clients, settings)."""

    def __init__(self, settings: Settings, store: Store, *, publish_timeout: float = 10.0) -> None:
        from hookpost.admin.audit import AuditOps
        from hookpost.admin.changes import ChangeOps
        from hookpost.admin.events import EventOps
        from hookpost.admin.jobs import JobOps
        from hookpost.admin.replay import ReplayOps
        from hookpost.admin.tokens import TokenOps
        from hookpost.admin.webhooks import WebhookOps

        self.settings = settings
        self.store = store
        self.publish_timeout = publish_timeout
        self._deliveries: DeliveryPublisher | None = None
        self._publisher: Publisher | None = None
        self.webhooks = WebhookOps(self)
        self.events = EventOps(self)
        self.tokens = TokenOps(self)
        self.audit = AuditOps(self)
        self.changes = ChangeOps(self)
        self.jobs = JobOps(self)
        self.replays = ReplayOps(self)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, publish_timeout: float = 10.0) -> AsyncIterator["Admin"]:
        """Open the store (and, on first use, the broker) for the block; close everything afterwards.
        ``publish_timeout``: how long a change publish waits for the broker's confirm."""
        admin = cls(settings, Store.connect(settings.mongodb_url, settings.mongodb_db), publish_timeout=publish_timeout)
        try:
            yield admin
        finally:
            await admin.close()

    @classmethod
    def open_unmanaged(cls, settings: Settings) -> "Admin":
        """Return an Admin on ``settings`` that the caller closes (a long-running server)."""
        return cls(settings, Store.connect(settings.mongodb_url, settings.mongodb_db))

    @property
    def deliveries(self) -> DeliveryPublisher:
        """The delivery publisher (restarts, test events); connects on first publish."""
        if self._deliveries is None:
            self._deliveries = DeliveryPublisher.from_settings(self.settings)
        return self._deliveries

    @property
    def lanes(self) -> LaneMover:
        """Moves ordered webhooks' lanes on (restarts, ordering turned off, a webhook disabled or deleted)."""
        async def lookup(webhook_id: str) -> Webhook | None:
            try:
                return await self.store.webhooks.get(webhook_id)
            except NotFoundError:
                return None
        return LaneMover(self.store.lanes, self.deliveries, lookup, settle=self.settings.order_settle)

    @property
    def publisher(self) -> Publisher:
        """The change-event publisher (``POST /changes``, ``hookpost publish``); connects on first publish."""
        if self._publisher is None:
            self._publisher = Publisher.from_settings(self.settings, timeout=self.publish_timeout,
                                                      name="hookpost-admin")
        return self._publisher

    async def record(self, actor: str, action: str, target: str | None = None, **details: Any) -> AuditEntry:
        """Write an audit entry: ``actor`` did ``action`` to ``target``."""
        entry = AuditEntry(id=new_id("aud"), actor=actor, action=action, target=target, details=details)
        await self.store.audit.insert(entry)
        return entry

    async def close(self) -> None:
        """Close the broker clients and the store."""
        if self._deliveries is not None:
            await self._deliveries.close()
        if self._publisher is not None:
            await self._publisher.close()
        await self.store.close()
