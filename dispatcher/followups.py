"""What follows a recorded delivery outcome: the next attempt, or the failure notice; and the replay of either.

After the store has the outcome, :meth:`FollowUps.after` publishes what comes next — the delivery of the next
attempt into the retry queue of its level, or, for a ``Failed`` event, the failure notice (and the webhook
disabled after a 410 Gone, and a ``hookpost.event.failed`` notice to the webhooks subscribed to it) — and counts
it. A crash between recording and publishing loses nothing: the message is redelivered, the store already has its
outcome, and :meth:`FollowUps.again` publishes the same follow-up once more from what the store recorded.

Example::

    if await recorder.record(outcome):
        await followups.after(message, decision, result, due_ms=outcome.changes["next_attempt_ms"])
    elif message_was_redelivered:
        await followups.again(message)
"""

import logging
from typing import Any, Protocol

from hookpost.common.deliveries import next_delivery
from hookpost.common.errors import NotFoundError
from hookpost.common.models import DeliveryMessage, EventStatus, FailedNotice, WebhookEvent, now_ms
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.notices import EVENT_FAILED, Notices, is_notice
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.policy import AttemptResult, Decision, retry_level
from hookpost.dispatcher.storeguard import GuardedStore

log = logging.getLogger("hookpost.delivery")


class LaneSteps(Protocol):
    """Moves an ordered webhook's lane on."""

    async def ended(self, lane: str) -> None:
        """Start the next event of ``lane`` if its head has ended."""


class FollowUps:
    """Publishes what follows an outcome: the next attempt or the failure notice (see the module docstring)."""

    def __init__(self, store: GuardedStore, cache: WebhookCache, outbox: Outbox, notices: Notices,
                 metrics: Metrics, *, delays: tuple[float, ...], lanes: LaneSteps | None = None) -> None:
        self.store = store
        self.lanes = lanes
        self.cache = cache
        self.outbox = outbox
        self.notices = notices
        self.metrics = metrics
        self.delays = delays

    async def after(self, dm: DeliveryMessage, decision: Decision, result: AttemptResult | None,
                    due_ms: int | None) -> None:
        """Publish what follows the recorded outcome of ``dm`` (``result`` None: given up without a request):
        the next attempt, due at ``due_ms`` as recorded, or the failure notice."""
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
            await self._announce_failure(dm, attempts=dm.attempt if result is not None else dm.attempt - 1,
                                         status_code=result.status_code if result else None, error=error,
                                         disable=decision.disable_webhook)
            self.metrics.events_failed.inc()
            log.warning("event failed", extra={**extra, "error": error})
            event_type = str(dm.payload.get("type", ""))
            if not is_notice(event_type):  # a notice that fails makes no further notice
                await self.notices.send(EVENT_FAILED, dm.webhook_id, {
                    "event_id": dm.event_id, "event_type": event_type, "reason": error})
        if dm.lane is not None and self.lanes is not None and decision.status in (EventStatus.FINISHED,
                                                                                 EventStatus.FAILED):
            await self.lanes.ended(dm.lane)  # the lane's next event starts

    async def again(self, dm: DeliveryMessage) -> None:
        """Publish again what followed ``dm``'s outcome, if the store shows that outcome as the event's latest:
        the first try may have lost the broker between recording it and publishing what follows — the next
        attempt (its own guard makes a duplicate harmless), or the failure notice (and the webhook disabled
        after a 410). Otherwise the event has moved on, and nothing is published."""
        ev = await self._latest(dm)
        if ev is not None and ev.status == EventStatus.RETRYING:
            wait = None if ev.next_attempt_ms is None else (ev.next_attempt_ms - now_ms()) / 1000
            level = retry_level(self.delays, dm.attempt - ev.budget_start, wait)  # no sooner than on record
            await self.outbox.retry(next_delivery(dm, ev.next_attempt_ms), level)
            log.info("redelivered attempt was already recorded; next attempt scheduled again",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        elif ev is not None and ev.status == EventStatus.FAILED:
            await self._announce_failure(dm, attempts=ev.attempt_count, status_code=ev.last_status_code,
                                         error=ev.last_error, disable=ev.last_status_code == 410)
            log.info("redelivered attempt was already recorded Failed; failure notice published again",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        else:
            log.info("duplicate delivery ignored (event already past this attempt)",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        if dm.lane is not None and self.lanes is not None:
            await self.lanes.ended(dm.lane)  # moving the lane on may have been lost too (idempotent)

    async def _announce_failure(self, dm: DeliveryMessage, *, attempts: int, status_code: int | None,
                                error: str | None, disable: bool) -> None:
        """Publish the failure notice of ``dm``'s event; and disable its webhook if the receiver asked to stop."""
        await self.outbox.failed(FailedNotice(
            event_id=dm.event_id, webhook_id=dm.webhook_id, type=str(dm.payload.get("type", "")),
            attempts=attempts, last_status_code=status_code, last_error=error))
        if disable:
            await self.store.webhooks.set_active(dm.webhook_id, False, error)
            self.cache.invalidate()
            log.warning("webhook disabled: receiver answered 410 Gone", extra={"webhook_id": dm.webhook_id})

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
    extra = {"event_id": dm.event_id, "webhook_id": dm.webhook_id, "attempt": dm.attempt,
             "status": decision.status.value, "status_code": result.status_code if result else None,
             "duration_ms": result.duration_ms if result else None,
             "error": None if result is None or result.ok else (decision.reason or result.summary())}
    if dm.trace is not None:  # the attempt's span has ended: the event's trace id ties the line to its trace
        extra["trace_id"] = dm.trace.trace_id
    return extra
