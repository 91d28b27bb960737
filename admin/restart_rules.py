"""Which events a restart takes and which it skips: plain values, no I/O.

A ``Failed`` event goes back to ``New``; a ``Finished`` one only when forced; ``New``/``Retrying`` ones are
skipped (they have a delivery in flight, and a second one would send twice).
"""

from hookpost.common.models import EventStatus, WebhookEvent
from hookpost.common.records import RestartReport

__all__ = ["RestartReport", "refusal_for_status", "restart_refusal"]


def refusal_for_status(status: EventStatus, force: bool) -> str | None:
    """Return why an event in ``status`` is not restarted, or None if it is."""
    if status in (EventStatus.NEW, EventStatus.RETRYING):
        return f"already in flight ({status.value})"
    if status == EventStatus.FINISHED and not force:
        return "Finished (use --force to send it again)"
    return None


def restart_refusal(event: WebhookEvent, force: bool) -> str | None:
    """Return why ``event`` is not restarted, or None if it is."""
    return refusal_for_status(event.status, force)
