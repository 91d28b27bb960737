"""What Hookpost set aside in ``PREFIX.invalid`` and ``PREFIX.failed``, for the CLI and the API alike: list
without removing, and replay change events once the cause is fixed. The broker work is in
:mod:`hookpost.producer.setaside`; each call opens its own connection with the caller's settings (the server's,
for the API), since a listing takes the whole queue out and gives it back in order.
"""

import json
from dataclasses import dataclass
from typing import Any

from hookpost.common.errors import InvalidInputError
from hookpost.common.settings import Settings
from hookpost.producer.setaside import ReplayReport, SetAside, SetAsideQueues


@dataclass
class SetAsideList:
    """Up to ``limit`` set-aside messages (JSON-ready, oldest first), how many the queue holds, and whether only
    its head was looked at."""

    items: list[dict[str, Any]]
    total: int
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API's answer)."""
        return {"items": self.items, "total": self.total, "truncated": self.truncated}


def check_limit(limit: int, name: str = "--limit") -> int:
    """Refuse a limit below 1."""
    if limit < 1:
        raise InvalidInputError(f"{name} must be at least 1, not {limit}")
    return limit


def notice_of(item: SetAside) -> dict[str, Any]:
    """Return a failure notice as data: its JSON body, or the body's excerpt when it is not a JSON object."""
    try:
        notice = json.loads(item.body)
    except ValueError:
        notice = None
    return notice if isinstance(notice, dict) else {"event_id": None, "body": item.excerpt()}


async def list_invalid(settings: Settings, limit: int = 50) -> SetAsideList:
    """List the change events set aside in ``PREFIX.invalid`` (none removed)."""
    async with await SetAsideQueues.connect(settings) as queues:
        items, total = await queues.list_invalid(check_limit(limit))
        return SetAsideList([i.as_dict() for i in items], total, queues.truncated)


async def list_failed(settings: Settings, limit: int = 50) -> SetAsideList:
    """List the failure notices in ``PREFIX.failed`` (none removed)."""
    async with await SetAsideQueues.connect(settings) as queues:
        items, total = await queues.list_failed(check_limit(limit))
        return SetAsideList([notice_of(i) for i in items], total, queues.truncated)


async def replay_invalid(settings: Settings, *, ids: list[str], everything: bool, dry_run: bool = False,
                         force: bool = False) -> ReplayReport:
    """Publish set-aside change events again (see :meth:`SetAsideQueues.replay`), checked against
    ``settings.max_change_bytes``."""
    if bool(ids) == everything:
        raise InvalidInputError("give ids, or all")
    async with await SetAsideQueues.connect(settings) as queues:
        return await queues.replay(ids=set(ids), everything=everything, dry_run=dry_run, force=force,
                                   max_change_bytes=settings.max_change_bytes)


def report_from(data: dict[str, Any]) -> ReplayReport:
    """Read a :class:`ReplayReport` back from its JSON form."""
    return ReplayReport(dry_run=bool(data.get("dry_run")), replayed=list(data.get("replayed", [])),
                        still_invalid=[(d["id"], d["reason"]) for d in data.get("still_invalid", [])],
                        failed=[(d["id"], d["error"]) for d in data.get("failed", [])],
                        not_found=list(data.get("not_found", [])), kept=int(data.get("kept", 0)),
                        truncated=bool(data.get("truncated")))
