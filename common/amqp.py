"""A small asyncio bridge over pika's ``AsyncioConnection``: connect, declare, publish with confirms, consume.

Every pika callback is turned into a future. Publishing returns once the broker has confirmed the message *and*
routed it (``mandatory``); a nack, a ``basic.return`` or a lost connection raises :class:`PublishError`.

Example::

    conn = await AmqpConnection.connect(["amqp://guest:guest@127.0.0.1/%2F"], name="demo")
    ch = await conn.channel(confirms=True)
    await ch.declare(topology)
    await ch.publish("hookpost.changes", "article.updated", b"{...}", message_id="chg-1")
    await conn.close()
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.channel
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from hookpost.common.errors import BrokerUnavailableError, PublishError
from hookpost.common.settings import mask_url
from hookpost.common.topology import Topology

log = logging.getLogger("hookpost.amqp")


class ConnectionLostError(PublishError):
    """The channel or connection closed before the broker answered."""


@dataclass
class IncomingMessage:
    """A message received from a queue; ack or reject it through :meth:`ack` / :meth:`reject` exactly once."""

    channel: "AmqpChannel"
    delivery_tag: int
    redelivered: bool
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        """The message's AMQP headers (empty if none)."""
        return self.properties.headers or {}

    def ack(self) -> bool:
        """Acknowledge; return False (and do nothing) if the channel it came on is gone."""
        return self.channel.ack(self.delivery_tag)

    def reject(self, *, requeue: bool) -> bool:
        """Reject (``requeue=False`` dead-letters it); return False if the channel it came on is gone."""
        return self.channel.reject(self.delivery_tag, requeue=requeue)


