"""Deferral: parking a delivery in the defer ladder instead of holding a prefetch slot, when
:meth:`EndpointLimiter.should_defer` says so (its endpoint hangs, or holds its share of the window while others
wait).

A parked delivery waits in ``PREFIX.defer.<d>`` (no attempt counted), then comes back to ``PREFIX.deliver``. For
a hanging endpoint it waits at least the endpoint's expected wait and twice as long as its previous deferral in a
row (so it does not cycle every second); for a healthy endpoint that holds its share it waits the longest rung
that is not longer than the work ahead of it for that endpoint (never later than its turn).

The event's ``next_attempt_ms`` is pushed along before the delivery would look lost to the reconciler (overdue by
``HOOKPOST_RECONCILE_GRACE``): without that, every reconciler sweep would add one more copy of a delivery that an
endpoint hanging for longer than the grace keeps deferring. The delivery message carries the due time on record
(``due_ms``), so this costs one store write per half grace of deferral, not one per deferral.

Example::

    deferrer = Deferrer(store, outbox, limiter, guard, metrics, grace=300.0, request_time=15.0)
    if limiter.should_defer(endpoint):
        await deferrer.defer(message, endpoint)
"""

from collections.abc import Sequence

from hookpost.common.models import DeliveryMessage, now_ms
from hookpost.dispatcher.limits import EndpointLimiter
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.storeguard import StoreGuard
from hookpost.store import Store


class Deferrer:
    """Publishes deliveries now or into the defer ladder, and keeps deferred events clear of the reconciler."""

    def __init__(self, store: Store, outbox: Outbox, limiter: EndpointLimiter, guard: StoreGuard, metrics: Metrics,
                 *, grace: float, request_time: float) -> None:
        self.store = store
        self.outbox = outbox
        self.limiter = limiter
        self.guard = guard
        self.metrics = metrics
        self.grace_ms = round(grace * 1000)
        self.request_ms = round(request_time * 1000)

    async def defer(self, msg: DeliveryMessage, endpoint: str) -> None:
        """Park ``msg`` (its endpoint is busy) in the defer ladder."""
        await self.publish([], [(msg, endpoint)])

    async def publish(self, now: Sequence[DeliveryMessage], later: Sequence[tuple[DeliveryMessage, str]]) -> None:
        """Publish ``now`` to the deliver queue and defer ``later`` (message, endpoint), as one confirmed window.

        How long each waits: see the module docstring.
        """
        topology = self.outbox.topology
        deferred, delays = [], []
        for msg, endpoint in later:
            wait = self.limiter.expected_wait(endpoint)
            level = (topology.defer_level(msg.deferrals + 1, wait) if self.limiter.hanging(endpoint)
                     else topology.defer_level_within(wait))
            delays.append(topology.defer_delays[level])
            back_ms = now_ms() + round(delays[-1] * 1000)
            if msg.due_ms is None or back_ms + self.request_ms > msg.due_ms + self.grace_ms // 2:
                until = back_ms + self.grace_ms // 2
                await self.guard.run(lambda m=msg, u=until: self.store.events.postpone(m.event_id, m.attempt, u))
                msg = msg.model_copy(update={"due_ms": until})
            deferred.append((msg, level))
        await self.outbox.deliveries(now, deferred)
        for (_, endpoint), delay in zip(later, delays, strict=True):
            self.limiter.park(endpoint, delay)
        if later:
            self.metrics.deferred.inc(len(later))
