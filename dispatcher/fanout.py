"""One change, top to bottom: the consumer of ``PREFIX.changes``.

:meth:`FanOut.handle` reads like the path a change takes:

1. :meth:`~FanOut.receive` — decode and validate the change (:func:`~hookpost.common.wire.decode_change`); an
   invalid one is copied to ``PREFIX.invalid`` with its reason (:meth:`~FanOut.set_aside`); the type is counted
   in the event-type catalog, and a change that breaks its type's enforced contract is set aside too
   (:class:`EventTypes`);
2. match the active webhooks subscribed to its type (:class:`Subscribers`);
3. :meth:`~FanOut.hold_for_open_breakers` — an event for an endpoint whose circuit breaker this process knows to
   be open (:class:`Endpoints`) is to be stored *held* (due at the next probe), like a delivery held behind the
   breaker, but without a trip through the deliver queue;
4. the events of webhooks with ``ordering=entity`` are to wait in their entity's lane, and with
   ``coalesce=latest`` a change may fold into a waiting event instead (:class:`Lanes`, ``dispatcher/lanes.py``);
5. :meth:`~FanOut.store_events` — insert one ``New`` event per webhook (:class:`NewEvents`, batched with
   concurrent changes; the unique (change, webhook) index makes a replay insert nothing); a change whose events
   the store refuses for good (over its document size limit) is set aside with the reason at once, not retried;
6. the waiting events join their lanes' queues (they start when their lane moves on, with no delivery now);
7. :meth:`~FanOut.first_attempts` — start the first attempt of each other event not held: with
   ``HOOKPOST_FIRST_ATTEMPT=queue``, publish its delivery, confirmed (:meth:`~FanOut.publish_deliveries`,
   :class:`Deliveries`; one for an endpoint known to hang goes straight to the defer ladder); with ``inline``,
   make it here, through the delivery consumer's own gate, sender, recorder and follow-ups, up to the bounds per
   change and per process, and publish the rest (:class:`FirstAttempts`, ``dispatcher/inline.py``);
8. return the :class:`~hookpost.dispatcher.consumer.Verdict`; the consumer acks the change — with ``inline``,
   only once each event has an outcome recorded or has been handed to a queue.

Each collaborator is named by the small interface below that says what this module needs of it;
``dispatcher/worker.py`` wires the real ones. A crash anywhere replays safely: a redelivered change whose events
exist already publishes the deliveries of those still waiting for their first attempt (the first try may have
stored them without publishing), except the held ones: the breaker's probe and release publish those. With
``inline`` it attempts them again, each checked against the store first, and publishes again what followed a
first attempt it finds recorded.
"""

import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

from hookpost.common.amqp import IncomingMessage
from hookpost.common.deliveries import first_delivery
from hookpost.common.endpoints import endpoint_key
from hookpost.common.errors import StoreRefusedError
from hookpost.common.ids import new_id
from hookpost.common.models import (
    ChangeEvent,
    Coalesce,
    DeliveryMessage,
    EventStatus,
    Webhook,
    WebhookEvent,
    build_payload,
    due_fields,
    to_ms,
    utcnow,
)
from hookpost.common.traceparent import TraceContext
from hookpost.common.wire import (
    NOTICE_HEADER,
    NOTICE_PREFIX,
    REPLAY_HEADER,
    REPLAY_RANK_HEADER,
    InvalidChangeError,
    decode_change,
)
from hookpost.dispatcher.consumer import Verdict
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.tracing import fanned_out, traced_fan_out

log = logging.getLogger("hookpost.fanout")


class Subscribers(Protocol):
    """The webhooks as this process knows them (the in-memory cache)."""

    async def subscribers(self, event_type: str) -> list[Webhook]:
        """The active webhooks subscribed to ``event_type``."""


class Endpoints(Protocol):
    """What this process knows of the receivers' endpoints (their breakers and their pace)."""

    def hold_new_at(self, endpoint: str) -> int | None:
        """If the breaker of ``endpoint`` is open: when a new event for it is due (its next probe); else None."""

    def held_new(self, endpoint: str, n: int) -> None:
        """Note that ``n`` new events of ``endpoint`` were stored held."""

    def hanging(self, endpoint: str) -> bool:
        """Tell whether ``endpoint`` hangs now (a delivery to it would be parked at once)."""


