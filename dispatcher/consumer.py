"""Consuming: one place that settles every message a consumer gets (ack, dead-letter or give back).

A handler (fan-out, delivery) does its work and returns a :class:`Verdict`; it never acks or rejects itself.
:func:`settle_after` runs the handler and settles the message from the verdict — or from the error, when the
handler raised: broker or store trouble gives the message back to the queue (it is redelivered, and every stage
is idempotent), anything else too, after a pause, so a bug cannot spin.

Example::

    async def handle(msg: IncomingMessage) -> Verdict:
        ...
        return Verdict.ACK

    channel.consume(queue, lambda msg: spawn(settle_after(handle, msg, on_nack=outbox.reset)))
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum

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


Handler = Callable[[IncomingMessage], Awaitable[Verdict]]


def settle(msg: IncomingMessage, verdict: Verdict) -> None:
    """Ack or reject ``msg`` as ``verdict`` says (a no-op if its channel is gone: the broker redelivers it)."""
    if verdict is Verdict.ACK:
        msg.ack()
    else:
        msg.reject(requeue=verdict is Verdict.REQUEUE)


async def settle_after(handler: Handler, msg: IncomingMessage,
                       on_nack: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``handler(msg)`` and settle the message: from its verdict, or give it back if the handler raised.

    ``on_nack`` runs when the broker refused one of the handler's publishes (a nack), before the message is
    given back: RabbitMQ 3.10 nacks every later publish of a channel whose first publish to a quorum queue hit a
    leader election, so the worker drops that channel.
    """
    try:
        verdict = await handler(msg)
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
    except Exception:
        log.exception("unexpected error handling a message; requeueing it")
        await asyncio.sleep(1.0)
        verdict = Verdict.REQUEUE
    settle(msg, verdict)