class AmqpChannel:
    """One pika channel with futures for its RPCs, publisher confirms, and consumers."""

    def __init__(self, channel: pika.channel.Channel) -> None:
        self._ch = channel
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Future[Any]] = set()
        # publish sequence number → (confirm future, message id); a basic.return names only the message id
        self._confirms: dict[int, tuple[asyncio.Future[None], str | None]] = {}
        self._seq = 0
        self._confirming = False
        self.closed: asyncio.Future[str] = self._loop.create_future()
        channel.add_on_close_callback(self._on_close)
        channel.add_on_cancel_callback(self._on_cancel)

    @property
    def is_open(self) -> bool:
        """True while the channel can be used."""
        return self._ch.is_open

    @property
    def unconfirmed(self) -> int:
        """Messages published on this channel and not yet confirmed."""
        return len(self._confirms)

    def _rpc(self, method: Callable[..., Any], **kwargs: Any) -> asyncio.Future[Any]:
        if not self._ch.is_open:
            raise ConnectionLostError("channel is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

        def done(frame: Any) -> None:
            if not fut.done():
                fut.set_result(frame)

        method(callback=done, **kwargs)
        return fut

    async def enable_confirms(self) -> None:
        """Put the channel in confirm mode and watch for returned (unroutable) messages."""
        self._ch.add_on_return_callback(self._on_return)
        await self._rpc(self._ch.confirm_delivery, ack_nack_callback=self._on_confirm)
        self._confirming = True

    async def qos(self, prefetch: int) -> None:
        """Limit unacked deliveries on this channel to ``prefetch``."""
        await self._rpc(self._ch.basic_qos, prefetch_count=prefetch)

    async def declare(self, topology: Topology) -> None:
        """Declare every exchange, queue and binding of ``topology`` (idempotent)."""
        for name, kind in topology.exchanges:
            await self._rpc(self._ch.exchange_declare, exchange=name, exchange_type=kind, durable=True)
        for spec in topology.queues:
            await self._rpc(self._ch.queue_declare, queue=spec.name, durable=True, arguments=spec.arguments)
        for queue, exchange, key in topology.bindings:
            await self._rpc(self._ch.queue_bind, queue=queue, exchange=exchange, routing_key=key)

    async def delete(self, topology: Topology) -> None:
        """Delete every queue and exchange of ``topology`` (tests and ``topology delete``)."""
        for spec in topology.queues:
            await self._rpc(self._ch.queue_delete, queue=spec.name)
        for name, _ in topology.exchanges:
            await self._rpc(self._ch.exchange_delete, exchange=name)

    async def queue_depth(self, queue: str) -> int:
        """Return the number of ready messages in ``queue`` (passive declare; fails if it does not exist)."""
        frame = await self._rpc(self._ch.queue_declare, queue=queue, passive=True)
        return int(frame.method.message_count)

    async def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; return how many."""
        frame = await self._rpc(self._ch.queue_purge, queue=queue)
        return int(frame.method.message_count)

    def publish_nowait(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                       headers: dict[str, Any] | None = None, content_type: str = "application/json",
                       mandatory: bool = True, properties: pika.BasicProperties | None = None
                       ) -> asyncio.Future[None]:
        """Publish a persistent message and return a future that resolves when the broker confirmed it.

        Use this to publish a window of messages and then ``await asyncio.gather(*futures)``.
        """
        if not self._confirming:
            raise RuntimeError("enable_confirms() first")
        if not self._ch.is_open:
            raise ConnectionLostError("channel is closed")
        props = properties or pika.BasicProperties(
            delivery_mode=2, content_type=content_type, message_id=message_id, headers=headers)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._ch.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        self._seq += 1
        self._confirms[self._seq] = (fut, props.message_id if mandatory else None)
        return fut

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        """Publish one message and wait for its confirm; raise :class:`PublishError` if it is not confirmed."""
        await self.publish_nowait(exchange, routing_key, body, **kwargs)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        futures = []
        if method.multiple:
            while self._confirms:
                tag = next(iter(self._confirms))
                if tag > method.delivery_tag:
                    break
                futures.append(self._confirms.pop(tag)[0])
        else:
            entry = self._confirms.pop(method.delivery_tag, None)
            if entry is not None:
                futures.append(entry[0])
        for fut in futures:
            if fut.done():
                continue
            if ack:
                fut.set_result(None)
            else:
                fut.set_exception(PublishError("the broker refused the message (nack): queue full or unavailable"))

    def _on_return(self, _ch: Any, method: Any, props: pika.BasicProperties, _body: bytes) -> None:
        # The broker sends basic.return before the message's confirm, so the message is still unconfirmed here.
        # A return names only the message id, and several unconfirmed messages may share one (the same attempt
        # published again): fail them all, so the returned one is never confirmed as a success. A routed one
        # failed with it is published again by its caller (a duplicate at worst, never a loss).
        mid = props.message_id
        if not mid:
            return
        err = PublishError(f"message {mid} was not routed to any queue ({method.reply_text}); "
                           "is the topology declared?")
        for fut, waiting_mid in self._confirms.values():
            if waiting_mid == mid and not fut.done():
                fut.set_exception(err)

    def _on_cancel(self, _frame: Any) -> None:
        log.warning("the broker cancelled a consumer (queue deleted or node lost); closing the channel")
        if self._ch.is_open:
            self._ch.close()

    def _on_close(self, _ch: Any, reason: Exception) -> None:
        err = ConnectionLostError(f"channel closed: {reason}")
        for fut in [*self._pending, *(f for f, _ in self._confirms.values())]:
            if not fut.done():
                fut.set_exception(err)
        self._confirms.clear()
        if not self.closed.done():
            self.closed.set_result(str(reason))

    async def get(self, queue: str) -> IncomingMessage | None:
        """Fetch one message from ``queue`` (``basic.get``, to be acked); None if the queue is empty."""
        if not self._ch.is_open:
            raise ConnectionLostError("channel is closed")
        fut: asyncio.Future[IncomingMessage | None] = self._loop.create_future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

        def got(_ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            if not fut.done():
                fut.set_result(IncomingMessage(self, method.delivery_tag, bool(method.redelivered),
                                               method.routing_key, props, body))

        def empty(_frame: Any) -> None:
            if not fut.done():
                fut.set_result(None)

        self._ch.add_callback(empty, [pika.spec.Basic.GetEmpty], one_shot=True)
        self._ch.basic_get(queue, got, auto_ack=False)
        return await fut

    async def consume(self, queue: str, on_message: Callable[[IncomingMessage], None], *,
                      arguments: dict[str, Any] | None = None) -> str:
        """Start consuming ``queue``; ``on_message`` is called (synchronously) for each message. ``arguments``
        are the consumer's (``x-stream-offset`` for a stream)."""
        def deliver(_ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            on_message(IncomingMessage(self, method.delivery_tag, bool(method.redelivered), method.routing_key,
                                       props, body))

        tag_holder: dict[str, str] = {}
        fut = self._rpc(lambda callback, **kw: tag_holder.setdefault(
            "tag", self._ch.basic_consume(callback=callback, **kw)), queue=queue, on_message_callback=deliver,
            arguments=arguments)
        await fut
        return tag_holder["tag"]

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; messages it had not received stay in the queue."""
        if self._ch.is_open:
            await self._rpc(self._ch.basic_cancel, consumer_tag=consumer_tag)

    def ack(self, delivery_tag: int) -> bool:
        """Ack ``delivery_tag`` if this channel is still open (tags belong to one channel)."""
        if not self._ch.is_open:
            return False
        self._ch.basic_ack(delivery_tag)
        return True

    def reject(self, delivery_tag: int, *, requeue: bool) -> bool:
        """Reject ``delivery_tag`` if this channel is still open."""
        if not self._ch.is_open:
            return False
        self._ch.basic_reject(delivery_tag, requeue=requeue)
        return True

    async def close(self) -> None:
        """Close the channel (pending confirms fail)."""
        if self._ch.is_open:
            self._ch.close()
            await asyncio.shield(self.closed)


class AmqpConnection:
    """One AMQP connection to the first broker address that answers.

    ``closed`` resolves (with the reason) when the connection is lost or closed; supervisors await it.
    """

    def __init__(self, conn: AsyncioConnection, url: str) -> None:
        self._conn = conn
        self.url = url
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.blocked = asyncio.Event()
        """Set while the broker blocks this connection's publishes (``connection.blocked``: a resource alarm)."""
        self.unblocked = asyncio.Event()
        """Set while it does not (the opposite of :attr:`blocked`, to wait on)."""
        self.unblocked.set()
        self.blocked_reason: str | None = None
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        self.blocked_reason = str(getattr(frame.method, "reason", "") or "resource alarm")
        self.unblocked.clear()
        self.blocked.set()
        log.warning("the broker is blocking publishes", extra={"reason": self.blocked_reason,
                                                               "url": mask_url(self.url)})

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        if self.blocked.is_set():
            log.info("the broker accepts publishes again", extra={"url": mask_url(self.url)})
        self.blocked_reason = None
        self.blocked.clear()
        self.unblocked.set()

    @classmethod
    async def connect(cls, urls: Sequence[str], *, name: str = "hookpost", heartbeat: int = 15,
                      timeout: float = 5.0, blocked_timeout: float | None = None) -> "AmqpConnection":
        """Connect to the first of ``urls`` that accepts; raise :class:`BrokerUnavailableError` if none does.

        ``blocked_timeout``: seconds the broker may block the connection (resource alarm) before pika closes it
        (default ``max(30, 2 × heartbeat)``); :attr:`blocked` tells meanwhile.
        """
        errors = []
        for url in urls:
            try:
                return await cls._connect_one(url, name=name, heartbeat=heartbeat, timeout=timeout,
                                              blocked_timeout=blocked_timeout)
            except (OSError, TimeoutError, pika.exceptions.AMQPError) as exc:
                errors.append(f"{mask_url(url)}: {type(exc).__name__} {exc}".strip())
        raise BrokerUnavailableError("cannot connect to RabbitMQ: " + "; ".join(errors))

    @classmethod
    async def _connect_one(cls, url: str, *, name: str, heartbeat: int, timeout: float,
                           blocked_timeout: float | None = None) -> "AmqpConnection":
        loop = asyncio.get_running_loop()
        params = pika.URLParameters(url)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = blocked_timeout or max(30, heartbeat * 2)
        params.connection_attempts = 1
        params.socket_timeout = timeout
        params.stack_timeout = timeout
        params.client_properties = {"connection_name": name}
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        holder: dict[str, AmqpConnection] = {}

        def on_open(conn: Any) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(_conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(exc if isinstance(exc, Exception) else OSError(str(exc)))

        def on_close(_conn: Any, reason: BaseException) -> None:
            me = holder.get("self")
            if me is not None and not me.closed.done():
                me.closed.set_result(str(reason) or type(reason).__name__)
            if not opened.done():
                opened.set_exception(OSError(f"closed while opening: {reason}"))

        conn = AsyncioConnection(params, on_open_callback=on_open, on_open_error_callback=on_open_error,
                                 on_close_callback=on_close, custom_ioloop=loop)
        try:
            await asyncio.wait_for(asyncio.shield(opened), timeout + 1)
        except BaseException:
            if conn.is_open:
                conn.close()
            raise
        me = cls(conn, url)
        holder["self"] = me
        return me

    @property
    def is_open(self) -> bool:
        """True while the connection is up."""
        return self._conn.is_open and not self.closed.done()

    async def channel(self, *, confirms: bool = False, prefetch: int | None = None) -> AmqpChannel:
        """Open a channel, optionally in confirm mode and with a prefetch limit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pika.channel.Channel] = loop.create_future()

        def opened(ch: pika.channel.Channel) -> None:
            if not fut.done():
                fut.set_result(ch)

        if not self.is_open:
            raise ConnectionLostError("connection is closed")
        self._conn.channel(on_open_callback=opened)
        raw = await asyncio.wait_for(_first(fut, self.closed), 10)
        if not isinstance(raw, pika.channel.Channel):
            raise ConnectionLostError(f"connection closed: {raw}")
        channel = AmqpChannel(raw)
        if confirms:
            await channel.enable_confirms()
        if prefetch:
            await channel.qos(prefetch)
        return channel

    async def queue_depths(self, queues: list[str]) -> dict[str, int | None]:
        """Return the ready messages of each queue (None for one that does not exist or cannot be read).

        A passive declare of a missing queue closes its channel, so each queue is read on a channel of its own.
        """
        out: dict[str, int | None] = {}
        for name in queues:
            try:
                ch = await self.channel()
                out[name] = await ch.queue_depth(name)
                await ch.close()
            except Exception:
                out[name] = None
        return out

    async def close(self) -> None:
        """Close the connection and wait until it is closed.

        A blocked connection (resource alarm) cannot finish the close handshake, because the broker does not
        read from it: after a second it is dropped instead (what it had not confirmed was never accepted).
        """
        if not (self._conn.is_closing or self._conn.is_closed):
            self._conn.close()
        if self.closed.done():
            return
        blocked = self.blocked.is_set()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 1 if blocked else 5)
            return
        except TimeoutError:
            if not blocked:
                log.warning("AMQP connection did not close within 5 s")
                return
        self._conn._adapter_disconnect_stream()  # abort the socket: the broker is not reading it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 2)


async def _first(*futures: asyncio.Future[Any]) -> Any:
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    return next(iter(done)).result()
