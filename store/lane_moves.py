"""Moving a lane on: start its next waiting event once its head has ended.

:meth:`LaneMover.advance_many` is the one step that changes which event of a lane is in flight, for every lane
moving on at the same time in a fixed number of store round trips (reads of the lanes, their heads and their
waiting entries; bulk writes). It is idempotent and safe to run from any process at any time (fan-out after
storing, a delivery after its outcome, the reconciler's sweep, an operator's restart): every write is guarded, and
a crash between two of them leaves a state the next call finishes.

1. Read the lane's head. A head still in flight means nothing to do. A head that was taken but not started (a
   crash between the two writes) is started now.
2. Otherwise (no head, or it ended or was deleted) take the lowest-key waiting event. If it has been stored for less
   than the settle window, nothing starts yet (the caller calls again when it settles): a change stored a moment
   after a newer one of its entity is never overtaken by it.
3. Its webhook disabled or deleted: every waiting event of the lane ends ``Failed`` with the reason.
4. Late (at or below the key last sent, :func:`~hookpost.common.lanes.is_late`): it ends ``Finished`` unsent,
   superseded by the event sent last; back to 2.
5. Take the head (guarded on the head read in 1), start the event (due now) and publish its delivery.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from hookpost.common.deliveries import first_delivery
from hookpost.common.lanes import LaneKey, is_late
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
        """Move ``lane`` on if its head has ended (:meth:`advance_many` of one lane)."""
        return (await self.advance_many([lane]))[0]

    async def advance_many(self, lanes: Sequence[str]) -> list[int | None]:
        """Move ``lanes`` on, each as the module docstring says, in a fixed number of store round trips whatever
        their number. Return per lane None when it is busy or empty, else the epoch ms at which its next waiting
        event settles (the time to call again)."""
        todo = list(dict.fromkeys(lanes))
        docs = await self.repo.get_many(todo)
        heads = {lane: str(docs[lane].get("head") or NO_HEAD) for lane in todo if lane in docs}
        head_events = await self.repo.events_by_id([h for h in heads.values() if h])
        due: dict[str, int | None] = {}
        unstarted: list[str] = []  # heads taken but not started: a crash between the two writes
        free = []
        for lane in todo:
            ev = head_events.get(heads.get(lane, NO_HEAD))
            if ev is not None and ev.waiting:
                unstarted.append(ev.id)
            if ev is not None and (ev.waiting or ev.status in IN_FLIGHT):
                due[lane] = None
            else:
                free.append(lane)
        entries: dict[str, list[dict[str, Any]]] = {lane: [] for lane in free}
        for entry in await self.repo.waiting_in(free) if free else []:
            entries[entry["lane"]].append(entry)
        settled_ms = now_ms() - self.settle_ms
        takes, superseded, failing = [], [], []
        for lane in free:
            waiting = sorted(entries[lane], key=entry_key)
            due[lane] = None
            if not waiting:
                continue
            hook = await self.webhook(waiting[0]["webhook_id"])  # one webhook per lane
            if hook is None or not hook.active:
                failing.append((lane, "webhook deleted" if hook is None else
                                f"webhook disabled: {hook.disabled_reason or 'by operator'}"))
                continue
            doc = docs.get(lane, {})
            last = LaneKey(0, int(doc["last_seq"]), str(doc["last_tie"])) if "last_seq" in doc else None
            for entry in waiting:
                key = entry_key(entry)
                if is_late(key, last):
                    superseded.append((entry, str(doc.get("last_event") or "")))
                    continue
                if entry["stored_ms"] > settled_ms:  # the lowest key waits out its window: nothing overtakes it
                    due[lane] = int(entry["stored_ms"]) + self.settle_ms
                    break
                takes.append((lane, heads.get(lane, NO_HEAD), entry["_id"], key, last))
                break
        for lane, reason in failing:
            await self.fail_lane(lane, reason)
        if superseded:
            await self.repo.supersede_many([(e["_id"], by) for e, by in superseded])
            for entry, by in superseded:
                self.superseded(entry["webhook_id"])
                log.info("late change superseded", extra={"event_id": entry["_id"], "by": by})
        taken = await self.repo.take_heads(takes)
        to_start = unstarted + [event_id for lane, _, event_id, _, _ in takes if lane in taken]
        started = await self.repo.start_many(to_start, now_ms())
        await self.sink.deliveries([first_delivery(e) for e in started])
        await self.repo.dequeue([e["_id"] for e, _ in superseded] + to_start)
        stale = {lane for lane, _, event_id, _, _ in takes if lane in taken} - {e.lane for e in started}
        if stale:  # a queued entry of an event that had already started or ended: past it, on to the next
            again = await self.advance_many(sorted(stale))
            due.update(zip(sorted(stale), again, strict=True))
        return [due.get(lane) for lane in lanes]

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
