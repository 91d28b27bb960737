"""The gate in front of a receiver: whether, and when, a delivery may make its request.

Three rules stand between a delivery and its POST, checked in this order; none of them counts an attempt:

1. the endpoint's **circuit breaker** (:mod:`~hookpost.dispatcher.breaker`): while it is open the delivery is
   *held* in the store until the next probe;
2. the endpoint's **concurrency** (:mod:`~hookpost.dispatcher.limits`): the delivery waits in memory for a slot,
   or is *parked* in the defer ladder (:mod:`~hookpost.dispatcher.deferral`) when waiting would hold a prefetch
   slot that other endpoints need;
3. the webhook's **rate limit** (:mod:`~hookpost.dispatcher.ratelimit`): it waits for its instant, holding the
   slot, or gives the slot back and is parked for about the work ahead of it.

Example::

    slot = await gate.enter(message, hook)
    if slot is None:
        return                                   # held or parked: ack the message
    result = AttemptResult(error="Cancelled")
    try:
        result = await sender.send(hook, message.event_id, message.payload)
    finally:
        gate.leave(slot, result)                 # the slot is free again, the limiter learns the pace
    await gate.observe(slot, result)             # the breaker learns the outcome
"""

import asyncio

from hookpost.common.models import DeliveryMessage, Webhook
from hookpost.dispatcher.breaker import Admission, Breaker
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.delivery import Slot
from hookpost.dispatcher.limits import EndpointBusyError, EndpointLimiter, endpoint_key
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.policy import AttemptResult
from hookpost.dispatcher.ratelimit import RateLimits
from hookpost.dispatcher.tracing import DEFERRED, HELD, RATE_LIMITED, not_sent


class Gate:
    """Admits deliveries to their endpoints: the breaker, then a concurrency slot, then the rate limit; and tells
    fan-out which new events to hold or to defer at once."""

    def __init__(self, breaker: Breaker, limiter: EndpointLimiter, deferrer: Deferrer, metrics: Metrics) -> None:
        self.breaker = breaker
        self.limiter = limiter
        self.deferrer = deferrer
        self.metrics = metrics
        self.rates = RateLimits()

    async def enter(self, dm: DeliveryMessage, hook: Webhook) -> Slot | None:
        """Wait for a slot of ``hook``'s endpoint (and for its rate limit) and return it; or hold the delivery
        behind the open breaker, or park it in the defer ladder, and return None."""
        endpoint = endpoint_key(hook.url)
        if self.breaker.admit(dm, endpoint) is Admission.HOLD:
            await self.breaker.hold(dm, endpoint)
            not_sent(dm, HELD)
            return None
        try:
            if self.limiter.should_defer(endpoint):
                raise EndpointBusyError(endpoint)
            token = await self.limiter.acquire(endpoint)
        except EndpointBusyError:
            await self.deferrer.defer(dm, endpoint)
            not_sent(dm, DEFERRED)
            return None
        slot = Slot(endpoint, token, hook.id, hook.rate_limit, probe=dm.probe)
        if self.breaker.admit(dm, endpoint) is Admission.HOLD:  # it opened while the delivery waited
            self.limiter.give_back(endpoint, token)
            await self.breaker.hold(dm, endpoint)
            not_sent(dm, HELD)
            return None
        if hook.rate_limit is not None and not await self._pace(dm, slot):
            return None
        return slot

    def leave(self, slot: Slot, result: AttemptResult) -> None:
        """Free ``slot`` after its request; the limiter learns the endpoint's pace from ``result``."""
        self.limiter.release(slot.endpoint, slot.token, overloaded=result.overloaded, timed_out=result.timed_out)
        if slot.rate_limit is not None:
            self.rates.done(slot.webhook_id)

    async def observe(self, slot: Slot, result: AttemptResult) -> None:
        """Tell the endpoint's breaker how the request in ``slot`` went (it may open or close)."""
        await self.breaker.observe(slot.endpoint, result, probe=slot.probe)

    def hold_new_at(self, endpoint: str) -> int | None:
        """For fan-out: if the breaker of ``endpoint`` is open, when a new event for it is due (its next probe)."""
        return self.breaker.hold_new_at(endpoint)

    def held_new(self, endpoint: str, n: int) -> None:
        """For fan-out: ``n`` new events of ``endpoint`` were stored held behind its breaker."""
        self.breaker.held_new(endpoint, n)

    def hanging(self, endpoint: str) -> bool:
        """For fan-out: tell whether ``endpoint`` hangs now (a delivery to it goes straight to the defer ladder)."""
        return self.limiter.hanging(endpoint)

    async def _pace(self, dm: DeliveryMessage, slot: Slot) -> bool:
        """Wait for the instant the webhook's rate limit gives this request (holding ``slot``); or give the slot
        back, park the delivery for about the work ahead of it and return False."""
        rate = slot.rate_limit or 0.0
        wait = self.rates.reserve(slot.webhook_id, rate)
        try:
            while wait is not None:
                if wait > 0:
                    await asyncio.sleep(wait)
                wait = self.rates.room(slot.webhook_id, rate)  # 0.0: counted as sent now
                if wait == 0.0:
                    break
                if wait > self.rates.max_wait:
                    wait = None
        except BaseException:
            self.limiter.give_back(slot.endpoint, slot.token)
            raise
        if wait is None:
            self.limiter.give_back(slot.endpoint, slot.token)
            delay = await self.deferrer.defer_for(dm, self.rates.expected_wait(slot.webhook_id, rate))
            self.rates.park(slot.webhook_id, delay)
            self.metrics.rate_limited.inc()
            not_sent(dm, RATE_LIMITED)
            return False
        return True
