"""What Hookpost set aside, for operators: change events in ``PREFIX.invalid`` (and notices in ``PREFIX.failed``)
listed without removing them, and change events replayed to the changes exchange once their cause is fixed.

Nothing leaves a queue before the broker confirmed its replacement: each message is taken with ``basic.get``
(unacked), a chosen one is re-published to ``PREFIX.changes`` with publisher confirms and ``mandatory``, and only
then acked; every other message is rejected with ``requeue=True`` (in the order taken) when the scan ends, and a
lost connection gives every unacked message back. A quorum queue appends a returned message behind those still
waiting, so a list checks out the whole queue before giving any back, which keeps the order; a replay takes the
messages that were there when it began (so an event set aside again after its replay is not taken round again),
and messages that arrived meanwhile end up ahead of the ones it gives back. A scan holds at most ``scan_limit``
messages (10,000) and ``scan_bytes`` of bodies (64 MiB) at once; a longer queue is scanned from its head only
(``truncated``), and on a quorum queue the scanned head then moves behind the rest.

Example::

    async with await SetAsideQueues.connect(settings) as queues:
        found, total = await queues.list_invalid(limit=20)
        report = await queues.replay(ids={"chg-42"}, max_change_bytes=settings.max_change_bytes)
"""

import asyncio
import hashlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pika

from hookpost.common.amqp import AmqpChannel, AmqpConnection, IncomingMessage
from hookpost.common.errors import PublishError
from hookpost.common.settings import Settings
from hookpost.common.topology import (
    ERROR_HEADERS,
    REPLAYS_HEADER,
    ROUTING_KEY_HEADER,
    SET_ASIDE_AT_HEADER,
    Topology,
    topology_from,
)
from hookpost.common.wire import InvalidChangeError, decode_change

# headers Hookpost or the broker added while setting a message aside: a replayed copy carries none of them
_DROPPED_HEADERS = {*ERROR_HEADERS, ROUTING_KEY_HEADER, SET_ASIDE_AT_HEADER, "x-death", "x-delivery-count",
                    "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason"}


