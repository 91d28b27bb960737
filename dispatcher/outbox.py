"""Everything the dispatcher publishes, on its own confirmed channel: deliveries, retries, deferrals, failure
notices, invalid change events. Each call returns once the broker confirmed (or raises :class:`PublishError`).

The outbox opens its channel on each new connection (:meth:`Outbox.open`) and drops it when the connection is
lost or a publish was nacked (:meth:`Outbox.drop`); in between every publish raises ``ConnectionLostError``.

Example::

    outbox = Outbox(topology)
    await outbox.open(connection, declare=True)   # declares the topology on the new channel
    await outbox.retry(message, level=0)
"""

import asyncio
from collections.abc import Sequence
from typing import Any

from hookpost.common.amqp import AmqpChannel, AmqpConnection, ConnectionLostError, IncomingMessage
from hookpost.common.models import ChangeEvent, DeliveryMessage, FailedNotice, now_ms
from hookpost.common.topology import ERROR_HEADERS, ROUTING_KEY_HEADER, SET_ASIDE_AT_HEADER, Topology
from hookpost.common.wire import NOTICE_HEADER
from hookpost.producer.deliveries import publish_delivery


class Outbox:
    """Publishes Hookpost's own messages on a confirmed channel of its own."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._channel: AmqpChannel | None = None

    async def open(self, connection: AmqpConnection, *, declare: bool = False) -> AmqpChannel:
        """Open the outbox's confirmed channel on ``connection`` (declaring the topology first if asked)."""
        channel = await connection.channel(confirms=True)
        if declare:
            await channel.declare(self.topology)
        self._channel = channel
        return channel

    async def drop(self) -> None:
        """Close and forget the channel (after a nack, or when the connection is gone)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    @property
    def ready(self) -> bool:
        """True while a confirmed channel is open."""
        return self._channel is not None and self._channel.is_open

    async def queue_depth(self, queue: str) -> int:
        """Return the ready messages of ``queue`` (raises ``ConnectionLostError`` when not connected)."""
        return await self._ch().queue_depth(queue)

    def _ch(self) -> AmqpChannel:
        if self._channel is None or not self._channel.is_open:
            raise ConnectionLostError("not connected to the broker")
        return self._channel

    def _delivery(self, msg: DeliveryMessage, exchange: str, routing_key: str) -> asyncio.Future[None]:
        return publish_delivery(self._ch(), msg, exchange, routing_key)

    async def deliveries(self, msgs: Sequence[DeliveryMessage],
                         deferred: Sequence[tuple[DeliveryMessage, int]] = ()) -> None:
        """Publish attempts to make now, and park ``deferred`` ones in the given level of the defer ladder, as one
        window of confirms."""
        t = self.topology
        futures = [self._delivery(m, t.deliveries_exchange, "deliver") for m in msgs]
        futures += [self._delivery(m, "", t.defer_queue_at(level)) for m, level in deferred]
        if futures:
            await asyncio.gather(*futures)

    async def retry(self, msg: DeliveryMessage, level: int) -> None:
        """Park an attempt in retry queue ``level``; it reaches the deliver queue when that delay ends."""
        await self._delivery(msg, "", self.topology.retry_queue(level))

    async def failed(self, notice: FailedNotice) -> None:
        """Publish a notice to the failed queue for an event that failed for good."""
        await self._ch().publish(self.topology.dead_exchange, "failed", notice.model_dump_json().encode(),
                                 message_id=notice.event_id)

    async def notice(self, change: ChangeEvent) -> None:
        """Publish one of Hookpost's own notices (a ``hookpost.*`` change event) to the changes exchange, marked as
        a notice so the fan-out accepts its reserved type."""
        await self._ch().publish(self.topology.changes_exchange, change.type,
                                 change.model_dump_json(exclude_none=True).encode(), message_id=change.id,
                                 headers={NOTICE_HEADER: 1})

    async def invalid(self, msg: IncomingMessage, reason: str) -> None:
        """Copy a rejected change event to the invalid queue, body and properties intact (but for an expiration and
        a user id, kept in headers), reason and routing key and time in headers."""
        props = msg.properties
        headers: dict[str, Any] = dict(props.headers or {})
        for name in ERROR_HEADERS:
            headers[name] = reason[:1000]
        headers[ROUTING_KEY_HEADER] = msg.routing_key
        headers[SET_ASIDE_AT_HEADER] = now_ms()  # when, for `hookpost invalid list`
        # a per-message TTL would let the copy vanish from the invalid queue, and a user_id the broker checks
        # against the dispatcher's own user would refuse the copy (and the change would requeue in a loop):
        # both move to headers
        if props.expiration is not None:
            headers["hookpost-expiration"], props.expiration = props.expiration, None
        if props.user_id is not None:
            headers["hookpost-user-id"], props.user_id = props.user_id, None
        props.headers = headers
        props.delivery_mode = 2
        await self._ch().publish(self.topology.dead_exchange, "invalid", msg.body, properties=props)
