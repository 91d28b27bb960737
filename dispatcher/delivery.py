"""One delivery, top to bottom: the consumer of ``PREFIX.deliver``.

:meth:`DeliveryHandler.handle` reads like the path a delivery takes, one step per method:

1. :meth:`~DeliveryHandler.receive` — parse the message (a malformed one is dead-lettered);
2. look up the webhook in the in-memory cache (:class:`~hookpost.dispatcher.cache.WebhookCache`); a deleted or
   disabled webhook ends the event ``Failed`` without a request (:meth:`~DeliveryHandler.give_up`);
3. :meth:`~DeliveryHandler.take_slot` — hold the delivery in the store if its endpoint's circuit breaker is open
   (:mod:`~hookpost.dispatcher.breaker`); else wait for a slot of the receiver's endpoint, or park the delivery in
   the defer ladder (:mod:`~hookpost.dispatcher.limits` decides, :mod:`~hookpost.dispatcher.deferral` parks); then
   wait for the webhook's rate limit (:mod:`~hookpost.dispatcher.ratelimit`), or park it. None of these counts an
   attempt;
4. :meth:`~DeliveryHandler.send` — the signed POST (:mod:`~hookpost.dispatcher.sender`), whose outcome teaches
   the endpoint's limit and its breaker;
5. decide — Finished, Retrying at level k, or Failed (:func:`~hookpost.dispatcher.policy.decide`, pure);
6. :meth:`~DeliveryHandler.record` — the attempt and the event's new state, batched with concurrent deliveries
   (one ``insert_many`` + one ``bulk_write`` per batch), guarded on the event's previous attempt count, so a
   duplicate message records nothing;
7. :meth:`~DeliveryHandler.schedule_next` — publish the next attempt to its retry queue, or the failure notice;
8. return the :class:`~hookpost.dispatcher.consumer.Verdict`; the consumer settles the message (acks it).

A crash anywhere replays safely: the message is redelivered, a recorded attempt is not recorded again, and a
redelivered attempt whose successor may not have been published yet is scheduled again
(:meth:`~DeliveryHandler.on_duplicate`).
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from hookpost.common.amqp import IncomingMessage
from hookpost.common.deliveries import next_delivery
from hookpost.common.errors import NotFoundError
from hookpost.common.ids import new_id
from hookpost.common.models import (
    Attempt,
    DeliveryMessage,
    EventStatus,
    FailedNotice,
    Webhook,
    WebhookEvent,
    due_fields,
    now_ms,
    to_ms,
    utcnow,
)
from hookpost.dispatcher.batcher import Batcher
from hookpost.dispatcher.breaker import Admission, Breaker, counts_as_failure
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.consumer import Verdict
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.limits import EndpointBusyError, EndpointLimiter, endpoint_key
from hookpost.dispatcher.metrics import Metrics, status_class
from hookpost.dispatcher.notices import EVENT_FAILED, Notices, is_notice
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.policy import AttemptResult, Decision, decide, retry_level
from hookpost.dispatcher.ratelimit import RateLimits
from hookpost.dispatcher.sender import Sender
from hookpost.dispatcher.storeguard import GuardedStore
from hookpost.store.attempts import attempt_id, first_attempt_field, kept_in_event

log = logging.getLogger("hookpost.delivery")


def event_changes(decision: Decision, result: AttemptResult | None, now: datetime) -> dict[str, Any]:
    """Return the fields an event gets after an attempt (or after being given up without one) at ``now``."""
    changes: dict[str, Any] = {"status": decision.status.value, "updated_at": now, "held": None}
    if result is not None:
        changes["last_status_code"] = result.status_code
        changes["last_error"] = None if result.ok else (decision.reason or result.summary())
    elif decision.reason:
        changes["last_error"] = decision.reason
    if decision.status == EventStatus.RETRYING and decision.delay is not None:
        changes.update(due_fields(to_ms(now) + round(decision.delay * 1000)))
    else:
        changes.update(due_fields(None))
        changes["finished_at"] = now
    return changes


@dataclass(frozen=True)
class Outcome:
    """What one delivery writes to the store: the attempt made (None when given up without one) and the event's
    new fields, guarded on the attempt number (``attempt_count`` becomes ``attempt``)."""

    event_id: str
    attempt: int
    changes: dict[str, Any]
    made: Attempt | None = None


class DeliveryHandler:
    """Consumes ``PREFIX.deliver``: one message, one attempt (see the module docstring)."""

    def __init__(self, store: GuardedStore, cache: WebhookCache, outbox: Outbox, sender: Sender,
                 limiter: EndpointLimiter, deferrer: Deferrer, metrics: Metrics, breaker: Breaker, notices: Notices,
                 *, delays: tuple[float, ...], max_attempts: int, batch: int = 500) -> None:
        self.store = store
        self.cache = cache
        self.outbox = outbox
        self.sender = sender
        self.limiter = limiter
        self.deferrer = deferrer
        self.metrics = metrics
        self.breaker = breaker
        self.notices = notices
        self.rates = RateLimits()
        self.delays = delays
        self.max_attempts = max_attempts
        self.records: Batcher[Outcome, bool] = Batcher(self._write, max_batch=batch)

    async def handle(self, msg: IncomingMessage) -> Verdict:
        """Make the attempt a delivery message asks for, record it and schedule what follows."""
        dm = self.receive(msg)
        if dm is None:
            return Verdict.DEAD_LETTER
        hook = await self.cache.get(dm.webhook_id)
        if hook is None or not hook.active:
            return await self.give_up(dm, hook)
        endpoint = endpoint_key(hook.url)
        token = await self.take_slot(dm, hook, endpoint)
        if token is None:
            return Verdict.ACK  # held behind the breaker or parked in the defer ladder, no attempt counted
        started, result = await self.send(hook, dm, endpoint, token)
        await self.breaker.observe(endpoint, result, probe=dm.probe)
        if dm.probe and counts_as_failure(result):  # a failed probe is recorded, not charged to the event's budget
            dm = dm.model_copy(update={"budget_start": dm.budget_start + 1})
        decision = decide(result, dm.attempt, dm.budget_start, self.delays, self.max_attempts)
        done = started + timedelta(milliseconds=result.duration_ms)
        made = Attempt(id=attempt_id(dm.event_id, dm.attempt), event_id=dm.event_id, webhook_id=hook.id,
                       attempt=dm.attempt, started_at=started, duration_ms=result.duration_ms,
                       status_code=result.status_code, error=None if result.ok else result.error,
                       response_excerpt=result.excerpt)
        changes = event_changes(decision, result, done)
        if dm.probe:
            changes["budget_start"] = dm.budget_start
        if not await self.record(Outcome(dm.event_id, dm.attempt, changes, made)):
            return await self.on_duplicate(msg, dm)
        await self.schedule_next(dm, decision, result, changes["next_attempt_ms"])
        return Verdict.ACK

    async def poisoned(self, msg: IncomingMessage, reason: str) -> Verdict:
        """End a delivery that fails every time it is handled: its event ``Failed`` with ``reason``."""
        dm = self.receive(msg)
        if dm is None:
            return Verdict.DEAD_LETTER
        return await self.give_up(dm, None, f"delivery {reason}")

    def receive(self, msg: IncomingMessage) -> DeliveryMessage | None:
        """Parse the message; None (logged) if it is not a delivery message."""
        try:
            return DeliveryMessage.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("malformed delivery message dead-lettered", extra={"error": str(exc)[:300]})
            return None

    async def give_up(self, dm: DeliveryMessage, hook: Webhook | None, reason: str | None = None) -> Verdict:
        """End the event ``Failed`` without a request: its webhook was deleted or disabled (or its stored
        document no longer validates), or ``reason``."""
        decision = Decision(EventStatus.FAILED, reason=reason or self.unserved(dm, hook))
        changes = {**event_changes(decision, None, utcnow()), "attempt_count": dm.attempt - 1}  # count stays
        if await self.record(Outcome(dm.event_id, dm.attempt, changes)):
            await self.schedule_next(dm, decision, None, None)
        return Verdict.ACK

    def unserved(self, dm: DeliveryMessage, hook: Webhook | None) -> str:
        """Why the webhook of ``dm`` cannot be served."""
        if hook is not None:
            return f"webhook disabled: {hook.disabled_reason or 'by operator'}"
        if problem := self.cache.problem(dm.webhook_id):
            return f"webhook document does not validate: {problem}"
        return "webhook deleted"

    async def take_slot(self, dm: DeliveryMessage, hook: Webhook, endpoint: str) -> int | None:
        """Wait for a slot of ``endpoint`` (and the webhook's rate limit) and return its token; or hold or park
        the delivery and return None."""
        if self.breaker.admit(dm, endpoint) is Admission.HOLD:
            await self.breaker.hold(dm, endpoint)
            return None
        try:
            if self.limiter.should_defer(endpoint):
                raise EndpointBusyError(endpoint)
            token = await self.limiter.acquire(endpoint)
        except EndpointBusyError:
            await self.deferrer.defer(dm, endpoint)
            return None
        if self.breaker.admit(dm, endpoint) is Admission.HOLD:  # it opened while the delivery waited
            self.limiter.give_back(endpoint, token)
            await self.breaker.hold(dm, endpoint)
            return None
        if hook.rate_limit is not None and not await self.pace(dm, hook, endpoint, token):
            return None
        return token

    async def pace(self, dm: DeliveryMessage, hook: Webhook, endpoint: str, token: int) -> bool:
        """Wait for the instant the webhook's rate limit gives this request (holding the slot ``token``); or give
        the slot back, park the delivery for about the work ahead of it and return False."""
        rate = hook.rate_limit or 0.0
        wait = self.rates.reserve(hook.id, rate)
        try:
            while wait is not None:
                if wait > 0:
                    await asyncio.sleep(wait)
                wait = self.rates.room(hook.id, rate)  # 0.0: counted as sent now
                if wait == 0.0:
                    break
                if wait > self.rates.max_wait:
                    wait = None
        except BaseException:
            self.limiter.give_back(endpoint, token)
            raise
        if wait is None:
            self.limiter.give_back(endpoint, token)
            delay = await self.deferrer.defer_for(dm, self.rates.expected_wait(hook.id, rate))
            self.rates.park(hook.id, delay)
            self.metrics.rate_limited.inc()
            return False
        return True

    async def send(self, hook: Webhook, dm: DeliveryMessage, endpoint: str,
                   token: int) -> tuple[datetime, AttemptResult]:
        """POST the payload in the slot ``token``; return when it started and what came back."""
        started = utcnow()
        result = AttemptResult(error="Cancelled")
        try:
            result = await self.sender.send(hook, dm.event_id, dm.payload)
        finally:
            self.limiter.release(endpoint, token, overloaded=result.overloaded, timed_out=result.timed_out)
            if hook.rate_limit is not None:
                self.rates.done(hook.id)
        self.metrics.attempts.labels(status_class(result.status_code)).inc()
        self.metrics.duration.observe(result.duration_ms / 1000)
        return started, result

    async def record(self, outcome: Outcome) -> bool:
        """Record ``outcome`` (batched with concurrent deliveries); False if the event was already past this
        attempt (a duplicate message)."""
        return await self.records.submit(outcome)

    async def _write(self, outcomes: list[Outcome]) -> list[bool]:
        """Write a batch of outcomes: the attempts after the first in one round trip (if any), then the event
        updates, first attempts included, in one."""
        await self.store.attempts.insert([o.made for o in outcomes if o.made is not None and not kept_in_event(o.made)])
        # tokens made once, outside the store's retry: a retry after a lost reply recognises its own writes
        tokens = [new_id("w") for _ in outcomes]
        return await self.store.events.record_attempts(
            [(o.event_id, o.attempt, o.changes | first_attempt_field(o.made)) for o in outcomes],
            tokens)

    async def schedule_next(self, dm: DeliveryMessage, decision: Decision, result: AttemptResult | None,
                            due_ms: int | None) -> None:
        """Publish what follows a recorded outcome: the next attempt (due at ``due_ms``, as recorded), or the
        failure notice."""
        extra = _log_extra(dm, decision, result)
        if decision.status == EventStatus.FINISHED:
            self.metrics.events_finished.inc()
            log.info("delivered", extra=extra)
        elif decision.status == EventStatus.RETRYING and decision.retry_level is not None:
            await self.outbox.retry(next_delivery(dm, due_ms), decision.retry_level)
            self.metrics.retries.labels(self.outbox.topology.retry_label(decision.retry_level)).inc()
            log.info("attempt failed; retry scheduled", extra={**extra, "retry_in_s": decision.delay})
        elif decision.status == EventStatus.FAILED:
            error = decision.reason or (result.summary() if result else None)
            await self.announce_failure(dm, attempts=dm.attempt if result is not None else dm.attempt - 1,
                                        status_code=result.status_code if result else None, error=error,
                                        disable=decision.disable_webhook)
            self.metrics.events_failed.inc()
            log.warning("event failed", extra={**extra, "error": error})
            event_type = str(dm.payload.get("type", ""))
            if not is_notice(event_type):  # a notice that fails makes no further notice
                await self.notices.send(EVENT_FAILED, dm.webhook_id, {
                    "event_id": dm.event_id, "event_type": event_type, "reason": error})

    async def announce_failure(self, dm: DeliveryMessage, *, attempts: int, status_code: int | None,
                               error: str | None, disable: bool) -> None:
        """Publish the failure notice of ``dm``'s event; and disable its webhook if the receiver asked to stop."""
        await self.outbox.failed(FailedNotice(
            event_id=dm.event_id, webhook_id=dm.webhook_id, type=str(dm.payload.get("type", "")),
            attempts=attempts, last_status_code=status_code, last_error=error))
        if disable:
            await self.store.webhooks.set_active(dm.webhook_id, False, error)
            self.cache.invalidate()
            log.warning("webhook disabled: receiver answered 410 Gone", extra={"webhook_id": dm.webhook_id})

    async def on_duplicate(self, msg: IncomingMessage, dm: DeliveryMessage) -> Verdict:
        """The event was already past this attempt. If this message was redelivered and its outcome is the
        event's latest, the first try may have lost the broker between recording the outcome and publishing what
        follows it: publish that again — the next attempt (its own guard makes a duplicate harmless), or the
        failure notice (and the webhook disabled after a 410)."""
        ev = await self._latest(dm) if msg.redelivered else None
        if ev is not None and ev.status == EventStatus.RETRYING:
            wait = None if ev.next_attempt_ms is None else (ev.next_attempt_ms - now_ms()) / 1000
            level = retry_level(self.delays, dm.attempt - ev.budget_start, wait)  # no sooner than on record
            await self.outbox.retry(next_delivery(dm, ev.next_attempt_ms), level)
            log.info("redelivered attempt was already recorded; next attempt scheduled again",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        elif ev is not None and ev.status == EventStatus.FAILED:
            await self.announce_failure(dm, attempts=ev.attempt_count, status_code=ev.last_status_code,
                                        error=ev.last_error, disable=ev.last_status_code == 410)
            log.info("redelivered attempt was already recorded Failed; failure notice published again",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        else:
            log.info("duplicate delivery ignored (event already past this attempt)",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        return Verdict.ACK

    async def _latest(self, dm: DeliveryMessage) -> WebhookEvent | None:
        """The event of ``dm`` if ``dm``'s outcome is its latest: Retrying after this attempt, or Failed at this
        attempt (or given up before it)."""
        try:
            ev = await self.store.events.get(dm.event_id)
        except NotFoundError:
            return None
        if ev.status == EventStatus.RETRYING and ev.attempt_count == dm.attempt:
            return ev
        if ev.status == EventStatus.FAILED and ev.attempt_count in (dm.attempt, dm.attempt - 1):
            return ev
        return None


def _log_extra(dm: DeliveryMessage, decision: Decision, result: AttemptResult | None) -> dict[str, Any]:
    return {"event_id": dm.event_id, "webhook_id": dm.webhook_id, "attempt": dm.attempt,
            "status": decision.status.value, "status_code": result.status_code if result else None,
            "duration_ms": result.duration_ms if result else None,
            "error": None if result is None or result.ok else (decision.reason or result.summary())}
