"""Consuming: one place that settles every message a consumer gets (ack, dead-letter or give back).

A stage (fan-out, delivery) does its work in ``handle`` and returns a :class:`Verdict`; it never acks or rejects
itself. :func:`settle_after` runs it and settles the message from the verdict — or from the error, when
``handle`` raised: broker trouble gives the message back to the queue (it is redelivered, and every stage is
idempotent). An unexpected error gives it back too, after a pause — unless it is **poison**: a message that has
failed ``poison_after`` times in a row (RabbitMQ's ``x-delivery-count`` on quorum queues, a count kept here on
classic ones) is ended by the stage's ``poisoned`` (its event ``Failed``, its change set aside, with the reason)
before the broker would dead-letter it without one, so it neither crash-loops nor blocks the queue.

Example::

    class Stage:
        async def handle(self, msg: IncomingMessage) -> Verdict: ...
        async def poisoned(self, msg: IncomingMessage, reason: str) -> Verdict: ...

    channel.consume(queue, lambda msg: spawn(settle_after(stage, msg, poison=counter, on_nack=outbox.drop)))
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Protocol

from hookpost.common.amqp import ConnectionLostError, IncomingMessage
from hookpost.common.errors import PublishError

log = logging.getLogger("hookpost.consumer")


class Verdict(Enum):
    """What becomes of a message once its handler is done."""

    ACK = "ack"
    """Done: its work is recorded and whatever follows it is published (or it was parked, or set aside)."""

    DEAD_LETTER = "dead-letter"
    """It can never be handled (a malformed delivery message): reject it to the queue's dead-letter exchange."""

    REQUEUE = "requeue"
    """It could not be finished now: give it back to the queue."""


class Stage(Protocol):
    """What a consumer runs for each message."""

    async def handle(self, msg: IncomingMessage) -> Verdict:
        """Do the message's work; return what becomes of it."""

    async def poisoned(self, msg: IncomingMessage, reason: str) -> Verdict:
        """End a message that failed every time it was handled, keeping ``reason`` where an operator sees it."""


class FailureCount:
    """How often a message has failed to be handled: RabbitMQ's ``x-delivery-count`` where the queue keeps one
    (quorum), else a count of this process's own (classic queues; the most recent ``keep`` message ids)."""

    def __init__(self, poison_after: int, keep: int = 10_000) -> None:
        self.poison_after = poison_after
        self.keep = keep
        self._seen: OrderedDict[str, int] = OrderedDict()

    def failed(self, msg: IncomingMessage) -> int:
        """Note that handling ``msg`` failed once more; return how often it has failed now."""
        broker = msg.headers.get("x-delivery-count")
        if isinstance(broker, int):
            return broker + 1
        key = msg.properties.message_id or str(hash(msg.body))
        n = self._seen.pop(key, 0) + 1
        self._seen[key] = n
        while len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        return n

    def is_poison(self, failures: int) -> bool:
        """True once a message has failed ``poison_after`` times."""
        return failures >= self.poison_after


def settle(msg: IncomingMessage, verdict: Verdict) -> None:
    """Ack or reject ``msg`` as ``verdict`` says (a no-op if its channel is gone: the broker redelivers it)."""
    if verdict is Verdict.ACK:
        msg.ack()
    else:
        msg.reject(requeue=verdict is Verdict.REQUEUE)


async def settle_after(stage: Stage, msg: IncomingMessage, *, failures: FailureCount,
                       on_nack: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``stage.handle(msg)`` and settle the message: from its verdict, or from the error it raised.

    ``on_nack`` runs when the broker refused one of the stage's publishes (a nack), before the message is given
    back: RabbitMQ 3.10 nacks every later publish of a channel whose first publish to a quorum queue hit a leader
    election, so the worker drops that channel.
    """
    try:
        verdict = await stage.handle(msg)
    except asyncio.CancelledError:
        raise
    except ConnectionLostError as exc:  # the channel is gone: nothing can be settled; the broker redelivers
        log.warning("could not finish a message; it will be redelivered", extra={"error": str(exc)[:300]})
        return
    except PublishError as exc:
        log.warning("could not finish a message; it will be redelivered", extra={"error": str(exc)[:300]})
        if on_nack is not None:
            await on_nack()
        await asyncio.sleep(0.5)
        verdict = Verdict.REQUEUE
    except Exception as exc:
        verdict = await _after_error(stage, msg, exc, failures)
    settle(msg, verdict)


async def _after_error(stage: Stage, msg: IncomingMessage, exc: Exception, failures: FailureCount) -> Verdict:
    """Give a message whose handling raised back to the queue — or end it, if it is poison."""
    n = failures.failed(msg)
    reason = f"could not be handled ({n} tries): {type(exc).__name__}: {str(exc)[:300]}"
    if not failures.is_poison(n):
        log.exception("unexpected error handling a message; requeueing it", extra={"failures": n})
        await asyncio.sleep(1.0)
        return Verdict.REQUEUE
    log.error("poison message ended", extra={"reason": reason, "message_id": msg.properties.message_id})
    try:
        return await stage.poisoned(msg, reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("could not end a poison message; requeueing it")
        await asyncio.sleep(1.0)
        return Verdict.REQUEUE