@dataclass
class SetAside:
    """One message found in ``PREFIX.invalid`` or ``PREFIX.failed``.

    ``key`` names it for ``--id``: the AMQP ``message_id``, or ``sha256:`` + the first 16 hex digits of the
    body's SHA-256 when the producer set none.
    """

    key: str
    message_id: str | None
    reason: str
    set_aside_at: datetime | None
    routing_key: str | None
    content_type: str | None
    content_encoding: str | None
    body: bytes = field(repr=False)
    headers: dict[str, Any] = field(default_factory=dict, repr=False)
    replays: int = 0

    @classmethod
    def from_message(cls, msg: IncomingMessage) -> "SetAside":
        """Read what a set-aside message says about itself (Hookpost's headers, else the broker's ``x-death``)."""
        props = msg.properties
        headers = dict(props.headers or {})
        death = _first_death(headers)
        reason = _text(headers.get(ERROR_HEADERS[0]))
        if not reason and death:
            reason = f"dead-lettered by the broker ({_text(death.get('reason'))} after " \
                     f"{_text(death.get('count'))} deliveries from {_text(death.get('queue'))})"
        routing_key = _text(headers.get(ROUTING_KEY_HEADER)) or None
        if routing_key is None and death and death.get("routing-keys"):
            routing_key = _text(death["routing-keys"][0])
        mid = _text(props.message_id) or None
        key = mid or "sha256:" + hashlib.sha256(msg.body).hexdigest()[:16]
        replays = headers.get(REPLAYS_HEADER)
        return cls(key=key, message_id=mid, reason=reason or "(no reason recorded)",
                   set_aside_at=_when(headers.get(SET_ASIDE_AT_HEADER)) or _when(death.get("time") if death else None),
                   routing_key=routing_key, content_type=props.content_type, content_encoding=props.content_encoding,
                   body=msg.body, headers=headers, replays=replays if isinstance(replays, int) else 0)

    def excerpt(self, width: int = 200) -> str:
        """The body as one line of text, cut to ``width`` characters (undecodable bytes shown as U+FFFD)."""
        text = " ".join(self.body[: width * 4].decode("utf-8", errors="replace").split())
        return text if len(text) <= width else text[: width - 1] + "…"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json``)."""
        return {"id": self.key, "message_id": self.message_id, "reason": self.reason,
                "set_aside_at": self.set_aside_at.isoformat() if self.set_aside_at else None,
                "routing_key": self.routing_key, "content_type": self.content_type,
                "content_encoding": self.content_encoding, "bytes": len(self.body), "replays": self.replays,
                "excerpt": self.excerpt()}


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do), by message key, in queue order."""

    dry_run: bool = False
    replayed: list[str] = field(default_factory=list)
    still_invalid: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    kept: int = 0
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json``)."""
        return {"dry_run": self.dry_run, "replayed": self.replayed,
                "still_invalid": [{"id": k, "reason": r} for k, r in self.still_invalid],
                "failed": [{"id": k, "error": e} for k, e in self.failed], "not_found": self.not_found,
                "kept": self.kept, "truncated": self.truncated}


class SetAsideQueues:
    """Operator access to the invalid and failed queues over one connection with a confirmed channel."""

    def __init__(self, conn: AmqpConnection, channel: AmqpChannel, topology: Topology,
                 scan_limit: int = 10_000, scan_bytes: int = 64 << 20) -> None:
        self.conn = conn
        self.channel = channel
        self.topology = topology
        self.scan_limit = scan_limit
        self.scan_bytes = scan_bytes
        self.truncated = False
        """True after a scan that stopped at ``scan_limit`` messages or ``scan_bytes`` of bodies."""

    def _room(self, count: int, size: int) -> bool:
        """True while a scan that holds ``count`` messages of ``size`` bytes may take one more (else it is
        ``truncated``)."""
        if count < self.scan_limit and size < self.scan_bytes:
            return True
        self.truncated = True
        return False

    @classmethod
    async def connect(cls, settings: Settings) -> "SetAsideQueues":
        """Connect to the broker of ``settings`` (first address that answers)."""
        conn = await AmqpConnection.connect(settings.rabbitmq_urls, name="hookpost-setaside")
        try:
            channel = await conn.channel(confirms=True)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, channel, topology_from(settings))

    async def __aenter__(self) -> "SetAsideQueues":
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (the broker gives back anything still unacked)."""
        await self.conn.close()

    async def list_invalid(self, limit: int = 50) -> tuple[list[SetAside], int]:
        """Return up to ``limit`` change events of ``PREFIX.invalid``, oldest first, and how many it holds."""
        return await self._peek(self.topology.invalid_queue, limit)

    async def list_failed(self, limit: int = 50) -> tuple[list[SetAside], int]:
        """Return up to ``limit`` notices of ``PREFIX.failed``, oldest first, and how many it holds."""
        return await self._peek(self.topology.failed_queue, limit)

    async def _peek(self, queue: str, limit: int) -> tuple[list[SetAside], int]:
        total = await self.channel.queue_depth(queue)
        taken: list[IncomingMessage] = []
        try:
            # take everything (up to the cap), not just `limit`: a quorum queue puts a returned message behind
            # the ones still waiting, so only a queue checked out completely keeps its order
            size = 0
            while self._room(len(taken), size) and (msg := await self.channel.get(queue)) is not None:
                taken.append(msg)
                size += len(msg.body)
            return [SetAside.from_message(m) for m in taken[:limit]], max(total, len(taken))
        finally:
            await self._give_back(queue, taken)

    async def _give_back(self, queue: str, messages: list[IncomingMessage]) -> None:
        """Requeue ``messages`` in the order taken, and wait (up to 5 s) until the queue counts them again, so
        that the next command sees them."""
        for msg in messages:
            msg.reject(requeue=True)
        deadline = time.monotonic() + 5.0
        while messages and self.channel.is_open and time.monotonic() < deadline:
            if await self.channel.queue_depth(queue) >= len(messages):
                return
            await asyncio.sleep(0.02)

    async def replay(self, *, ids: Collection[str] = (), everything: bool = False, dry_run: bool = False,
                     force: bool = False, max_change_bytes: int = 65536) -> ReplayReport:
        """Re-publish the chosen change events of ``PREFIX.invalid`` to the changes exchange.

        ``ids`` chooses by key (message id or ``sha256:…``), ``everything`` takes all. A chosen event that the
        door would still refuse (checked with ``max_change_bytes``) stays where it is and is reported with its
        reason today, unless ``force``. Each replayed one is acked only after the broker confirmed its copy.
        """
        if not ids and not everything:
            raise ValueError("choose messages by id, or all of them")
        report = ReplayReport(dry_run=dry_run)
        wanted = set(ids)
        seen: set[str] = set()
        queue = self.topology.invalid_queue
        keep: list[IncomingMessage] = []
        # only what was there when the replay began: a replayed event the dispatcher sets aside again (or any
        # newcomer) waits for the next command instead of being taken round again
        todo = await self.channel.queue_depth(queue)
        size = 0
        try:
            for _ in range(todo):
                if not self._room(len(keep), size):
                    break
                msg = await self.channel.get(queue)
                if msg is None:
                    break
                size += len(msg.body)
                item = SetAside.from_message(msg)
                seen.add(item.key)
                if not (everything or item.key in wanted):
                    keep.append(msg)
                    continue
                why = None if force else _refusal(item, max_change_bytes)
                if why is not None:
                    report.still_invalid.append((item.key, why))
                    keep.append(msg)
                    continue
                if dry_run:
                    report.replayed.append(item.key)
                    keep.append(msg)
                    continue
                try:
                    await self._republish(item)
                except PublishError as exc:
                    report.failed.append((item.key, str(exc)[:300]))
                    keep.append(msg)
                    if not self.channel.is_open:  # e.g. no changes exchange: the broker closed the channel
                        break                       # (and gives back everything it had handed out)
                    continue
                msg.ack()
                report.replayed.append(item.key)
        finally:
            await self._give_back(queue, keep)
        report.kept = len(keep) - (len(report.replayed) if dry_run else 0)
        report.not_found = sorted(wanted - seen)
        report.truncated = self.truncated
        return report

    async def _republish(self, item: SetAside) -> None:
        headers = {k: v for k, v in item.headers.items() if k not in _DROPPED_HEADERS}
        headers[REPLAYS_HEADER] = item.replays + 1
        props = pika.BasicProperties(delivery_mode=2, content_type=item.content_type,
                                     content_encoding=item.content_encoding, message_id=item.message_id,
                                     headers=headers)
        await self.channel.publish(self.topology.changes_exchange, item.routing_key or _type_of(item) or "replayed",
                                   item.body, properties=props)


def _refusal(item: SetAside, max_change_bytes: int) -> str | None:
    try:
        decode_change(item.body, item.content_type, max_bytes=max_change_bytes,
                      content_encoding=item.content_encoding)
    except InvalidChangeError as exc:
        return str(exc)
    return None


def _type_of(item: SetAside) -> str | None:
    try:
        return decode_change(item.body, item.content_type, max_bytes=len(item.body) + 1,
                             content_encoding=item.content_encoding).type
    except InvalidChangeError:
        return None


def _first_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None
