"""The reconciler: re-publishes deliveries that vanished (a purged queue, a lost classic queue, a crash between
recording an attempt and publishing the next one).

It runs in the dispatcher (every ``HOOKPOST_RECONCILE_INTERVAL``): the dispatcher already holds a confirmed
broker channel and a store client, and every replica sweeping is harmless because each overdue event is first
*claimed* with a guarded update. It also moves on the lanes of ordered webhooks whose waiting events were left
behind (``dispatcher/lanes.py``). An event counts as lost when it is ``New``/``Retrying`` and its next attempt
is overdue by more than ``HOOKPOST_RECONCILE_GRACE``; while the deliver queue has a backlog nothing is swept,
since overdue events are then most likely merely waiting in it.
"""

import asyncio
import logging
from typing import Protocol

from hookpost.common.deliveries import first_delivery
from hookpost.common.ids import new_id
from hookpost.common.models import now_ms
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.storeguard import GuardedStore

log = logging.getLogger("hookpost.reconciler")


class LaneSweep(Protocol):
    """Finds the lanes of ordered webhooks whose waiting events were left behind."""

    async def sweep(self) -> int:
        """Move such lanes on; return how many were looked at."""


class Reconciler:
    """Finds in-flight events whose delivery is overdue and publishes one for each."""

    def __init__(self, store: GuardedStore, outbox: Outbox, metrics: Metrics, *, grace: float,
                 batch: int = 500, lanes: LaneSweep | None = None) -> None:
        self.store = store
        self.lanes = lanes
        self.outbox = outbox
        self.metrics = metrics
        self.grace = grace
        self.batch = batch

    async def sweep(self) -> int:
        """Run one sweep; return how many deliveries were re-published. Lanes left behind are moved on first,
        backlog or not (their waiting events have no message in any queue)."""
        if not self.outbox.ready:
            return 0
        if self.lanes is not None:
            await self.lanes.sweep()
        backlog = await self.outbox.queue_depth(self.outbox.topology.deliver_queue)
        self.metrics.queue_depth.labels("deliver").set(backlog)
        if backlog > 0:
            return 0
        now = now_ms()
        overdue = await self.store.events.overdue(now - round(self.grace * 1000), self.batch)
        republished = []
        for event in overdue:
            until = now + round(self.grace * 1000)
            if await self.store.events.claim_overdue(event, until, new_id("w")):
                republished.append(first_delivery(event.model_copy(update={"next_attempt_ms": until})))
        await self.outbox.deliveries(republished)
        if republished:
            self.metrics.reconciled.inc(len(republished))
            log.warning("re-published lost deliveries", extra={"count": len(republished)})
        return len(republished)

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        """Sweep every ``interval`` seconds until ``stopping`` is set; errors are logged and the loop goes on."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("reconciler sweep failed; will try again", extra={"error": str(exc)[:300]})
