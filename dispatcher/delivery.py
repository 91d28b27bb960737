"""One delivery, top to bottom: receive → load the webhook (cache) → send → decide → record → next step → ack.

The attempt number comes with the message. Recording is guarded on the event's previous attempt count, so a
duplicate message (after a crash) sends at most one extra request and never records or schedules twice.
Records of concurrent deliveries share store round trips (:class:`dispatcher.batcher.Batcher`): one
``insert_many`` of attempts and one ``bulk_write`` of event updates per batch.

When a delivery would wait longer than ``HOOKPOST_DEFER_DELAY`` for one of its endpoint's
``HOOKPOST_ENDPOINT_CONCURRENCY`` slots (judged up front from the endpoint's recent request time and its oldest
running request, and in any case after waiting that long), it is parked unchanged in the defer queue (no attempt
counted) instead of holding a prefetch slot, so one slow endpoint cannot starve the others, while a fast endpoint's
burst simply waits its turn in memory.
"""

import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from hookpost.common.amqp import IncomingMessage
from hookpost.common.errors import NotFoundError
from hookpost.common.ids import new_id
from hookpost.common.models import (
    DeliveryMessage,
    EventStatus,
    FailedNotice,
    Webhook,
    due_fields,
    now_ms,
    to_ms,
    utcnow,
)
from hookpost.dispatcher.batcher import Batcher
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.limits import EndpointBusyError, EndpointLimiter, endpoint_key
from hookpost.dispatcher.metrics import Metrics, status_class
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.policy import AttemptResult, Decision, decide, retry_level
from hookpost.dispatcher.sender import Sender
from hookpost.dispatcher.storeguard import StoreGuard
from hookpost.store import Store
from hookpost.store.attempts import attempt_doc

log = logging.getLogger("hookpost.delivery")


def event_changes(decision: Decision, result: AttemptResult | None, now: datetime) -> dict[str, Any]:
    """Return the fields an event gets after an attempt (or after being given up without one) at ``now``."""
    now_ms = to_ms(now)
    changes: dict[str, Any] = {"status": decision.status.value, "updated_at": now}
    if result is not None:
        changes["last_status_code"] = result.status_code
        changes["last_error"] = None if result.ok else (decision.reason or result.summary())
    elif decision.reason:
        changes["last_error"] = decision.reason
    if decision.status == EventStatus.RETRYING and decision.delay is not None:
        changes.update(due_fields(now_ms + round(decision.delay * 1000)))
    else:
        changes.update(due_fields(None))
        changes["finished_at"] = now
    return changes


Record = tuple[dict[str, Any] | None, str, int, dict[str, Any]]


