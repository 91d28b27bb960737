"""What happens after an attempt: pure decisions over plain values, no I/O.

>>> ok = AttemptResult(status_code=200)
>>> decide(ok, attempt=1, budget_start=0, delays=(10.0, 60.0), max_attempts=3).status
<EventStatus.FINISHED: 'Finished'>
>>> decide(AttemptResult(status_code=500), 1, 0, (10.0, 60.0), 3).retry_level
0
"""

from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from hookpost.common.models import EventStatus

RETRY_AFTER_CODES = (429, 503)
BREAKER_CODES = (408, 429)  # answers that count as the endpoint failing, besides 5xx


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt came back with: a status code, or an error (``"Timeout: …"``), or both."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer (the only success)."""
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def timed_out(self) -> bool:
        """True when no complete answer came in time (connect or total timeout)."""
        return self.error is not None and self.error.startswith("Timeout")

    @property
    def overloaded(self) -> bool:
        """True when the receiver said it is overloaded (429 Too Many Requests, 503 Service Unavailable)."""
        return self.status_code in RETRY_AFTER_CODES

    def summary(self) -> str:
        """A short description for ``last_error`` and logs: the error, or ``HTTP 500``."""
        return self.error or f"HTTP {self.status_code}"


def counts_as_failure(result: AttemptResult) -> bool:
    """Tell whether an attempt's outcome counts towards opening the breaker: no answer (connection error,
    timeout), 5xx, 408 or 429. Any other answer shows the endpoint is up (a 404 is the receiver's problem, not an
    outage) and ends the run.

    >>> counts_as_failure(AttemptResult(error="ConnectError")), counts_as_failure(AttemptResult(status_code=404))
    (True, False)
    """
    code = result.status_code
    return result.error is not None or code is None or code >= 500 or code in BREAKER_CODES


@dataclass(frozen=True)
class Decision:
    """The next state of an event after an attempt.

    ``retry_level`` (index into the delay schedule) is set when the event goes on ``Retrying``;
    ``disable_webhook`` when the receiver asked us to stop (410 Gone).
    """

    status: EventStatus
    retry_level: int | None = None
    delay: float | None = None
    disable_webhook: bool = False
    reason: str | None = None


def decide(result: AttemptResult, attempt: int, budget_start: int, delays: tuple[float, ...],
           max_attempts: int) -> Decision:
    """Decide what follows attempt number ``attempt`` (counted over the event's life).

    ``budget_start`` is the attempt count when the current budget of ``max_attempts`` began (0, or the count at
    the last restart). ``delays[k]`` is the wait before the budget's attempt ``k + 2``.
    """
    if result.ok:
        return Decision(EventStatus.FINISHED)
    if result.status_code == 410:
        return Decision(EventStatus.FAILED, disable_webhook=True,
                        reason="410 Gone: the receiver asked to stop; webhook disabled")
    used = attempt - budget_start
    if used >= max_attempts or not delays:
        return Decision(EventStatus.FAILED, reason=f"gave up after {used} attempts: {result.summary()}")
    wait = result.retry_after if result.status_code in RETRY_AFTER_CODES else None
    level = retry_level(delays, used, wait)
    return Decision(EventStatus.RETRYING, retry_level=level, delay=delays[level])


def retry_level(delays: tuple[float, ...], used: int, wait: float | None = None) -> int:
    """Return the retry queue level after the budget's attempt ``used`` failed: the schedule's level, or a
    longer one if the next attempt must wait at least ``wait`` seconds (the receiver's Retry-After).

    >>> retry_level((10.0, 60.0, 300.0), 1), retry_level((10.0, 60.0, 300.0), 1, wait=120.0)
    (0, 2)
    """
    level = min(max(used - 1, 0), len(delays) - 1)
    return level if wait is None else level_for_wait(delays, level, wait)


def level_for_wait(delays: tuple[float, ...], level: int, wait: float) -> int:
    """Return ``level``, or the first level whose delay is at least ``wait`` if ``level`` is shorter
    (the longest level if none is long enough)."""
    if delays[level] >= wait:
        return level
    for i, d in enumerate(delays):
        if d >= wait:
            return i
    return len(delays) - 1


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Read a ``Retry-After`` header (seconds, or an HTTP date) as seconds from ``now``; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())
