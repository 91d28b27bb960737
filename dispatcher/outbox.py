"""Everything the dispatcher publishes, on the current confirmed channel: deliveries, retries, failure notices,
invalid change events. Each call returns once the broker confirmed (or raises :class:`PublishError`)."""

import asyncio
from collections.abc import Sequence
from typing import Any

from hookpost.common.amqp import AmqpChannel, ConnectionLostError, IncomingMessage
from hookpost.common.models import DeliveryMessage, FailedNotice, now_ms
from hookpost.common.topology import ATTEMPT_HEADER, ERROR_HEADERS, ROUTING_KEY_HEADER, SET_ASIDE_AT_HEADER, Topology


class Outbox:
    """Publishes Hookpost's own messages; ``channel`` is swapped by the worker on every reconnect."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.channel: AmqpChannel | None = None

    @property
    def ready(self) -> bool:
        """True while a confirmed channel is open."""
        return self.channel is not None and self.channel.is_open

    def _ch(self) -> AmqpChannel:
        if self.channel is None or not self.channel.is_open:
            raise ConnectionLostError("not connected to the broker")
        return self.channel

    def _delivery(self, msg: DeliveryMessage, exchange: str, routing_key: str) -> asyncio.Future[None]:
        return self._ch().publish_nowait(exchange, routing_key, msg.model_dump_json().encode(),
                                         message_id=f"{msg.event_id}/{msg.attempt}",
                                         headers={ATTEMPT_HEADER: msg.attempt})

    async def deliveries(self, msgs: Sequence[DeliveryMessage],
                         deferred: Sequence[tuple[DeliveryMessage, int]] = ()) -> None:
        """Publish attempts to make now, and park ``deferred`` ones (their endpoint is busy) in the given level of
        the defer ladder with one more deferral and the same attempt number, as one window of confirms."""
        t = self.topology
        futures = [self._delivery(m, t.deliveries_exchange, "deliver") for m in msgs]
        futures += [self._delivery(m.model_copy(update={"deferrals": m.deferrals + 1}), "", t.defer_queue_at(level))
                    for m, level in deferred]
        if futures:
            await asyncio.gather(*futures)

    async def retry(self, msg: DeliveryMessage, level: int) -> None:
        """Park an attempt in retry queue ``level``; it reaches the deliver queue when that delay ends."""
        await self._delivery(msg.model_copy(update={"deferrals": 0}), "", self.topology.retry_queue(level))

    async def failed(self, notice: FailedNotice) -> None:
        """Publish a notice to the failed queue for an event that failed for good."""
        await self._ch().publish(self.topology.dead_exchange, "failed", notice.model_dump_json().encode(),
                                 message_id=notice.event_id)

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
