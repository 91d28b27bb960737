"""Which events a restart takes and which it skips, and the report of a restart: plain values, no I/O."""

from dataclasses import dataclass, field

from hookpost.common.models import EventStatus, WebhookEvent


@dataclass
class RestartReport:
    """Which events were restarted and which were skipped, with the reason."""

    restarted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def skipped_by_reason(self) -> dict[str, int]:
        """Return ``{reason: count}`` of skipped events."""
        out: dict[str, int] = {}
        for reason in self.skipped.values():
            out[reason] = out.get(reason, 0) + 1
        return out


def restart_refusal(event: WebhookEvent, force: bool) -> str | None:
    """Return why ``event`` is not restarted, or None if it is."""
    if event.status in (EventStatus.NEW, EventStatus.RETRYING):
        return f"already in flight ({event.status.value})"
    if event.status == EventStatus.FINISHED and not force:
        return "Finished (use --force to send it again)"
    return None
