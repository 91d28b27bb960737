"""Delivery messages: what the next attempt of a webhook event is, as one plain function.

Used by the dispatcher's fan-out (an event's first delivery) and by ``admin`` (a restarted event's delivery).
"""

from hookpost.common.models import DeliveryMessage, WebhookEvent


def first_delivery(event: WebhookEvent) -> DeliveryMessage:
    """Return the delivery message for the next attempt of ``event``."""
    return DeliveryMessage.model_construct(event_id=event.id, webhook_id=event.webhook_id,
                                           attempt=event.attempt_count + 1, budget_start=event.budget_start,
                                           deferrals=0, payload=event.payload, due_ms=event.next_attempt_ms)
