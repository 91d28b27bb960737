"""Delivery messages: what the next attempt of a webhook event is, as plain functions.

Used by the dispatcher (an event's first delivery in fan-out, the next one after a failed attempt, the
reconciler's re-published ones) and by ``admin`` (a restarted event's delivery).
"""

from hookpost.common.models import DeliveryMessage, WebhookEvent


def first_delivery(event: WebhookEvent) -> DeliveryMessage:
    """Return the delivery message for the next attempt of ``event`` (as stored: due at its next attempt)."""
    return DeliveryMessage(event_id=event.id, webhook_id=event.webhook_id, attempt=event.attempt_count + 1,
                           budget_start=event.budget_start, payload=event.payload, due_ms=event.next_attempt_ms,
                           lane=event.lane, trace=event.trace)


def next_delivery(msg: DeliveryMessage, due_ms: int | None) -> DeliveryMessage:
    """Return the delivery message of the attempt after ``msg``'s, due at ``due_ms`` (the time on record)."""
    return msg.model_copy(update={"attempt": msg.attempt + 1, "deferrals": 0, "due_ms": due_ms,
                                  "probe": False})
