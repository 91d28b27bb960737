"""Publishing delivery messages (``PREFIX.deliveries`` → ``PREFIX.deliver``): one way to do it, used by the
dispatcher's outbox and by ``admin`` when it restarts events or sends a test event.

Each message is persistent, carries ``message_id`` = ``{event_id}/{attempt}`` and the attempt number in the
``ATTEMPT_HEADER``; the returned future resolves when the broker confirmed it.
"""

import asyncio
from collections.abc import Sequence

from hookpost.common.amqp import AmqpChannel, AmqpConnection
from hookpost.common.models import DeliveryMessage
from hookpost.common.settings import Settings
from hookpost.common.topology import ATTEMPT_HEADER, Topology, topology_from


def publish_delivery(channel: AmqpChannel, msg: DeliveryMessage, exchange: str,
                     routing_key: str) -> asyncio.Future[None]:
    """Publish one delivery message on a confirmed ``channel``; return the future of its confirm."""
    return channel.publish_nowait(exchange, routing_key, msg.model_dump_json().encode(),
                                  message_id=f"{msg.event_id}/{msg.attempt}", headers={ATTEMPT_HEADER: msg.attempt})


class DeliveryPublisher:
    """Publishes deliveries to the deliver queue for processes other than the dispatcher (``admin``).

    Connects on first use and reconnects once if the channel was lost.

    Example::

        async with DeliveryPublisher.from_settings(settings) as out:
            await out.deliveries([first_delivery(event)])
    """

    def __init__(self, urls: Sequence[str], topology: Topology, *, name: str = "hookpost-admin") -> None:
        self.urls = list(urls)
        self.topology = topology
        self.name = name
        self._conn: AmqpConnection | None = None
        self._channel: AmqpChannel | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: str) -> "DeliveryPublisher":
        """Build a publisher for the broker and prefix in ``settings``."""
        return cls(settings.rabbitmq_urls, topology_from(settings), **kwargs)

    async def __aenter__(self) -> "DeliveryPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ch(self) -> AmqpChannel:
        async with self._lock:
            if self._channel is not None and self._channel.is_open:
                return self._channel
            if self._conn is not None:
                await self._conn.close()
            self._conn = await AmqpConnection.connect(self.urls, name=self.name)
            self._channel = await self._conn.channel(confirms=True)
            return self._channel

    async def deliveries(self, msgs: Sequence[DeliveryMessage]) -> None:
        """Publish ``msgs`` to the deliver queue as one window of confirms (raises if any is not confirmed)."""
        if not msgs:
            return
        ch = await self._ch()
        await asyncio.gather(*[publish_delivery(ch, m, self.topology.deliveries_exchange, "deliver") for m in msgs])

    async def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            await self._conn.close()
        self._conn = self._channel = None
