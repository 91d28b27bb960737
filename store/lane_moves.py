"""Moving a lane on: start its next waiting event once its head has ended.

:meth:`LaneMover.advance` is the one step that changes which event of a lane is in flight. It is idempotent and
safe to run from any process at any time (fan-out after storing, a delivery after its outcome, the reconciler's
sweep, an operator's restart): every write is guarded, and a crash between two of them leaves a state the next
call finishes.

1. Read the lane's head. A head still in flight means nothing to do. A head that was taken but not started (a
   crash between the two writes) is started now.
2. Otherwise (no head, or it ended or was deleted) find the lowest-key waiting event stored longer than the settle
   window ago. None: done (the caller schedules another call when the next one settles).
3. Its webhook disabled or deleted: every waiting event of the lane ends ``Failed`` with the reason.
4. Late (at or below the key last sent, :func:`~hookpost.common.lanes.is_late`): it ends ``Finished`` unsent,
   superseded by the event sent last; back to 2.
5. Take the head (guarded on the head read in 1), start the event (due now) and publish its delivery.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from hookpost.common.deliveries import first_delivery
from hookpost.common.lanes import LaneKey, is_late, webhook_of
from hookpost.common.models import IN_FLIGHT, DeliveryMessage, Webhook, now_ms
from hookpost.store.lanes import NO_HEAD, LaneRepo, entry_key

log = logging.getLogger("hookpost.lanes")


class DeliverySink(Protocol):
    """Publishes delivery messages to the deliver queue."""

    async def deliveries(self, msgs: Sequence[DeliveryMessage]) -> None:
        """Publish ``msgs``, confirmed."""


HookLookup = Callable[[str], Awaitable[Webhook | None]]


class LaneMover:
    """Starts the next event of a lane when its head has ended (see the module docstring)."""

    def __init__(self, repo: LaneRepo, sink: DeliverySink, webhook: HookLookup, *, settle: float,
                 superseded: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        self.sink = sink
        self.webhook = webhook
        self.settle_ms = round(settle * 1000)
        self.superseded = superseded or (lambda _webhook_id: None)

    async def advance(self, lane: str) -> int | None:
        """Move ``lane`` on if its head has ended. Return None when the lane is busy or empty, else the epoch ms
        at which its next waiting event settles (the time to call again)."""
        doc = await self.repo.get(lane)
        head = str(doc.get("head") or NO_HEAD) if doc else NO_HEAD
        if head:
            ev = await self.repo.event(head)
            if ev is not None and ev.waiting:  # taken but not started: a crash between the two writes
                await self._start(head)
                return None
            if ev is not None and ev.status in IN_FLIGHT:
                return None
        last = LaneKey(0, int(doc["last_seq"]), str(doc["last_tie"])) if doc and "last_seq" in doc else None
        last_event = str(doc.get("last_event") or "") if doc else ""
        while True:
            entry = await self.repo.next_waiting(lane, now_ms() - self.settle_ms)
            if entry is None:
                first = await self.repo.first_stored(lane)
                return None if first is None else first + self.settle_ms
            hook = await self.webhook(entry["webhook_id"])
            if hook is None or not hook.active:
                await self.fail_lane(lane, "webhook deleted" if hook is None else
                                     f"webhook disabled: {hook.disabled_reason or 'by operator'}")
                return None
            key = entry_key(entry)
            if is_late(key, last):
                if await self.repo.supersede(entry["_id"], last_event):
                    self.superseded(entry["webhook_id"])
                    log.info("late change superseded", extra={"event_id": entry["_id"], "by": last_event})
                await self.repo.dequeue([entry["_id"]])
                continue
            if not await self.repo.take_head(lane, webhook_of(lane), head, entry["_id"], key, last):
                return None  # another process moved the lane meanwhile
            if await self._start(entry["_id"]):
                return None
            ev = await self.repo.event(entry["_id"])
            if ev is not None and ev.status in IN_FLIGHT:
                return None  # a stale entry of the head itself (started before a crash)
            head = entry["_id"]  # a stale entry of an event that has ended: move on past it
            if last is None or (key.seq, key.tie) > (last.seq, last.tie):
                last, last_event = key, entry["_id"]

    async def _start(self, event_id: str) -> bool:
        """Start the waiting event ``event_id`` (due now), publish its delivery, and take it out of the queue;
        return whether it was waiting."""
        ev = await self.repo.start(event_id, now_ms())
        if ev is not None:
            await self.sink.deliveries([first_delivery(ev)])
        await self.repo.dequeue([event_id])
        return ev is not None

    async def fail_lane(self, lane: str, reason: str) -> int:
        """End every waiting event of ``lane`` ``Failed`` with ``reason``; return how many."""
        ids = [d["_id"] for d in await self.repo.waiting_of(lane=lane)]
        n = await self.repo.fail_waiting(ids, reason)
        await self.repo.dequeue(ids)
        if n:
            log.warning("waiting events failed with their lane", extra={"lane": lane, "count": n, "reason": reason})
        return n

    async def fail_webhook(self, webhook_id: str, reason: str) -> int:
        """End every waiting event of ``webhook_id`` ``Failed`` with ``reason`` (disabled or deleted)."""
        total = 0
        while ids := [d["_id"] for d in await self.repo.waiting_of(webhook_id=webhook_id, limit=500)]:
            total += await self.repo.fail_waiting(ids, reason)
            await self.repo.dequeue(ids)
        return total

    async def release_webhook(self, webhook_id: str) -> int:
        """Take every waiting event of ``webhook_id`` out of its lane and publish its delivery (ordering turned
        off); forget the webhook's lanes. Return how many were released."""
        total = 0
        while ids := [d["_id"] for d in await self.repo.waiting_of(webhook_id=webhook_id, limit=500)]:
            released = await self.repo.release(ids, now_ms())
            await self.sink.deliveries([first_delivery(e) for e in released])
            await self.repo.dequeue(ids)
            total += len(released)
        await self.repo.drop_lanes(webhook_id)
        return total
