"""The first attempt without the queue hop (``HOOKPOST_FIRST_ATTEMPT=inline``).

With ``inline``, fan-out makes the first attempt of each new event itself, through the same gate, sender,
recorder and follow-ups as the consumer of ``PREFIX.deliver`` (:meth:`DeliveryHandler.first`), and acks the change
only once each of its events has an outcome recorded or has been handed to a queue (parked in the defer ladder,
held by the breaker, or published to ``PREFIX.deliver``). That saves each first attempt a publish with a confirm,
a quorum-queue write, a consume and an ack.

Two bounds keep a change from holding the process hostage:

- **per change**, at most ``HOOKPOST_INLINE_PER_CHANGE`` first attempts are made inline; a change fanned out to
  more webhooks publishes the rest to ``PREFIX.deliver``, as ``queue`` does;
- **per process**, at most ``HOOKPOST_INLINE_MAX`` are under way at once (waiting for their endpoint's slot, or
  sending). Beyond it an attempt waits for one to end: its change stays unacked, the changes behind it stay in
  ``PREFIX.changes`` for this or another dispatcher, and the rest of ``HOOKPOST_CONCURRENCY`` stays free for
  retries. (Handing these to ``PREFIX.deliver`` at once instead would send nearly all of a backlog through the
  queue: a change handed over is acked at once and the next one takes its place.) One that has waited
  ``max_wait`` (the longest a delivery waits in memory for its endpoint's slot) is published after all, so the
  reconciler never takes a stored event waiting here for lost.

Inside the bound, the gate's own rules apply: a delivery to an endpoint that hangs, or that holds its share of
the window, is parked in the defer ladder, and one behind an open breaker is held.

An attempt that raises for a reason of its own (not the broker's) is published to ``PREFIX.deliver``, where the
consumer's poison rule ends it ``Failed`` with the reason after five tries, as it ends any delivery; the change is
not held back for it.

A crash before the ack redelivers the change. Fan-out then finds its events stored: those still waiting for their
first attempt are attempted (or published) again, each checked against the store just before its request; for
those whose first attempt is recorded, what followed it is published again (:meth:`FollowUps.again`).

Example::

    inline = InlineAttempts(delivery.first, followups.again, deferrer.publish, metrics, per_change=10,
                            at_once=100, max_wait=135.0)
    now, rest = inline.split(events)            # rest: publish to PREFIX.deliver
    await inline.make(now, hooks, check=False)  # returns when each has an outcome or was handed over
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from hookpost.common.amqp import ConnectionLostError
from hookpost.common.deliveries import first_delivery
from hookpost.common.errors import PublishError
from hookpost.common.models import DeliveryMessage, Webhook, WebhookEvent
from hookpost.dispatcher.metrics import Metrics

log = logging.getLogger("hookpost.fanout")

MakeFirst = Callable[..., Awaitable[None]]  # DeliveryHandler.first(dm, hook, *, check)
Again = Callable[[DeliveryMessage], Awaitable[None]]  # FollowUps.again(dm)
HandOver = Callable[[Sequence[DeliveryMessage], Sequence[tuple[DeliveryMessage, str]]], Awaitable[None]]


class InlineAttempts:
    """Makes new events' first attempts in fan-out, at most ``per_change`` per change and ``at_once`` per
    process (see the module docstring)."""

    def __init__(self, make_first: MakeFirst, again: Again, hand_over: HandOver, metrics: Metrics, *,
                 per_change: int, at_once: int, max_wait: float) -> None:
        self.make_first = make_first
        self.again = again
        self.hand_over = hand_over
        self.max_wait = max_wait
        self.metrics = metrics
        self.per_change = per_change
        self.at_once = at_once
        self._slots = asyncio.Semaphore(at_once)
        self._made = metrics.first_attempts.labels("inline")
        self._handed = metrics.first_attempts.labels("queue")

    def split(self, events: Sequence[WebhookEvent]) -> tuple[list[WebhookEvent], list[WebhookEvent]]:
        """Return the events whose first attempt is made inline (the first ``per_change``) and the rest."""
        return list(events[:self.per_change]), list(events[self.per_change:])

    async def make(self, events: Sequence[WebhookEvent], hooks: dict[str, Webhook], *, check: bool) -> None:
        """Make the first attempt of each of ``events`` (their webhooks in ``hooks``), concurrently; return when
        each has an outcome recorded or has been handed to a queue. ``check``: the change was redelivered, so
        each event is checked against the store first. If one raises, the others still finish, then the first
        error is raised (the change is not acked)."""
        if len(events) == 1:  # most changes: no task to spawn
            await self._one(first_delivery(events[0]), hooks[events[0].webhook_id], check)
            return
        results = await asyncio.gather(*(self._one(first_delivery(e), hooks[e.webhook_id], check) for e in events),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def resume(self, events: Sequence[WebhookEvent]) -> None:
        """For events a redelivered change found past their first attempt: publish again what followed it, if the
        store shows that outcome as the latest (the first try may have stopped between recording and publishing)."""
        await asyncio.gather(*(self.again(first_delivery(e).model_copy(update={"attempt": 1})) for e in events))

    async def _one(self, dm: DeliveryMessage, hook: Webhook, check: bool) -> None:
        if not await self._take_place():  # never longer in memory than a delivery waits for its slot
            await self.hand_over([dm], [])
            self._handed.inc()
            return
        try:
            await self.make_first(dm, hook, check=check)
        except (ConnectionLostError, PublishError):
            raise  # the broker's trouble: the change is given back, and redelivered
        except Exception:  # a fault of this event's: the deliver queue's poison rule ends it, with the reason
            log.exception("first attempt failed unexpectedly; handed to the deliver queue",
                          extra={"event_id": dm.event_id})
            await self.hand_over([dm], [])
            self._handed.inc()
            return
        finally:
            self._slots.release()
        self._made.inc()

    async def _take_place(self) -> bool:
        """Take one of the ``at_once`` places, waiting at most ``max_wait``; False if none came in time."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken at once, no timer armed
            return True
        try:
            async with asyncio.timeout(self.max_wait):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True