class DeliveryHandler:
    """Consumes ``PREFIX.deliver``."""

    def __init__(self, store: Store, cache: WebhookCache, outbox: Outbox, sender: Sender, limiter: EndpointLimiter,
                 guard: StoreGuard, metrics: Metrics, deferrer: Deferrer, *, delays: tuple[float, ...],
                 max_attempts: int, batch: int = 500) -> None:
        self.store = store
        self.cache = cache
        self.outbox = outbox
        self.sender = sender
        self.limiter = limiter
        self.guard = guard
        self.metrics = metrics
        self.delays = delays
        self.max_attempts = max_attempts
        self.deferrer = deferrer
        self.records: Batcher[Record, bool] = Batcher(self._write_records, max_batch=batch)
        self._attempt_counters: dict[int | None, Any] = {}

    async def _write_records(self, records: list[Record]) -> list[bool]:
        attempts = [a for a, *_ in records if a is not None]
        await self.guard.run(lambda: self.store.attempts.insert(attempts))
        updates = [r[1:] for r in records]
        # tokens made once, outside the retry: a retry after a lost reply then recognises its own writes
        tokens = [new_id("w") for _ in records]
        return await self.guard.run(lambda: self.store.events.record_attempts(updates, tokens))

    async def handle(self, msg: IncomingMessage) -> None:
        """Make the attempt a delivery message asks for, record it, schedule what follows, ack."""
        try:
            dm = DeliveryMessage.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("malformed delivery message dead-lettered", extra={"error": str(exc)[:300]})
            msg.reject(requeue=False)
            return

        hook = self.cache.peek(dm.webhook_id) or await self.guard.run(lambda: self.cache.get(dm.webhook_id))
        if hook is None or not hook.active:
            reason = "webhook deleted" if hook is None else f"webhook disabled: {hook.disabled_reason or 'by operator'}"
            await self._finish(msg, dm, Decision(EventStatus.FAILED, reason=reason), None, None, utcnow())
            return

        endpoint = endpoint_key(hook.url)
        limiter = self.limiter
        try:
            if limiter.should_defer(endpoint):
                raise EndpointBusyError(endpoint)
            token = await limiter.acquire(endpoint)
        except EndpointBusyError:
            await self.deferrer.defer(dm, endpoint)
            msg.ack()
            return
        started = utcnow()
        result = AttemptResult(error="Cancelled")
        try:
            result = await self.sender.send(hook, dm.event_id, dm.payload)
        finally:
            limiter.release(endpoint, token, overloaded=result.overloaded, timed_out=result.timed_out)
        code = result.status_code
        counter = self._attempt_counters.get(code)
        if counter is None:
            counter = self._attempt_counters[code] = self.metrics.attempts.labels(status_class(code))
        counter.inc()
        self.metrics.duration.observe(result.duration_ms / 1000)

        decision = decide(result, dm.attempt, dm.budget_start, self.delays, self.max_attempts)
        attempt = attempt_doc(dm.event_id, hook.id, dm.attempt, started, result.duration_ms, code,
                              None if result.ok else result.error, result.excerpt)
        await self._finish(msg, dm, decision, result, attempt, started + timedelta(milliseconds=result.duration_ms),
                           hook)

    async def _reschedule_next(self, dm: DeliveryMessage) -> bool:
        """For a redelivered attempt that is on record as the event's latest and left it Retrying: the first try
        may have lost the broker between recording and publishing the next attempt, so publish it (the next
        attempt's own guard makes a duplicate harmless). Return whether it did."""
        try:
            ev = await self.guard.run(lambda: self.store.events.get(dm.event_id))
        except NotFoundError:
            return False
        if ev.status != EventStatus.RETRYING or ev.attempt_count != dm.attempt:
            return False
        wait = None if ev.next_attempt_ms is None else (ev.next_attempt_ms - now_ms()) / 1000
        level = retry_level(self.delays, dm.attempt - ev.budget_start, wait)  # as long as the recorded due time
        await self.outbox.retry(dm.model_copy(update={"attempt": dm.attempt + 1, "due_ms": ev.next_attempt_ms}), level)
        return True

    async def _finish(self, msg: IncomingMessage, dm: DeliveryMessage, decision: Decision,
                      result: AttemptResult | None, attempt: dict[str, Any] | None, now: datetime,
                      hook: Webhook | None = None) -> None:
        changes = event_changes(decision, result, now)
        if attempt is None:  # given up without an attempt: the count stays
            changes["attempt_count"] = dm.attempt - 1
        recorded = await self.records.submit((attempt, dm.event_id, dm.attempt, changes))
        if recorded and decision.status == EventStatus.FINISHED:  # the common case: no log record below INFO
            msg.ack()
            self.metrics.events_finished.inc()
            if log.isEnabledFor(logging.INFO):
                log.info("delivered", extra=_log_extra(dm, decision, result))
            return
        extra = _log_extra(dm, decision, result)
        if not recorded:
            if msg.redelivered and await self._reschedule_next(dm):
                log.info("redelivered attempt was already recorded; next attempt scheduled again", extra=extra)
            else:
                log.info("duplicate delivery ignored (event already past this attempt)", extra=extra)
            msg.ack()
            return

        if decision.status == EventStatus.RETRYING and decision.retry_level is not None:
            nxt = dm.model_copy(update={"attempt": dm.attempt + 1, "due_ms": changes["next_attempt_ms"]})
            await self.outbox.retry(nxt, decision.retry_level)
            self.metrics.retries.labels(self.outbox.topology.retry_label(decision.retry_level)).inc()
            log.info("attempt failed; retry scheduled", extra={**extra, "error": changes.get("last_error"),
                                                              "retry_in_s": decision.delay})
        elif decision.status == EventStatus.FAILED:
            await self.outbox.failed(FailedNotice(
                event_id=dm.event_id, webhook_id=dm.webhook_id, type=str(dm.payload.get("type", "")),
                attempts=dm.attempt if attempt else dm.attempt - 1,
                last_status_code=result.status_code if result else None, last_error=changes.get("last_error")))
            self.metrics.events_failed.inc()
            log.warning("event failed", extra={**extra, "error": changes.get("last_error")})
            if decision.disable_webhook and hook is not None:
                await self.guard.run(lambda: self.store.webhooks.set_active(hook.id, False, decision.reason))
                self.cache.invalidate()
                log.warning("webhook disabled: receiver answered 410 Gone", extra={"webhook_id": hook.id})
        msg.ack()


def _log_extra(dm: DeliveryMessage, decision: Decision, result: AttemptResult | None) -> dict[str, Any]:
    return {"event_id": dm.event_id, "webhook_id": dm.webhook_id, "attempt": dm.attempt,
            "status": decision.status.value, "status_code": result.status_code if result else None,
            "duration_ms": result.duration_ms if result else None}
