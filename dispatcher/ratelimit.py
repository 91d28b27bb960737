"""Per-webhook rate limits (``rate_limit``, requests per second), enforced per dispatcher process.

Requests of one webhook are spaced at least ``1 / rate_limit`` apart: each request reserves the next free instant
and waits for it (holding its endpoint slot, so it is sent right then). Because a busy event loop can wake several
late at once, and a request reaches the receiver some time after it was started, a sliding window is checked
last: a request may start only while fewer than ``rate_limit`` requests are in flight or *finished* within the
last second. Every request arrives between its start and its end, so no one-second window at the receiver sees
more than ``rate_limit`` of them (for a limit below 1/s: one per ``1 / rate_limit`` seconds). A delivery
that would wait longer than ``max_wait`` is parked in the defer ladder instead (no attempt is counted), for about
as long as the work ahead of it.

The limit holds **per process**: N dispatcher processes may together send up to N × ``rate_limit``. Exact limits
across processes would need a shared counter written on every request (a store round trip on the hot path, or a
broker queue per webhook); run one dispatcher, or set the limit divided by the number of processes, where the
receiver's limit is strict.

Example::

    limits = RateLimits(max_wait=1.0)
    wait = limits.reserve(hook.id, hook.rate_limit)
    if wait is None:
        ...park it: limits.expected_wait(hook.id, hook.rate_limit) says for how long...
    else:
        await asyncio.sleep(wait)
"""

import heapq
import math
import time
from collections import deque


class RateLimits:
    """The next free instant of each rate-limited webhook, and the deliveries parked for it."""

    def __init__(self, max_wait: float = 1.0) -> None:
        self.max_wait = max_wait
        self._next: dict[str, float] = {}
        self._parked: dict[str, list[float]] = {}
        self._done: dict[str, deque[float]] = {}
        self._running: dict[str, int] = {}

    def reserve(self, webhook_id: str, rate: float) -> float | None:
        """Reserve the next instant for a request to ``webhook_id`` (at most ``rate`` per second); return how long
        to wait for it, or None (nothing reserved) if that is longer than ``max_wait``."""
        now = time.monotonic()
        at = max(now, self._next.get(webhook_id, 0.0))
        if at - now > self.max_wait:
            return None
        self._next[webhook_id] = at + 1.0 / rate
        return at - now

    def room(self, webhook_id: str, rate: float) -> float:
        """Return 0.0 and count a request to ``webhook_id`` as started now if the sliding window has room for it
        (call :meth:`done` when it ends); else how many seconds until it may have."""
        window = max(1.0, 1.0 / rate)
        most = max(1, math.floor(rate * window))
        now = time.monotonic()
        done = self._done.setdefault(webhook_id, deque())
        while done and done[0] <= now - window:
            done.popleft()
        running = self._running.get(webhook_id, 0)
        if running + len(done) < most:
            self._running[webhook_id] = running + 1
            return 0.0
        return (done[0] + window - now + 0.001) if done else 0.01

    def done(self, webhook_id: str) -> None:
        """Note that a request :meth:`room` let start has ended (answered, failed or cancelled)."""
        self._running[webhook_id] = max(0, self._running.get(webhook_id, 0) - 1)
        self._done.setdefault(webhook_id, deque()).append(time.monotonic())

    def expected_wait(self, webhook_id: str, rate: float) -> float:
        """Seconds until a new delivery's turn: the reserved instants ahead plus the parked deliveries that are
        not back yet, at ``rate`` per second."""
        now = time.monotonic()
        parked = self._parked.setdefault(webhook_id, [])
        while parked and parked[0] <= now:
            heapq.heappop(parked)
        return max(0.0, self._next.get(webhook_id, now) - now) + len(parked) / rate

    def park(self, webhook_id: str, seconds: float) -> None:
        """Note a delivery of ``webhook_id`` parked for ``seconds`` (it counts as ahead of newcomers until back)."""
        parked = self._parked.setdefault(webhook_id, [])
        if len(parked) < 100_000:
            heapq.heappush(parked, time.monotonic() + seconds)
