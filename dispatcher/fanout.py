"""Fan-out: one change event → one ``New`` webhook event per subscribed webhook, and one delivery each.

Order: validate → match webhooks → insert the events (one round trip; the unique (change, webhook) index makes
a replay insert nothing) → publish the deliveries (confirmed; a delivery to an endpoint that is saturated goes
straight to the defer ladder) → ack the change. A crash anywhere replays safely.
"""

import logging

from hookpost.common.amqp import IncomingMessage
from hookpost.common.deliveries import first_delivery
from hookpost.common.ids import new_id
from hookpost.common.models import (
    ChangeEvent,
    DeliveryMessage,
    EventStatus,
    Webhook,
    WebhookEvent,
    build_payload,
    utcnow,
)
from hookpost.common.wire import InvalidChangeError, decode_change
from hookpost.dispatcher.batcher import Batcher
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.limits import endpoint_key
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.storeguard import StoreGuard
from hookpost.store import Store

log = logging.getLogger("hookpost.fanout")


def new_events(change: ChangeEvent, webhook_ids: list[str]) -> list[WebhookEvent]:
    """Build the ``New`` webhook events of ``change``, one per webhook, due now.

    ``change`` is already validated, so the events are built without validating again (this runs for every
    event); their payloads share the change's ``data`` part.
    """
    now = utcnow()
    now_ms = int(now.timestamp() * 1000)
    shared = build_payload("", change)
    events = []
    for webhook_id in webhook_ids:
        event_id = new_id("evt", now_ms)
        events.append(WebhookEvent.model_construct(
            id=event_id, webhook_id=webhook_id, change_id=change.id, type=change.type, entity=change.entity,
            payload={**shared, "id": event_id}, status=EventStatus.NEW, attempt_count=0, budget_start=0,
            next_attempt_at=now, next_attempt_ms=now_ms, last_status_code=None, last_error=None, created_at=now,
            created_ms=now_ms, updated_at=now, updated_ms=now_ms, finished_at=None))
    return events


class FanOut:
    """Consumes ``PREFIX.changes``."""

    def __init__(self, store: Store, cache: WebhookCache, outbox: Outbox, guard: StoreGuard, metrics: Metrics,
                 deferrer: Deferrer, max_change_bytes: int, batch: int = 500) -> None:
        self.store = store
        self.cache = cache
        self.outbox = outbox
        self.guard = guard
        self.metrics = metrics
        self.deferrer = deferrer
        self.max_change_bytes = max_change_bytes
        self.inserts: Batcher[list[WebhookEvent], list[bool]] = Batcher(self._insert, max_batch=batch)

    async def _insert(self, groups: list[list[WebhookEvent]]) -> list[list[bool]]:
        """Insert the events of several changes in one round trip; return per change which were new."""
        flat = [e for g in groups for e in g]
        flags = await self.guard.run(lambda: self.store.events.insert_flags(flat))
        out, i = [], 0
        for g in groups:
            out.append(flags[i:i + len(g)])
            i += len(g)
        return out

    async def _publish(self, events: list[WebhookEvent], hooks: dict[str, Webhook]) -> None:
        """Publish the first delivery of each event: to the deliver queue, or, for an endpoint this process
        knows to be hanging, straight to the defer ladder (saving it a trip through the deliver queue only to be
        parked there)."""
        now: list[DeliveryMessage] = []
        later: list[tuple[DeliveryMessage, str]] = []
        for e in events:
            hook = hooks.get(e.webhook_id)
            endpoint = endpoint_key(hook.url) if hook is not None else None
            if endpoint is not None and self.deferrer.limiter.hanging(endpoint):
                later.append((first_delivery(e), endpoint))
            else:
                now.append(first_delivery(e))
        await self.deferrer.publish(now, later)

    async def handle(self, msg: IncomingMessage) -> None:
        """Fan one change message out, then ack it (or move it to the invalid queue with the reason)."""
        props = msg.properties
        try:
            change = decode_change(msg.body, props.content_type, max_bytes=self.max_change_bytes,
                                   content_encoding=props.content_encoding)
        except InvalidChangeError as exc:
            await self.outbox.invalid(msg, str(exc))
            msg.ack()
            self.metrics.changes_consumed.labels("invalid").inc()
            log.warning("invalid change event moved to the invalid queue",
                        extra={"message_id": props.message_id, "reason": str(exc)})
            return
        hooks = await self.guard.run(lambda: self.cache.subscribers(change.type))
        events = new_events(change, [h.id for h in hooks])
        flags = await self.inserts.submit(events) if events else []
        created = [e for e, new in zip(events, flags, strict=True) if new]
        to_send = created
        if len(created) < len(events) and msg.redelivered:
            # a replay after a crash: the first try may have stored events without publishing their deliveries
            existing = await self.guard.run(lambda: self.store.events.find_for_change(change.id))
            to_send = [e for e in existing if e.status == EventStatus.NEW and e.attempt_count == 0]
        await self._publish(to_send, {h.id: h for h in hooks})
        msg.ack()
        self.metrics.changes_consumed.labels("ok").inc()
        self.metrics.events_created.inc(len(created))
        log.debug("change fanned out", extra={"change_id": change.id, "type": change.type,
                                              "events": len(created), "matched": len(hooks)})
