"""What Hookpost set aside in ``PREFIX.invalid`` and ``PREFIX.failed``, for the CLI and the API alike: list
without removing, and replay change events once the cause is fixed. The broker work is in
:mod:`hookpost.producer.setaside`.

A CLI command connects for its one call; the server keeps one connection (:class:`SetAsideBroker`) and gives each
call its own channel, since a listing takes the whole queue out on it and gives it back in order.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from hookpost.common.amqp import AmqpConnection
from hookpost.common.errors import InvalidInputError
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.producer.setaside import ReplayReport, SetAside, SetAsideQueues


class SetAsideBroker:
    """One broker connection for a long-running process's set-aside calls: opened on first use and again after it
    was lost; each call gets a confirmed channel of its own, closed afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: AmqpConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> AmqpConnection:
        async with self._lock:
            if self._conn is None or not self._conn.is_open:
                self._conn = await AmqpConnection.connect(self.settings.rabbitmq_urls, name="hookpost-server")
            return self._conn

    @asynccontextmanager
    async def queues(self) -> AsyncIterator[SetAsideQueues]:
        """The set-aside queues over a new channel of the shared connection."""
        conn = await self._connection()
        channel = await conn.channel(confirms=True)
        try:
            yield SetAsideQueues(conn, channel, topology_from(self.settings))
        finally:
            await channel.close()

    async def close(self) -> None:
        """Close the connection (if one was opened)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@asynccontextmanager
async def _queues(settings: Settings, broker: SetAsideBroker | None) -> AsyncIterator[SetAsideQueues]:
    if broker is not None:
        async with broker.queues() as queues:
            yield queues
    else:
        async with await SetAsideQueues.connect(settings) as queues:
            yield queues


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


async def list_invalid(settings: Settings, limit: int = 50, broker: SetAsideBroker | None = None) -> SetAsideList:
    """List the change events set aside in ``PREFIX.invalid`` (none removed); over ``broker`` if given, else over
    a connection of its own."""
    async with _queues(settings, broker) as queues:
        items, total = await queues.list_invalid(check_limit(limit))
        return SetAsideList([i.as_dict() for i in items], total, queues.truncated)


async def list_failed(settings: Settings, limit: int = 50, broker: SetAsideBroker | None = None) -> SetAsideList:
    """List the failure notices in ``PREFIX.failed`` (none removed)."""
    async with _queues(settings, broker) as queues:
        items, total = await queues.list_failed(check_limit(limit))
        return SetAsideList([notice_of(i) for i in items], total, queues.truncated)


async def replay_invalid(settings: Settings, *, ids: list[str], everything: bool, dry_run: bool = False,
                         force: bool = False, broker: SetAsideBroker | None = None) -> ReplayReport:
    """Publish set-aside change events again (see :meth:`SetAsideQueues.replay`), checked against
    ``settings.max_change_bytes``."""
    if bool(ids) == everything:
        raise InvalidInputError("give ids, or all")
    async with _queues(settings, broker) as queues:
        return await queues.replay(ids=set(ids), everything=everything, dry_run=dry_run, force=force,
                                   max_change_bytes=settings.max_change_bytes)


def report_from(data: dict[str, Any]) -> ReplayReport:
    """Read a :class:`ReplayReport` back from its JSON form."""
    return ReplayReport(dry_run=bool(data.get("dry_run")), replayed=list(data.get("replayed", [])),
                        still_invalid=[(d["id"], d["reason"]) for d in data.get("still_invalid", [])],
                        failed=[(d["id"], d["error"]) for d in data.get("failed", [])],
                        not_found=list(data.get("not_found", [])), kept=int(data.get("kept", 0)),
                        truncated=bool(data.get("truncated")))
