"""Replaying what a webhook missed: the logged changes of a time window that it has no event of.

Changes published while a webhook was disabled, while its stored document did not validate, or before it was
created were never fanned out to it. The change log (``producer/changelog.py``) keeps every change for
``HOOKPOST_CHANGE_LOG_RETENTION``; a replay reads the window, keeps the changes of the webhook's event types
(and of ``types`` if given), drops those it already has an event of, and publishes the rest through fan-out for
this webhook only. Fan-out's unique (change, webhook) index makes a second replay of the same window a no-op, and
an ordered webhook's replayed changes join the tails of their lanes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from hookpost.common.errors import InvalidInputError
from hookpost.common.matching import any_matches, validate_pattern
from hookpost.common.records import ReplayCount, ReplayRequest
from hookpost.producer.changelog import LoggedChange, read_changes, replay_changes

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

WINDOW = 500


class ReplayOps:
    """Count and replay the changes a webhook missed (see the module docstring)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    async def plan(self, webhook_id: str, request: ReplayRequest) -> tuple[ReplayCount, list[LoggedChange]]:
        """Return what a replay of ``request`` would do, and the changes it would publish."""
        from hookpost.admin.events import parse_when

        hook = await self.admin.store.webhooks.get(webhook_id)
        since = parse_when(request.since)
        until = parse_when(request.until) if request.until else None
        if until is not None and until <= since:
            raise InvalidInputError("--until must be later than --since")
        types = [validate_pattern(t) for t in request.types]
        logged = await read_changes(self.admin.settings, since=since, until=until)
        matched = [c for c in logged if any_matches(hook.event_types, c.change.type)
                   and (not types or any_matches(types, c.change.type))]
        had = await self.known(webhook_id, [c.change.id for c in matched])
        todo = [c for c in matched if c.change.id not in had]
        count = ReplayCount(webhook_id=webhook_id, since=since, until=until, logged=len(logged),
                            matched=len(matched), already=len(matched) - len(todo), replayed=len(todo),
                            dry_run=True)
        return count, todo

    async def known(self, webhook_id: str, change_ids: Sequence[str]) -> set[str]:
        """Return which of ``change_ids`` the webhook has an event of, or folded into one."""
        had: set[str] = set()
        for start in range(0, len(change_ids), WINDOW):
            chunk = list(change_ids[start:start + WINDOW])
            cursor = self.admin.store.events.coll.find({"change_id": {"$in": chunk}}, {"change_id": 1,
                                                                                     "webhook_id": 1})
            had |= {d["change_id"] async for d in cursor if d["webhook_id"] == webhook_id}
            folds = self.admin.store.lanes.folds.find({"_id": {"$in": [f"{c}|{webhook_id}" for c in chunk]}},
                                                      {"change_id": 1})
            had |= {d["change_id"] async for d in folds}
        return had

    async def run(self, webhook_id: str, request: ReplayRequest, *, actor: str,
                  progress: Callable[[int], None] | None = None) -> ReplayCount:
        """Replay (or with ``dry_run`` only count) the changes ``webhook_id`` missed in the window; audited."""
        count, todo = await self.plan(webhook_id, request)
        if request.dry_run:
            return count
        return await self.publish(count, todo, types=request.types, actor=actor, progress=progress)

    async def publish(self, count: ReplayCount, todo: list[LoggedChange], *, types: Sequence[str], actor: str,
                      progress: Callable[[int], None] | None = None) -> ReplayCount:
        """Publish the changes a :meth:`plan` found (``todo``) for its webhook; audited."""
        webhook_id = count.webhook_id
        for start in range(0, len(todo), WINDOW):
            chunk = todo[start:start + WINDOW]
            await replay_changes(self.admin.settings, chunk, webhook_id=webhook_id)
            if progress:
                progress(len(chunk))
        await self.admin.record(actor, "webhook.replayed", webhook_id, since=_iso(count.since),
                                until=_iso(count.until), types=list(types), matched=count.matched,
                                already=count.already, replayed=count.replayed)
        return count.model_copy(update={"dry_run": False})


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
