"""The :class:`Publisher`: how upstream Python systems (and ``hookpost publish``) hand change events to Hookpost.

Each message is persistent, published with ``mandatory`` routing and publisher confirms, with the change id as AMQP
``message_id`` and the event type as routing key. The caller's current trace context (OpenTelemetry) rides along as
the W3C ``traceparent`` / ``tracestate`` headers, through a ``publish`` span when an SDK records. ``publish``
returns only after the broker confirmed the message; a lost connection or a nack is retried (reconnecting, also to
another cluster node) until ``timeout``, then :class:`common.errors.PublishError` is raised. It never reports
success for an unconfirmed message. While the broker blocks publishers (a memory or disk alarm,
``connection.blocked``) nothing more is written, and a publish that is not confirmed by its timeout raises
:class:`common.errors.BrokerBlockedError` (a ``PublishError``). A message already written when the block began may
still be delivered once it lifts (the change id makes that harmless).

Example::

    async with Publisher(["amqp://guest:guest@127.0.0.1/%2F"]) as publisher:
        await publisher.publish({"id": "chg-42", "type": "article.updated",
                                 "entity": {"kind": "article", "id": "A-1001"}})
"""

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import pika.exceptions

from hookpost.common.amqp import AmqpChannel, AmqpConnection, ConnectionLostError
from hookpost.common.errors import BrokerBlockedError, BrokerUnavailableError, PublishError
from hookpost.common.models import ChangeEvent
from hookpost.common.settings import Settings
from hookpost.common.topology import Topology, topology_from
from hookpost.common.tracing import publish_span
from hookpost.common.wire import encode_change

log = logging.getLogger("hookpost.producer")
TRANSIENT = (ConnectionLostError, BrokerUnavailableError, OSError, TimeoutError, pika.exceptions.AMQPError)


class UnroutableError(PublishError):
    """The broker confirmed the message but no queue was bound to receive it (topology not declared?)."""


