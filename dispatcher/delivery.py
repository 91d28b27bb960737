"""One delivery, top to bottom: the consumer of ``PREFIX.deliver``.

:meth:`DeliveryHandler.handle` reads like the path a delivery takes:

1. :meth:`~DeliveryHandler.receive` — parse the message (a malformed one is dead-lettered);
2. look up the webhook (:class:`Webhooks`); a deleted or disabled webhook ends the event ``Failed`` without a
   request (:meth:`~DeliveryHandler.give_up`); the event of an ordered webhook (``ordering=entity``) must still
   be its lane's head and wait for this attempt (:class:`LaneCheck`), or nothing is sent;
3. enter the :class:`Gate` — the endpoint's circuit breaker, a concurrency slot, the webhook's rate limit; a
   delivery held behind an open breaker or parked in the defer ladder is acked here, no attempt counted;
4. :meth:`~DeliveryHandler.send` — the signed POST (:class:`Sender`) in the slot; the gate learns its outcome;
5. decide — Finished, Retrying at level k, or Failed (:func:`~hookpost.dispatcher.policy.decide`, pure);
6. record the attempt and the event's new state (:class:`Recorder`), guarded on the event's previous attempt
   count, so a duplicate message records nothing (:meth:`~DeliveryHandler.duplicate`);
7. publish what follows (:class:`FollowUps`) — the next attempt into its retry queue, or the failure notice;
8. return the :class:`~hookpost.dispatcher.consumer.Verdict`; the consumer settles the message.

With ``HOOKPOST_FIRST_ATTEMPT=inline``, fan-out makes new events' first attempts itself through
:meth:`~DeliveryHandler.first`, which runs steps 3 to 7 the same way (``dispatcher/inline.py``).

Each collaborator is named by the small interface below that says what this module needs of it; the dispatcher
wires the real ones (``dispatcher/gate.py``, ``sender.py``, ``recorder.py``, ``followups.py``, ``cache.py``) in
``dispatcher/worker.py``. A crash anywhere replays safely: the message is redelivered, a recorded attempt is not
recorded again, and what followed it is published again (:meth:`FollowUps.again`).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from hookpost.common.amqp import IncomingMessage
from hookpost.common.models import Attempt, DeliveryMessage, EventStatus, Webhook, attempt_id, due_fields, to_ms, utcnow
from hookpost.dispatcher.consumer import Verdict
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.policy import AttemptResult, Decision, counts_as_failure, decide
from hookpost.dispatcher.tracing import GAVE_UP, attempt, not_sent

log = logging.getLogger("hookpost.delivery")


@dataclass(frozen=True)
class Slot:
    """A place in front of one receiver endpoint, held for one request."""

    endpoint: str
    token: int
    webhook_id: str
    rate_limit: float | None = None
    probe: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one delivery writes to the store: the attempt made (None when given up without one) and the event's
    new fields, guarded on the attempt number (``attempt_count`` becomes ``attempt``)."""

    event_id: str
    attempt: int
    changes: dict[str, Any]
    made: Attempt | None = None


class Webhooks(Protocol):
    """The webhooks as this process knows them (the in-memory cache)."""

    async def get(self, webhook_id: str) -> Webhook | None:
        """The webhook, or None if it is deleted (or its stored document does not validate)."""

    def problem(self, webhook_id: str) -> str | None:
        """Why the stored document of ``webhook_id`` does not validate, if it does not."""


class LaneCheck(Protocol):
    """The check before an ordered webhook's request (and before a first attempt that a redelivered change
    makes inline)."""

    async def check(self, dm: DeliveryMessage) -> bool:
        """Tell whether ``dm``'s event waits for this attempt (and, in a lane, is its head)."""


class Gate(Protocol):
    """Whether and when a delivery may make its request."""

    async def enter(self, dm: DeliveryMessage, hook: Webhook) -> Slot | None:
        """Wait for a slot of the webhook's endpoint and return it; or hold or park the delivery (None)."""

    def leave(self, slot: Slot, result: AttemptResult) -> None:
        """Free ``slot`` after its request, learning the endpoint's pace from ``result``."""

    async def observe(self, slot: Slot, result: AttemptResult) -> None:
        """Tell the endpoint's circuit breaker how the request went."""


class Sender(Protocol):
    """Makes the signed POST of one attempt."""

    async def send(self, hook: Webhook, event_id: str, payload: dict[str, Any]) -> AttemptResult:
        """POST ``payload`` to ``hook``; never raises for the receiver's failures (they are in the result)."""


class Recorder(Protocol):
    """Writes outcomes to the store."""

    async def record(self, outcome: Outcome) -> bool:
        """Record ``outcome``; False if the event was already past this attempt (a duplicate message)."""


class FollowUps(Protocol):
    """Publishes what follows a recorded outcome."""

    async def after(self, dm: DeliveryMessage, decision: Decision, result: AttemptResult | None,
                    due_ms: int | None) -> None:
        """Publish the next attempt (due at ``due_ms``) or the failure notice, as ``decision`` says."""

    async def again(self, dm: DeliveryMessage) -> None:
        """Publish again what followed ``dm``'s outcome, if the store shows it as the event's latest."""


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


