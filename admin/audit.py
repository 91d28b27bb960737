"""The audit log: read who changed what (entries are written by the operations themselves)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from hookpost.common.records import AuditEntry

if TYPE_CHECKING:
    from hookpost.admin.core import Admin


class AuditOps:
    """List audit entries."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    async def list(self, *, actor: str | None = None, action: str | None = None, since: datetime | None = None,
                   limit: int = 100) -> list[AuditEntry]:
        """Return audit entries, newest first, optionally for one actor or action, or since a time."""
        since_ms = int(since.timestamp() * 1000) if since else None
        return await self.admin.store.audit.list(actor=actor, action=action, since_ms=since_ms, limit=limit)
