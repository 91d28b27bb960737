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

    deferrer = Deferrer(store, outbox, limiter, metrics, grace=300.0, request_time=15.0)
    if limiter.should_defer(endpoint):
        await deferrer.defer(message, endpoint)
"""

from collections.abc import Sequence

from hookpost.common.models import DeliveryMessage, now_ms
from hookpost.dispatcher.limits import EndpointLimiter
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.storeguard import GuardedStore


class Deferrer:
    """Publishes deliveries now or into the defer ladder, and keeps deferred events clear of the reconciler.

    ``grace`` is the reconciler's (``HOOKPOST_RECONCILE_GRACE``), ``request_time`` the longest an attempt takes
    once it is back (``HOOKPOST_HTTP_TIMEOUT``).
    """

    def __init__(self, store: GuardedStore, outbox: Outbox, limiter: EndpointLimiter, metrics: Metrics,
                 *, grace: float, request_time: float) -> None:
        self.store = store
        self.outbox = outbox
        self.limiter = limiter
        self.metrics = metrics
        self.grace_ms = round(grace * 1000)
        self.request_ms = round(request_time * 1000)

    async def defer(self, msg: DeliveryMessage, endpoint: str) -> None:
        """Park ``msg`` (see :meth:`EndpointLimiter.should_defer`) in the defer ladder."""
        await self.publish([], [(msg, endpoint)])

    async def publish(self, now: Sequence[DeliveryMessage], later: Sequence[tuple[DeliveryMessage, str]]) -> None:
        """Publish ``now`` to the deliver queue and park ``later`` (message, endpoint), as one confirmed window.

        How long each waits: see the module docstring. Each parked message counts one more deferral in a row.
        """
        parked, delays = [], []
        for msg, endpoint in later:
            level = self.level(msg, endpoint)
            delays.append(self.outbox.topology.defer_delays[level])
            parked.append((await self.keep_clear(msg, delays[-1]), level))
        await self.outbox.deliveries(now, parked)
        for (_, endpoint), delay in zip(later, delays, strict=True):
            self.limiter.park(endpoint, delay)
        if later:
            self.metrics.deferred.inc(len(later))

    async def defer_for(self, msg: DeliveryMessage, wait: float) -> float:
        """Park ``msg`` in the defer ladder for about ``wait`` seconds (its webhook's rate limit is reached: no
        attempt counted); each deferral in a row waits at least twice as long as the one before. Return the
        delay."""
        topology = self.outbox.topology
        level = topology.defer_level(msg.deferrals + 1, wait)
        delay = topology.defer_delays[level]
        await self.outbox.deliveries([], [(await self.keep_clear(msg, delay), level)])
        return delay

    def level(self, msg: DeliveryMessage, endpoint: str) -> int:
        """The defer ladder level for ``msg``: see the module docstring."""
        topology = self.outbox.topology
        wait = self.limiter.expected_wait(endpoint)
        if self.limiter.hanging(endpoint):
            return topology.defer_level(msg.deferrals + 1, wait)
        return topology.defer_level_within(wait)

    async def keep_clear(self, msg: DeliveryMessage, delay: float) -> DeliveryMessage:
        """Return ``msg`` with one more deferral; first move its event's due time along if the delivery, back
        after ``delay`` seconds and one request, could look lost to the reconciler."""
        back_ms = now_ms() + round(delay * 1000)
        due_ms = msg.due_ms
        if due_ms is None or back_ms + self.request_ms > due_ms + self.grace_ms // 2:
            due_ms = back_ms + self.grace_ms // 2
            await self.store.events.postpone(msg.event_id, msg.attempt, due_ms)
        return msg.model_copy(update={"deferrals": msg.deferrals + 1, "due_ms": due_ms})
