"""Per-webhook rate limits (``rate_limit``, requests per second), enforced per dispatcher process.

Requests of one webhook are spaced at least ``1 / rate_limit`` apart: each request reserves the next free instant
and waits for it (holding its endpoint slot, so it is sent right then). That keeps any one-second window at
``rate_limit`` requests, plus one at the window's edge. A delivery that would wait longer than ``max_wait`` is
parked in the defer ladder instead (no attempt is counted), for about as long as the work ahead of it.

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
import time


class RateLimits:
    """The next free instant of each rate-limited webhook, and the deliveries parked for it."""

    def __init__(self, max_wait: float = 1.0) -> None:
        self.max_wait = max_wait
        self._next: dict[str, float] = {}
        self._parked: dict[str, list[float]] = {}

    def reserve(self, webhook_id: str, rate: float) -> float | None:
        """Reserve the next instant for a request to ``webhook_id`` (at most ``rate`` per second); return how long
        to wait for it, or None (nothing reserved) if that is longer than ``max_wait``."""
        now = time.monotonic()
        at = max(now, self._next.get(webhook_id, 0.0))
        if at - now > self.max_wait:
            return None
        self._next[webhook_id] = at + 1.0 / rate
        return at - now

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