def attempt_outcome(dm: DeliveryMessage, started: datetime, result: AttemptResult, decision: Decision) -> Outcome:
    """Return the outcome of ``dm``'s attempt: the attempt as made, and the event's fields after it."""
    made = Attempt(id=attempt_id(dm.event_id, dm.attempt), event_id=dm.event_id, webhook_id=dm.webhook_id,
                   attempt=dm.attempt, started_at=started, duration_ms=result.duration_ms,
                   status_code=result.status_code, error=None if result.ok else result.error,
                   response_excerpt=result.excerpt)
    changes = event_changes(decision, result, started + timedelta(milliseconds=result.duration_ms))
    if dm.probe:
        changes["budget_start"] = dm.budget_start
    return Outcome(dm.event_id, dm.attempt, changes, made)


class DeliveryHandler:
    """Consumes ``PREFIX.deliver``: one message, one attempt (see the module docstring)."""

    def __init__(self, webhooks: Webhooks, gate: Gate, sender: Sender, recorder: Recorder, followups: FollowUps,
                 metrics: Metrics, *, delays: tuple[float, ...], max_attempts: int,
                 lanes: LaneCheck | None = None) -> None:
        self.webhooks = webhooks
        self.lanes = lanes
        self.gate = gate
        self.sender = sender
        self.recorder = recorder
        self.followups = followups
        self.metrics = metrics
        self.delays = delays
        self.max_attempts = max_attempts

    async def handle(self, msg: IncomingMessage) -> Verdict:
        """Make the attempt a delivery message asks for, record it and publish what follows."""
        dm = self.receive(msg)
        if dm is None:
            return Verdict.DEAD_LETTER
        hook = await self.webhooks.get(dm.webhook_id)
        if hook is None or not hook.active:
            return await self.give_up(dm, hook)
        if dm.lane is not None and self.lanes is not None and not await self.lanes.check(dm):
            return await self.duplicate(msg.redelivered, dm)  # an old copy: past this attempt, or not the head
        return await self.attempt(dm, hook, redelivered=msg.redelivered)

    async def first(self, dm: DeliveryMessage, hook: Webhook, *, check: bool) -> None:
        """Make the first attempt of a new event for fan-out (``HOOKPOST_FIRST_ATTEMPT=inline``), as
        :meth:`handle` makes one from a message. With ``check`` (an event that a redelivered change found stored)
        the store must first show the event still waiting for it (the check before an ordered webhook's request),
        or nothing is sent."""
        if check and self.lanes is not None and not await self.lanes.check(dm):
            log.info("first attempt already made elsewhere; not sent again", extra={"event_id": dm.event_id})
            return
        await self.attempt(dm, hook, redelivered=check)

    async def attempt(self, dm: DeliveryMessage, hook: Webhook, *, redelivered: bool) -> Verdict:
        """Steps 3 to 8: the gate, the request, the decision, the record and what follows (``redelivered``: the
        delivery may have been handled before, see :meth:`duplicate`)."""
        slot = await self.gate.enter(dm, hook)
        if slot is None:
            return Verdict.ACK  # held behind the breaker or parked in the defer ladder, no attempt counted
        started, result = await self.send(hook, dm, slot)
        await self.gate.observe(slot, result)
        if dm.probe and counts_as_failure(result):  # a failed probe is recorded, not charged to the event's budget
            dm = dm.model_copy(update={"budget_start": dm.budget_start + 1})
        decision = decide(result, dm.attempt, dm.budget_start, self.delays, self.max_attempts)
        outcome = attempt_outcome(dm, started, result, decision)
        if not await self.recorder.record(outcome):
            return await self.duplicate(redelivered, dm)
        await self.followups.after(dm, decision, result, outcome.changes["next_attempt_ms"])
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
        not_sent(dm, GAVE_UP)
        changes = {**event_changes(decision, None, utcnow()), "attempt_count": dm.attempt - 1}  # count stays
        if await self.recorder.record(Outcome(dm.event_id, dm.attempt, changes)):
            await self.followups.after(dm, decision, None, None)
        return Verdict.ACK

    def unserved(self, dm: DeliveryMessage, hook: Webhook | None) -> str:
        """Why the webhook of ``dm`` cannot be served."""
        if hook is not None:
            return f"webhook disabled: {hook.disabled_reason or 'by operator'}"
        if problem := self.webhooks.problem(dm.webhook_id):
            return f"webhook document does not validate: {problem}"
        return "webhook deleted"

    async def send(self, hook: Webhook, dm: DeliveryMessage, slot: Slot) -> tuple[datetime, AttemptResult]:
        """POST the payload in ``slot`` (freed after it); return when it started and what came back."""
        started = utcnow()
        result = AttemptResult(error="Cancelled")
        try:
            with attempt(dm, hook) as span:  # its deliver span, whose traceparent the request sends
                result = await self.sender.send(hook, dm.event_id, dm.payload)
                span.done(result)
        finally:
            self.gate.leave(slot, result)
        self.metrics.attempt_made(result.status_code, result.duration_ms)
        return started, result

    async def duplicate(self, redelivered: bool, dm: DeliveryMessage) -> Verdict:
        """The event was already past this attempt. A ``redelivered`` message may have lost the broker between
        recording its outcome and publishing what follows: that is published again. Another copy is ignored."""
        if redelivered:
            await self.followups.again(dm)
        else:
            log.info("duplicate delivery ignored (event already past this attempt)",
                     extra={"event_id": dm.event_id, "attempt": dm.attempt})
        return Verdict.ACK
