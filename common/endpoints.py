"""Receiver endpoints (``scheme://host:port``) and their shared health, as stored in the ``endpoints`` collection.

An endpoint is what the dispatcher limits and protects: every webhook whose URL has the same scheme, host and
port shares one concurrency limit and one circuit breaker. Its health document is written by the dispatcher
(by ``_id``, on state changes only) and read by every dispatcher process, the CLI and the API.

>>> endpoint_key("https://example.com/hooks/a"), endpoint_key("http://10.0.0.1:8080/x")
('https://example.com:443', 'http://10.0.0.1:8080')
"""

from enum import StrEnum
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import BaseModel

from hookpost.common.models import from_ms


@lru_cache(maxsize=65536)
def endpoint_key(url: str) -> str:
    """Return the endpoint a URL belongs to for limiting purposes: ``scheme://host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class BreakerState(StrEnum):
    """Where an endpoint's circuit breaker stands."""

    CLOSED = "closed"  # requests go through
    FAILING = "failing"  # requests go through; a run of failures is under way (half the threshold or more)
    OPEN = "open"  # deliveries are held; one probe request per probe interval
    DISABLED = "disabled"  # it stayed open for HOOKPOST_DISABLE_AFTER: its webhooks were disabled


class EndpointHealth(BaseModel):
    """The stored health of one endpoint (``id`` is its :func:`endpoint_key`); times are epoch milliseconds."""

    id: str
    state: BreakerState = BreakerState.CLOSED
    failing_since_ms: int | None = None  # when the endpoint's trouble began: the first failure of the run that
    # marked it failing or opened its breaker, kept across a close until it stayed closed for the recovery window
    closed_ms: int | None = None  # when its breaker last closed within the current trouble (None once recovered)
    opened_ms: int | None = None  # when the breaker opened (None unless open)
    next_probe_ms: int | None = None  # when the next probe request may go (while open)
    probe_interval: float = 0.0  # seconds until the probe after the next one (grows to the cap)
    last_error: str | None = None
    run: int = 0  # failed attempts in a row, counted by every dispatcher process together (0 after any answer)
    run_since_ms: int | None = None  # when that run began (absent while there is none)
    releasing: bool = False  # held deliveries wait to be re-published (the breaker closed, or webhooks disabled)
    release_lease_ms: int = 0  # a process re-publishing held deliveries owns the release until then
    release_owner: str | None = None
    updated_ms: int = 0


def trouble_since(health: EndpointHealth | None, now_ms: int, recovery: float) -> int | None:
    """Return when the endpoint's current trouble began, if it is still in trouble: failing or open, or closed
    again for less than ``recovery`` seconds since a breaker opening (a flapping endpoint keeps its start); None if
    it is healthy, recovered, or was disabled (re-enabling its webhooks starts the count afresh).

    >>> h = EndpointHealth(id="x", state=BreakerState.CLOSED, failing_since_ms=1_000, closed_ms=60_000)
    >>> trouble_since(h, 90_000, 3600.0), trouble_since(h, 60_000 + 3_600_000, 3600.0)
    (1000, None)
    """
    if health is None or health.failing_since_ms is None:
        return None
    if health.state in (BreakerState.FAILING, BreakerState.OPEN):
        return health.failing_since_ms
    if health.state == BreakerState.CLOSED and health.closed_ms is not None \
            and now_ms - health.closed_ms < recovery * 1000:
        return health.failing_since_ms
    return None


def health_label(active: bool, disabled_reason: str | None, health: EndpointHealth | None) -> str:
    """Return what people see for a webhook: ``healthy``, ``failing``, ``breaker open since …`` or
    ``disabled (reason)``.

    >>> health_label(False, "by operator", None), health_label(True, None, None)
    ('disabled (by operator)', 'healthy')
    """
    if not active:
        return f"disabled ({disabled_reason or 'by operator'})"
    if health is None or health.state in (BreakerState.CLOSED, BreakerState.DISABLED):
        return "healthy"
    if health.state == BreakerState.OPEN and health.opened_ms is not None:
        since = from_ms(health.opened_ms).isoformat(timespec="seconds").replace("+00:00", "Z")
        return f"breaker open since {since}"
    return "failing"