class EventTypes(Protocol):
    """The event-type catalog: which types are seen, and the contracts of declared types."""

    def seen(self, event_type: str) -> None:
        """Count one change of ``event_type`` (in memory; written in batches)."""

    async def violation(self, change: ChangeEvent) -> str | None:
        """Return why ``change`` breaks its type's enforced contract (the JSON path and the rule), or None."""


class NewEvents(Protocol):
    """Stores new events."""

    async def insert(self, events: list[WebhookEvent]) -> list[bool]:
        """Insert ``events`` (batched with other changes'); return which were new (a replay inserts nothing)."""

    async def of_change(self, change_id: str) -> list[WebhookEvent]:
        """The events stored for the change ``change_id``."""


class Deliveries(Protocol):
    """Publishes delivery messages."""

    async def publish(self, now: Sequence[DeliveryMessage], later: Sequence[tuple[DeliveryMessage, str]]) -> None:
        """Publish ``now`` to the deliver queue and ``later`` (with their endpoints) into the defer ladder."""


class Lanes(Protocol):
    """The lanes of webhooks with ``ordering=entity``."""

    async def place(self, change: ChangeEvent, events: list[WebhookEvent], hooks: dict[str, Webhook], *,
                    existing: set[str]) -> list[WebhookEvent]:
        """Return ``events`` to store, ordered webhooks' ones waiting, folded changes left out."""

    async def stored(self, change: ChangeEvent, events: list[WebhookEvent], *, rank: int = 0) -> None:
        """Queue the stored waiting events in their lanes (``rank`` > 0: at the tail)."""

    def folding(self, change: ChangeEvent, hooks: list[Webhook]) -> AbstractAsyncContextManager[None]:
        """Hold the lanes ``change`` may fold into (its coalescing webhooks') from placing to queueing."""


class FirstAttempts(Protocol):
    """Makes new events' first attempts in fan-out (``HOOKPOST_FIRST_ATTEMPT=inline``; ``dispatcher/inline.py``)."""

    def split(self, events: Sequence[WebhookEvent]) -> tuple[list[WebhookEvent], list[WebhookEvent]]:
        """Return the events whose first attempt is made here (within the bound per change) and the rest."""

    async def make(self, events: Sequence[WebhookEvent], hooks: dict[str, Webhook], *, check: bool) -> None:
        """Make the first attempt of each of ``events`` (``check``: against the store first); return when each
        has an outcome recorded or has been handed to a queue."""

    async def resume(self, events: Sequence[WebhookEvent]) -> None:
        """Publish again what followed the recorded first attempt of ``events``, where it is still the latest."""


class InvalidQueue(Protocol):
    """Where changes that cannot be fanned out are set aside."""

    async def invalid(self, msg: IncomingMessage, reason: str) -> None:
        """Copy the change ``msg`` to ``PREFIX.invalid`` with ``reason``."""


def replay_rank(headers: dict[str, object]) -> int:
    """The lane rank of a replayed change: when its replay began (epoch ms), or now if the header is unreadable."""
    try:
        return int(str(headers.get(REPLAY_RANK_HEADER)))
    except ValueError:
        return to_ms(utcnow())


def new_events(change: ChangeEvent, webhook_ids: list[str], trace: TraceContext | None = None) -> list[WebhookEvent]:
    """Build the ``New`` webhook events of ``change``, one per webhook, due now, in the trace ``trace``."""
    now = utcnow()
    now_ms = to_ms(now)
    events = []
    for webhook_id in webhook_ids:
        event_id = new_id("evt", now_ms)
        events.append(WebhookEvent(
            id=event_id, webhook_id=webhook_id, change_id=change.id, type=change.type, entity=change.entity,
            payload=build_payload(event_id, change), status=EventStatus.NEW, **due_fields(now_ms),
            created_at=now, created_ms=now_ms, updated_at=now, updated_ms=now_ms, trace=trace))
    return events