class Publisher:
    """Publishes change events with confirms; reconnects and retries until ``timeout`` seconds per call.

    ``declare=True`` declares the whole topology on connect (needs ``topology``), handy for tests and demos;
    in production ``hookpost topology declare`` or the dispatcher does it.

    ``sequence=True`` fills the ``sequence`` of each change that has none (what ordered webhooks order an entity's
    changes by) from this publisher's clock: nanoseconds since the epoch, strictly increasing within the
    publisher. Across processes it orders as their clocks do; a producer that knows its own order (a database
    revision, an outbox id) should set ``sequence`` itself.
    """

    def __init__(self, urls: Sequence[str] | str, *, prefix: str = "hookpost", timeout: float = 30.0,
                 max_change_bytes: int = 65536, topology: Topology | None = None, declare: bool = False,
                 name: str = "hookpost-producer", sequence: bool = False) -> None:
        self.urls = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)
        self.exchange = f"{prefix}.changes"
        self.timeout = timeout
        self.max_change_bytes = max_change_bytes
        self.topology = topology
        self.declare = declare
        self.name = name
        self.sequence = sequence
        self._last_sequence = 0
        self._conn: AmqpConnection | None = None
        self._channel: AmqpChannel | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "Publisher":
        """Build a publisher for the broker, prefix and limits in ``settings``."""
        return cls(settings.rabbitmq_urls, prefix=settings.prefix, max_change_bytes=settings.max_change_bytes,
                   topology=topology_from(settings), **kwargs)

    async def __aenter__(self) -> "Publisher":
        await self.connect()
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect (if not connected) to the first broker address that answers."""
        async with self._lock:
            if self._channel is not None and self._channel.is_open:
                return
            if self._conn is not None:
                await self._conn.close()
            self._conn = await AmqpConnection.connect(self.urls, name=self.name)
            channel = await self._conn.channel(confirms=True)
            if self.declare:
                if self.topology is None:
                    raise ValueError("declare=True needs a topology")
                await channel.declare(self.topology)
            self._channel = channel

    async def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            await self._conn.close()
        self._conn = self._channel = None

    def _prepare(self, change: ChangeEvent | Mapping[str, Any]) -> ChangeEvent:
        change = change if isinstance(change, ChangeEvent) else ChangeEvent.model_validate(change)
        if self.sequence and change.sequence is None:
            self._last_sequence = max(self._last_sequence + 1, time.time_ns())
            change = change.model_copy(update={"sequence": self._last_sequence})
        return change

    async def publish(self, change: ChangeEvent | Mapping[str, Any]) -> str:
        """Publish one change event and return its id once the broker confirmed it.

        Raises ``pydantic.ValidationError`` / :class:`common.wire.InvalidChangeError` for an invalid change,
        :class:`UnroutableError` if no queue is bound, :class:`PublishError` if not confirmed within ``timeout``.
        """
        return (await self.publish_many([change]))[0]

    async def publish_many(self, changes: Iterable[ChangeEvent | Mapping[str, Any]], window: int = 500) -> list[str]:
        """Publish change events in windows of ``window`` confirms; return their ids in order."""
        prepared = [self._prepare(c) for c in changes]
        bodies = [encode_change(c, max_bytes=self.max_change_bytes) for c in prepared]
        with publish_span(self.exchange, len(prepared)) as headers:  # the caller's trace rides on each change
            for start in range(0, len(prepared), window):
                await self._send_window(prepared[start:start + window], bodies[start:start + window], headers)
        return [c.id for c in prepared]

    @property
    def blocked(self) -> bool:
        """True while the broker blocks this publisher's connection (a resource alarm: memory or disk)."""
        return self._conn is not None and self._conn.blocked.is_set()

    def _blocked_error(self, count: int) -> BrokerBlockedError:
        reason = self._conn.blocked_reason if self._conn is not None else None
        return BrokerBlockedError(f"the broker is blocking publishes ({reason or 'resource alarm'}): {count} change "
                                  f"event(s) not confirmed within {self.timeout:g}s")

    async def _confirmed(self, pending: list[int], changes: list[ChangeEvent], bodies: list[bytes],
                         deadline: float, headers: dict[str, str]) -> list[BaseException | None]:
        """Publish ``pending`` on the current channel and wait for their confirms until ``deadline``.

        While the broker blocks the connection nothing is written (it would only wait in the socket); a window
        that is not confirmed by the deadline raises :class:`BrokerBlockedError` if the connection is blocked,
        else :class:`PublishError`.
        """
        await self.connect()
        conn, channel = self._conn, self._channel
        assert conn is not None and channel is not None
        try:
            if not conn.unblocked.is_set():
                await asyncio.wait_for(conn.unblocked.wait(), max(deadline - time.monotonic(), 0.05))
            futures = [channel.publish_nowait(self.exchange, changes[i].type, bodies[i], message_id=changes[i].id,
                                              headers=headers or None)
                       for i in pending]
            return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                          max(deadline - time.monotonic(), 0.05))
        except TimeoutError:
            if conn.blocked.is_set():
                raise self._blocked_error(len(pending)) from None
            raise PublishError(f"{len(pending)} change event(s) not confirmed by the broker within "
                               f"{self.timeout:g}s") from None

    async def _send_window(self, changes: list[ChangeEvent], bodies: list[bytes], headers: dict[str, str]) -> None:
        deadline = time.monotonic() + self.timeout
        pending = list(range(len(changes)))
        delay = 0.2
        last_error: Exception | None = None
        while pending:
            try:
                results = await self._confirmed(pending, changes, bodies, deadline, headers)
            except TRANSIENT as exc:
                results = [exc] * len(pending)
            failed = []
            nacked = False
            for i, res in zip(pending, results, strict=True):
                if isinstance(res, BaseException):
                    if "not routed" in str(res):
                        raise UnroutableError(str(res))
                    failed.append(i)
                    nacked = nacked or not isinstance(res, TRANSIENT)
                    last_error = res if isinstance(res, Exception) else PublishError(str(res))
            pending = failed
            if nacked and self._channel is not None:
                # RabbitMQ 3.10: a channel whose first publish to a quorum queue lands during a leader election
                # is nacked for that queue for good; retry on a fresh channel (connect() opens one).
                await self._channel.close()
            if pending:
                if time.monotonic() + delay > deadline:
                    if self.blocked:
                        raise self._blocked_error(len(pending))
                    raise PublishError(f"{len(pending)} change event(s) not confirmed by the broker within "
                                       f"{self.timeout:g}s: {last_error}")
                log.warning("publish not confirmed; retrying", extra={"pending": len(pending),
                                                                      "error": str(last_error)[:300]})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
