"""The change log: a RabbitMQ stream that keeps every change published, so a webhook's missed changes can be
replayed.

``PREFIX.changelog`` is a stream bound to the changes exchange with ``#`` (declared with the topology while
``HOOKPOST_CHANGE_LOG_RETENTION`` is above 0; the broker drops segments older than that). It costs no store write;
on a cluster it is replicated like the other queues.

:func:`read_changes` reads the changes of a time window: it puts a *mark* at the end of the stream (a message
published to the stream alone, which fan-out never sees), then consumes from the window's start until it meets its
mark, so it knows where the log ended when it began. :func:`replay_changes` publishes changes to the changes
queue alone (not the exchange: the log does not keep them twice) with a header naming the one webhook they are
for, and when the replay began (their lanes' rank).

Example::

    logged = await read_changes(settings, since=utcnow() - timedelta(hours=2))
    await replay_changes(settings, [c for c in logged if ...], webhook_id="wh_…")
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hookpost.common.amqp import AmqpConnection, IncomingMessage
from hookpost.common.errors import ConfigError
from hookpost.common.ids import new_id
from hookpost.common.models import ChangeEvent, now_ms
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.common.traceparent import TRACEPARENT, TRACESTATE
from hookpost.common.wire import REPLAY_HEADER, REPLAY_RANK_HEADER, InvalidChangeError, decode_change

MARK_HEADER = "hookpost-changelog-mark"
STREAM_SLACK = timedelta(minutes=1)  # a stream is read from the chunk that holds a time: start a little earlier


@dataclass(frozen=True)
class LoggedChange:
    """A change as the change log kept it: the validated change, and the body, content type and trace headers it
    came with (a replayed change stays in its trace)."""

    change: ChangeEvent
    body: bytes
    content_type: str | None
    trace_headers: dict[str, str] = field(default_factory=dict)


async def read_changes(settings: Settings, *, since: datetime, until: datetime | None = None,
                       timeout: float = 60.0) -> list[LoggedChange]:
    """Return the valid changes in the log that occurred within ``[since, until)``, oldest first (each change id
    once). Raise :class:`ConfigError` if there is no change log (retention 0)."""
    topology = topology_from(settings)
    stream = topology.change_log
    if stream is None:
        raise ConfigError("there is no change log to replay from: HOOKPOST_CHANGE_LOG_RETENTION is 0")
    conn = await AmqpConnection.connect(settings.rabbitmq_urls, name="hookpost-changelog")
    try:
        out = await conn.channel(confirms=True)
        mark = new_id("mark")
        await out.publish("", stream, b"{}", message_id=mark, headers={MARK_HEADER: mark})
        reader = await conn.channel(prefetch=1000)
        found: dict[str, LoggedChange] = {}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_message(msg: IncomingMessage) -> None:
            headers = msg.properties.headers or {}
            msg.ack()
            if headers.get(MARK_HEADER) is not None:
                if str(headers[MARK_HEADER]) == mark and not done.done():
                    done.set_result(None)
                return
            try:
                change = decode_change(msg.body, msg.properties.content_type,
                                       max_bytes=settings.max_change_bytes,
                                       content_encoding=msg.properties.content_encoding)
            except InvalidChangeError:
                return  # set aside when it was published; a replay would set it aside again
            if since <= change.occurred_at and (until is None or change.occurred_at < until):
                trace = {k: str(headers[k]) for k in (TRACEPARENT, TRACESTATE) if k in headers}
                found.setdefault(change.id, LoggedChange(change, msg.body, msg.properties.content_type, trace))

        tag = await reader.consume(stream, on_message, arguments={"x-stream-offset": since - STREAM_SLACK})
        try:
            await asyncio.wait_for(done, timeout)
        finally:
            await reader.cancel(tag)
    finally:
        await conn.close()
    return sorted(found.values(), key=lambda c: (c.change.occurred_at, c.change.id))


async def replay_changes(settings: Settings, changes: Sequence[LoggedChange], *, webhook_id: str,
                         window: int = 500) -> int:
    """Publish ``changes`` to the changes queue for ``webhook_id`` only, at the tails of their lanes; return how
    many were published (confirmed)."""
    topology = topology_from(settings)
    rank = now_ms()
    headers = {REPLAY_HEADER: webhook_id, REPLAY_RANK_HEADER: rank}
    conn = await AmqpConnection.connect(settings.rabbitmq_urls, name="hookpost-replay")
    try:
        ch = await conn.channel(confirms=True)
        for start in range(0, len(changes), window):
            await asyncio.gather(*(
                ch.publish_nowait("", topology.changes_queue, c.body, message_id=c.change.id,
                                  headers={**c.trace_headers, **headers},
                                  content_type=c.content_type or "application/json")
                for c in changes[start:start + window]))
    finally:
        await conn.close()
    return len(changes)