class FanOut:
    """Consumes ``PREFIX.changes``: one change, one event and one delivery per subscribed webhook."""

    def __init__(self, webhooks: Subscribers, endpoints: Endpoints, events: NewEvents, deliveries: Deliveries,
                 outbox: InvalidQueue, metrics: Metrics, *, max_change_bytes: int, lanes: Lanes | None = None,
                 catalog: EventTypes | None = None, inline: FirstAttempts | None = None) -> None:
        self.webhooks = webhooks
        self.inline = inline
        self.lanes = lanes
        self.endpoints = endpoints
        self.events = events
        self.deliveries = deliveries
        self.outbox = outbox
        self.metrics = metrics
        self.max_change_bytes = max_change_bytes
        self.catalog = catalog

    @traced_fan_out  # in the change's fan-out span (dispatcher/tracing.py)
    async def handle(self, msg: IncomingMessage) -> Verdict:
        """Fan one change message out (or set it aside with its reason)."""
        try:
            change = self.receive(msg)
        except InvalidChangeError as exc:
            return await self.set_aside(msg, str(exc))
        if self.catalog is not None and not (msg.properties.headers or {}).get(REPLAY_HEADER):  # replays: passed once
            self.catalog.seen(change.type)
            if (broken := await self.catalog.violation(change)) is not None:
                return await self.set_aside(msg, broken)
        hooks = await self.webhooks.subscribers(change.type)
        if change.type.startswith(NOTICE_PREFIX):  # a webhook never receives notices about itself
            hooks = [h for h in hooks if h.id != change.entity.id]
        headers = msg.properties.headers or {}
        if replay_for := headers.get(REPLAY_HEADER):  # a replay is for one webhook only
            hooks = [h for h in hooks if h.id == str(replay_for)]
        by_id = {h.id: h for h in hooks}
        trace = fanned_out(len(hooks))  # the fan-out span's context, kept by each event
        events = self.hold_for_open_breakers(new_events(change, [h.id for h in hooks], trace), by_id)
        async with self.lanes.folding(change, hooks) if self.lanes is not None else nullcontext():
            if self.lanes is not None and any(h.ordered for h in hooks):
                events = await self.lanes.place(change, events, by_id,
                                                existing=await self.existing(change, hooks, msg.redelivered))
            try:
                stored = await self.store_events(change, events, replay=msg.redelivered)
            except StoreRefusedError as exc:  # the same every time: no retry, no poison count
                return await self.set_aside(msg, f"fan-out: {exc}")
            if self.lanes is not None and any(e.waiting for e in stored):
                rank = replay_rank(headers) if replay_for else 0
                await self.lanes.stored(change, [e for e in stored if e.waiting], rank=rank)
        await self.first_attempts([e for e in stored if e.held is None and not e.waiting], by_id,
                                  redelivered=msg.redelivered)
        self.metrics.changes_consumed.labels("ok").inc()
        log.debug("change fanned out", extra={"change_id": change.id, "type": change.type, "matched": len(hooks)})
        return Verdict.ACK

    async def poisoned(self, msg: IncomingMessage, reason: str) -> Verdict:
        """Set aside a change whose fan-out fails every time, with ``reason`` (``hookpost invalid replay`` puts
        it back once the cause is fixed)."""
        return await self.set_aside(msg, f"fan-out {reason}")

    def receive(self, msg: IncomingMessage) -> ChangeEvent:
        """Decode and validate the change; raise :class:`InvalidChangeError` with the reason."""
        props = msg.properties
        return decode_change(msg.body, props.content_type, max_bytes=self.max_change_bytes,
                             content_encoding=props.content_encoding,
                             notice=bool((props.headers or {}).get(NOTICE_HEADER)))

    async def set_aside(self, msg: IncomingMessage, reason: str) -> Verdict:
        """Copy an invalid change to ``PREFIX.invalid`` with ``reason``; then it is done with here."""
        await self.outbox.invalid(msg, reason)
        self.metrics.changes_consumed.labels("invalid").inc()
        log.warning("invalid change event moved to the invalid queue",
                    extra={"message_id": msg.properties.message_id, "reason": reason})
        return Verdict.ACK

    async def existing(self, change: ChangeEvent, hooks: list[Webhook], redelivered: bool) -> set[str]:
        """The webhooks that already have an event of ``change`` (read only for a redelivered change with a
        coalescing subscriber: such a change never folds)."""
        if not redelivered or not any(h.coalesce == Coalesce.LATEST for h in hooks):
            return set()
        return {e.webhook_id for e in await self.events.of_change(change.id)}

    def hold_for_open_breakers(self, events: list[WebhookEvent], hooks: dict[str, Webhook]) -> list[WebhookEvent]:
        """Mark the events whose endpoint's breaker this process knows to be open as held by it, due at its next
        probe: they are stored so, and no delivery is published for them (the probe and the release after the
        breaker closes pick them up like any held delivery). The others are returned unchanged; so are those of
        ordered webhooks, which wait in their lanes (a lane's head may be held, never a waiting event)."""
        out = []
        for e in events:
            hook = hooks.get(e.webhook_id)
            endpoint = endpoint_key(hook.url) if hook is not None and not hook.ordered else None
            due = self.endpoints.hold_new_at(endpoint) if endpoint is not None else None
            out.append(e if due is None else e.model_copy(update={"held": endpoint, **due_fields(due)}))
        return out

    async def store_events(self, change: ChangeEvent, events: list[WebhookEvent], *,
                           replay: bool) -> list[WebhookEvent]:
        """Insert ``events``; return those stored by this call (held ones included: the breaker is told of
        them) and, on a ``replay`` (a redelivered change), those stored before that still wait for their first
        attempt and are not held."""
        flags = await self.events.insert(events) if events else []
        created = [e for e, new in zip(events, flags, strict=True) if new]
        self.metrics.events_created.inc(len(created))
        for endpoint, n in Counter(e.held for e in created if e.held is not None).items():
            self.endpoints.held_new(endpoint, n)
        if len(created) == len(events) or not replay:
            return created
        existing = await self.events.of_change(change.id)
        if self.inline is not None:  # first attempts made here may have lost what followed them (first_attempts)
            return [e for e in existing if e.held is None and not e.waiting and (
                e.attempt_count == 1 or (e.status == EventStatus.NEW and e.attempt_count == 0))]
        return [e for e in existing if e.status == EventStatus.NEW and e.attempt_count == 0 and e.held is None]

    async def first_attempts(self, events: list[WebhookEvent], hooks: dict[str, Webhook], *,
                             redelivered: bool) -> None:
        """Start the first attempt of each of ``events``: with ``inline``, make it here (within its bounds) and
        publish the rest; with ``queue``, publish them all. A redelivered change's events found past their first
        attempt have what followed it published again (``inline`` only: with ``queue`` their delivery messages
        see to that)."""
        fresh = [e for e in events if e.attempt_count == 0]
        if self.inline is None:
            await self.publish_deliveries(fresh, hooks)
            self.metrics.first_attempts.labels("queue").inc(len(fresh))
            return
        now, rest = self.inline.split([e for e in fresh if e.webhook_id in hooks])
        rest += [e for e in fresh if e.webhook_id not in hooks]
        await self.publish_deliveries(rest, hooks)
        self.metrics.first_attempts.labels("queue").inc(len(rest))
        if now:
            await self.inline.make(now, hooks, check=redelivered)
        if past := [e for e in events if e.attempt_count == 1]:
            await self.inline.resume(past)

    async def publish_deliveries(self, events: list[WebhookEvent], hooks: dict[str, Webhook]) -> None:
        """Publish the first delivery of each event: to the deliver queue, or, for an endpoint this process
        knows to be hanging, straight to the defer ladder (saving it a trip through the deliver queue only to be
        parked there)."""
        now: list[DeliveryMessage] = []
        later: list[tuple[DeliveryMessage, str]] = []
        for e in events:
            hook = hooks.get(e.webhook_id)
            endpoint = endpoint_key(hook.url) if hook is not None else None
            if endpoint is not None and self.endpoints.hanging(endpoint):
                later.append((first_delivery(e), endpoint))
            else:
                now.append(first_delivery(e))
        await self.deliveries.publish(now, later)
