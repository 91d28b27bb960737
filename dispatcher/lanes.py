"""Ordered webhooks in the dispatcher: events waiting in lanes, folding, the check before a request, and timers.

For a webhook with ``ordering=entity`` fan-out stores each event *waiting* in its entity's lane
(:meth:`Lanes.place`, :meth:`Lanes.stored`) instead of publishing its delivery; the lane's next event starts when
its head has ended (:class:`~hookpost.store.lane_moves.LaneMover`), called

- a settle window after an event is stored (a timer in this process; ``HOOKPOST_ORDER_SETTLE``),
- after a head's outcome is recorded ``Finished`` or ``Failed`` (:meth:`Lanes.ended`, a follow-up step),
- by the reconciler's sweep for lanes whose waiting events were left behind (:meth:`Lanes.sweep`).

With ``coalesce=latest`` a change folds into its entity's newest waiting event of the same type instead of making
its own (:meth:`Lanes.place`). Before an ordered event's request goes out, :meth:`Lanes.check` reads whether it is
still its lane's head waiting for this attempt, so an old change is never sent after a newer one.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from hookpost.common.lanes import change_key, lane_of
from hookpost.common.models import (
    ChangeEvent,
    Coalesce,
    DeliveryMessage,
    EventStatus,
    Webhook,
    WebhookEvent,
    build_payload,
    due_fields,
    now_ms,
    to_ms,
)
from hookpost.dispatcher.batcher import Batcher
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.storeguard import GuardedStore
from hookpost.store.lane_moves import DeliverySink, HookLookup, LaneMover
from hookpost.store.lanes import queue_doc

log = logging.getLogger("hookpost.lanes")

FOLD_TRIES = 5


class Lanes:
    """The dispatcher's side of ordered webhooks (see the module docstring)."""

    def __init__(self, store: GuardedStore, sink: DeliverySink, webhook: HookLookup, metrics: Metrics, *,
                 settle: float, batch: int = 500) -> None:
        self.store = store
        self.metrics = metrics
        self.settle = settle
        self.mover = LaneMover(store.lanes, sink, webhook, settle=settle,
                               superseded=lambda w: metrics.changes_superseded.labels(w).inc())
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # concurrent lanes move on, check and queue together: a fixed number of store round trips per batch
        self._moves: Batcher[str, int | None] = Batcher(self._advance_many, max_batch=batch, max_in_flight=1)
        self._checks: Batcher[tuple[str, int], bool] = Batcher(store.lanes.heads_for, max_batch=batch)
        self._queued: Batcher[dict[str, Any], None] = Batcher(self._enqueue, max_batch=batch)
        self._folding: dict[str, tuple[asyncio.Lock, int]] = {}
        self._swept_to = -1  # where the next sweep goes on from (lanes busy for hours must not starve the rest)

    # -- fan-out -----------------------------------------------------------------------------------------------

    async def place(self, change: ChangeEvent, events: list[WebhookEvent], hooks: dict[str, Webhook], *,
                    existing: set[str]) -> list[WebhookEvent]:
        """Return ``events`` as they are to be stored: those of ordered webhooks waiting in their lanes (no due
        time), with the changes that folded into a waiting event (coalesce=latest) left out. ``existing`` names the
        webhooks that already have an event of this change (a redelivery): those never fold."""
        out = []
        for e in events:
            hook = hooks.get(e.webhook_id)
            if hook is None or not hook.ordered:
                out.append(e)
                continue
            lane = lane_of(hook.id, change.entity)
            e = e.model_copy(update={"lane": lane, "waiting": True, **due_fields(None)})
            if hook.coalesce == Coalesce.LATEST:
                e.payload["data"]["coalesced"] = 1
                e = e.model_copy(update={"coalesced": 1})
                if hook.id not in existing and await self._fold(change, e):
                    continue
            out.append(e)
        return out

    def folding(self, change: ChangeEvent, hooks: list[Webhook]) -> AbstractAsyncContextManager[None]:
        """Hold the lanes of ``change`` for its coalescing webhooks while it is placed, stored and queued: the
        changes of one entity that this process fans out at once then fold one after the other, instead of each
        finding no waiting event yet and making its own. (Nothing to hold without a coalescing webhook.)"""
        lanes = sorted(lane_of(h.id, change.entity) for h in hooks if h.coalesce == Coalesce.LATEST)
        return self._holding(lanes) if lanes else nullcontext()

    @asynccontextmanager
    async def _holding(self, lanes: list[str]) -> AsyncIterator[None]:
        locks = []
        for lane in lanes:
            lock, users = self._folding.get(lane) or (asyncio.Lock(), 0)
            self._folding[lane] = (lock, users + 1)
            locks.append((lane, lock))
        acquired: list[asyncio.Lock] = []
        try:
            for _, lock in locks:
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in acquired:
                lock.release()
            for lane, _ in locks:
                held, users = self._folding[lane]
                if users <= 1:
                    del self._folding[lane]
                else:
                    self._folding[lane] = (held, users - 1)

    async def stored(self, change: ChangeEvent, events: list[WebhookEvent], *, rank: int = 0) -> None:
        """Put the waiting ones of ``events`` (stored, or found stored on a redelivery) in their lanes' queues and
        set a timer for when they settle."""
        waiting = [e for e in events if e.waiting and e.lane]
        if not waiting:
            return
        stored_ms = now_ms()
        key = change_key(change, rank)
        await asyncio.gather(*(self._queued.submit(queue_doc(e, key, stored_ms)) for e in waiting))
        for e in waiting:
            assert e.lane is not None
            self.schedule(e.lane, stored_ms + round(self.settle * 1000))

    async def _fold(self, change: ChangeEvent, event: WebhookEvent) -> bool:
        """Fold ``change`` into its lane's newest waiting event if that has the same type; return whether it did
        (or had, before a redelivery)."""
        assert event.lane is not None
        tail = await self.store.lanes.newest_waiting(event.lane)
        if tail is None or tail["type"] != change.type:
            return False
        repo = self.store.lanes
        if not await repo.record_fold(change.id, event.webhook_id, tail["_id"], to_ms(change.occurred_at)):
            return True  # folded before this redelivery
        key = change_key(change)
        for _ in range(FOLD_TRIES):
            target = await repo.event(tail["_id"])
            if target is None or not target.waiting or target.status != EventStatus.NEW:
                break
            seen = target.coalesced or 1
            newer = (key.seq, key.tie) > (int(tail["seq"]), str(tail["tie"]))
            payload = build_payload(target.id, change) if newer else dict(target.payload)
            payload["data"] = {**payload["data"], "coalesced": seen + 1}
            if await repo.fold(target.id, seen, {"payload": payload}):
                if newer:
                    await repo.queue.update_one({"_id": target.id}, {"$set": {"seq": key.seq, "tie": key.tie}})
                self.metrics.changes_coalesced.labels(event.webhook_id).inc()
                return True
        # the tail started meanwhile: the change makes its own event; its fold record points there
        await repo.refold(change.id, event.webhook_id, event.id)
        return False

    # -- delivery ----------------------------------------------------------------------------------------------

    async def check(self, dm: DeliveryMessage) -> bool:
        """Tell whether the event of ``dm`` is still its lane's head and waits for this attempt (one read, shared
        with the concurrent checks)."""
        return await self._checks.submit((dm.event_id, dm.attempt))

    async def ended(self, lane: str) -> None:
        """Move ``lane`` on after its head ended (``Finished`` or ``Failed``)."""
        await self.advance(lane)

    # -- moving lanes on ---------------------------------------------------------------------------------------

    async def advance(self, lane: str) -> None:
        """Move ``lane`` on now (with the other lanes moving on at the same time: one batch of store round trips);
        set a timer if a waiting event has yet to settle."""
        due = await self._moves.submit(lane)
        if due is not None:
            self.schedule(lane, due)

    async def _advance_many(self, lanes: list[str]) -> list[int | None]:
        return await self.mover.advance_many(lanes)

    async def _enqueue(self, entries: list[dict[str, Any]]) -> list[None]:
        await self.store.lanes.enqueue(entries)
        return [None] * len(entries)

    def schedule(self, lane: str, at_ms: int) -> None:
        """Call :meth:`advance` for ``lane`` at ``at_ms`` (epoch ms), unless a call is set for it already."""
        if lane in self._timers:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, (at_ms - now_ms()) / 1000) + 0.01
        self._timers[lane] = loop.call_later(delay, self._fire, lane)

    def _fire(self, lane: str) -> None:
        self._timers.pop(lane, None)
        task = asyncio.get_running_loop().create_task(self._advance_logged(lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _advance_logged(self, lane: str) -> None:
        try:
            await self.advance(lane)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the reconciler's sweep comes back to this lane
            log.warning("moving a lane on failed; the sweep will retry", extra={"lane": lane,
                                                                               "error": str(exc)[:300]})

    async def sweep(self, limit: int = 200) -> int:
        """Move on the lanes whose waiting events were left behind (a timer lost with its process, a head that
        ended without moving its lane); return how many lanes were looked at. Each sweep goes on where the last one
        stopped, so lanes whose head is busy for hours (retries) do not keep the others from being looked at."""
        grace_ms = round(self.settle * 1000) + 2000
        lanes, self._swept_to = await self.store.lanes.stale_lanes(now_ms() - grace_ms, limit,
                                                                   after_ms=self._swept_to)
        for lane in lanes:
            await self.advance(lane)
        return len(lanes)

    def close(self) -> None:
        """Cancel the timers and the pending moves (the sweep of a live process finishes them)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
