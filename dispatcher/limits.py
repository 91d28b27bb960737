"""Flow control per receiver endpoint: how many requests it gets at once, who waits, and who is parked instead.

Each endpoint (``scheme://host:port``) has an **adaptive concurrency limit** between 1 and
``HOOKPOST_ENDPOINT_CONCURRENCY``: it grows by about one slot per ``limit`` answered requests while the endpoint
answers in its usual time, and shrinks by a fifth when a request times out, is refused with 429/503, or takes far
longer than usual (a connect that waits for a SYN retransmit because the receiver's listen backlog is full). A
receiver that copes with 10 requests at once gets 10; one that stalls at 10 settles where it does not.

Deliveries **wait in memory**, first come first served, for a slot of their endpoint: a backlog is not a sign of
a slow endpoint and drains at the pace the endpoint sustains. A delivery is **parked** in the defer ladder only
to protect other endpoints:

- its endpoint is *hanging* (a request has run for ``hang_after`` and for four times the endpoint's usual time,
  or its last request timed out): waiting would hold a prefetch slot for seconds, so every delivery beyond the
  ones running is parked — also the ones already waiting;
- or other endpoints are active too and this endpoint already holds its share of the consumer's prefetch
  ``window`` (``window / active endpoints``): holding more would keep the others' deliveries from being fetched.

Example::

    limiter = EndpointLimiter(total=200, per_endpoint=10, window=200, hang_after=3.0)
    if limiter.should_defer(key):
        ...park it (see dispatcher.deferral)...
    token = await limiter.acquire(key)        # raises EndpointBusyError if the endpoint starts hanging meanwhile
    try:
        result = await send()
    finally:
        limiter.release(key, token, overloaded=result.overloaded)
"""

import asyncio
import heapq
import time
from collections import deque
from itertools import count

from hookpost.common.endpoints import endpoint_key

ACTIVE_FOR = 5.0  # seconds an endpoint counts as active after its last delivery arrived
FORGET_AFTER = 300.0  # an endpoint idle this long loses its learned limit and request time

__all__ = ["EndpointBusyError", "EndpointLimiter", "endpoint_key"]


class EndpointBusyError(Exception):
    """The endpoint started hanging while the delivery waited for a slot: park it instead."""


class _Endpoint:
    """One endpoint's state: limit, running requests (token → start, in start order), waiters, timings."""

    __slots__ = ("baseline", "busy", "latency", "limit", "parked", "running", "seen", "timed_out", "users",
                 "waiters", "watchdog")

    def __init__(self, cap: int) -> None:
        self.limit = float(cap)
        self.running: dict[int, float] = {}
        self.waiters: deque[tuple[asyncio.Future[None], float]] = deque()  # (future, since)
        self.users = 0  # running + waiting
        self.busy = 0  # slots given out (running, or handed to a waiter that has not resumed yet)
        self.latency = 0.0  # moving average of answered requests' time
        self.baseline = 0.0  # the endpoint's usual (low) request time
        self.timed_out = False  # the last finished request timed out
        self.parked: list[float] = []  # heap of the times deliveries this process parked come back
        self.seen = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None

    @property
    def slots(self) -> int:
        """Requests allowed at once now."""
        return max(1, int(self.limit))

    def backlog(self, now: float) -> int:
        """Deliveries this process parked that are not back yet."""
        parked = self.parked
        while parked and parked[0] <= now:
            heapq.heappop(parked)
        return len(parked)


class EndpointLimiter:
    """Adaptive per-endpoint limits (at most ``per_endpoint``), a global bound ``total``, and the parking rule.

    ``window`` is the prefetch of the consumer whose deliveries wait here; ``hang_after`` the request time after
    which an endpoint counts as hanging (at least four times its usual request time); ``max_hold`` the longest a
    delivery waits in memory before it is parked after all (so the reconciler never takes it for lost).
    """

    def __init__(self, total: int, per_endpoint: int, *, window: int = 200, hang_after: float = 3.0,
                 max_hold: float = 120.0) -> None:
        self.total = asyncio.Semaphore(total)
        self.per_endpoint = per_endpoint
        self.window = window
        self.hang_after = hang_after
        self.max_hold = max_hold
        self._endpoints: dict[str, _Endpoint] = {}
        self._tokens = count()
        self._active = 1
        self._active_at = 0.0
        self._closed = False
        self._acquiring: set[asyncio.Task[object]] = set()

    # ---- what callers ask ---------------------------------------------------------------------------------------

    def should_defer(self, key: str) -> bool:
        """Tell whether a new delivery to ``key`` should be parked rather than wait here (see the module doc)."""
        ep = self._endpoints.get(key)
        now = time.monotonic()
        if ep is None:
            return False
        ep.seen = now
        if ep.users < ep.slots:
            return False
        if self.hanging(key):
            return True
        active = self._active_endpoints(now)
        return active > 1 and ep.users >= max(ep.slots, self.window // active)

    def hanging(self, key: str) -> bool:
        """Tell whether ``key`` hangs: its last request timed out, or its oldest running one is overdue."""
        ep = self._endpoints.get(key)
        if ep is None:
            return False
        if ep.timed_out:
            return True
        if not ep.running:
            return False
        oldest = time.monotonic() - next(iter(ep.running.values()))
        return oldest > max(self.hang_after, 4 * ep.baseline)

    def expected_wait(self, key: str) -> float:
        """Estimate how long a new delivery to ``key`` would wait for a slot, in seconds: the rounds of requests
        ahead of it (holding or waiting for a slot here, and parked and not back yet) times the request time."""
        ep = self._endpoints.get(key)
        if ep is None:
            return 0.0
        now = time.monotonic()
        ahead = ep.users + ep.backlog(now)
        if ahead < ep.slots:
            return 0.0
        oldest = now - next(iter(ep.running.values())) if ep.running else 0.0
        return (ahead // ep.slots) * max(ep.latency, oldest if self.hanging(key) else 0.0)

    def park(self, key: str, seconds: float) -> None:
        """Note that a delivery to ``key`` was parked for ``seconds``: until it is back it counts as being ahead
        of newcomers in :meth:`expected_wait`, so they are parked for longer and cycle less."""
        ep = self._endpoint(key)
        if len(ep.parked) < 100_000:
            heapq.heappush(ep.parked, time.monotonic() + seconds)

    def waiting(self, key: str) -> int:
        """Return how many deliveries hold or wait for a slot of ``key``."""
        ep = self._endpoints.get(key)
        return ep.users if ep else 0

    def limit(self, key: str) -> int:
        """Return the current concurrency limit of ``key``."""
        ep = self._endpoints.get(key)
        return ep.slots if ep else self.per_endpoint

    @property
    def in_flight(self) -> int:
        """Deliveries holding a slot now (all endpoints)."""
        return sum(len(ep.running) for ep in self._endpoints.values())

    # ---- taking and giving back slots ---------------------------------------------------------------------------

    def close(self) -> int:
        """Start no more requests (the dispatcher is stopping): cancel the deliveries waiting for a slot, and
        every later :meth:`acquire`. Their messages stay unacked and go back to the queue; the requests already
        running go on. Returns how many waiting deliveries were cancelled."""
        self._closed = True
        waiting = [task for task in self._acquiring if not task.done()]
        for task in waiting:
            task.cancel()
        return len(waiting)

    async def acquire(self, key: str) -> int:
        """Take a slot of endpoint ``key`` (first come, first served) and a global one; return the token
        :meth:`release` needs. Raises :class:`EndpointBusyError` if the endpoint starts hanging meanwhile, and
        :class:`asyncio.CancelledError` once :meth:`close` was called."""
        if self._closed:
            raise asyncio.CancelledError("the dispatcher is stopping")
        task = asyncio.current_task()
        if task is not None:
            self._acquiring.add(task)
        try:
            return await self._acquire(key)
        finally:
            if task is not None:
                self._acquiring.discard(task)

    async def _acquire(self, key: str) -> int:
        ep = self._endpoint(key)
        ep.users += 1
        try:
            if ep.busy < ep.slots and not ep.waiters:
                ep.busy += 1
            else:
                await self._wait(key, ep)  # a slot is handed over (busy counted by the giver) or it raises
            try:
                await self.total.acquire()
            except BaseException:
                self._give_back(ep)
                raise
        except BaseException:
            ep.users -= 1
            raise
        token = next(self._tokens)
        ep.running[token] = time.monotonic()
        return token

    def release(self, key: str, token: int, *, overloaded: bool = False, timed_out: bool = False) -> None:
        """Give back the slots of :meth:`acquire` and learn from the request: ``timed_out`` (no answer in time)
        and ``overloaded`` (429/503, or refused) shrink the limit; an answer in the usual time grows it."""
        ep = self._endpoints[key]
        took = time.monotonic() - ep.running.pop(token)
        ep.users -= 1
        ep.timed_out = timed_out
        slow = ep.baseline > 0 and took > 2 * ep.baseline + 0.25
        if timed_out or overloaded or slow:
            ep.limit = max(1.0, ep.limit * 0.8)
        else:
            ep.limit = min(float(self.per_endpoint), ep.limit + 1 / ep.limit)
        if not timed_out:
            ep.latency = took if ep.latency == 0.0 else 0.8 * ep.latency + 0.2 * took
            ep.baseline = took if ep.baseline == 0.0 or took < ep.baseline else ep.baseline + 0.02 * (
                took - ep.baseline)
        self.total.release()
        if timed_out:
            self._evict_waiters(ep, key)
        self._give_back(ep)

    def give_back(self, key: str, token: int) -> None:
        """Give back the slots of :meth:`acquire` without a request made (nothing is learned)."""
        ep = self._endpoints[key]
        ep.running.pop(token, None)
        ep.users -= 1
        self.total.release()
        self._give_back(ep)

    # ---- internals ------------------------------------------------------------------------------------------------

    def _endpoint(self, key: str) -> _Endpoint:
        ep = self._endpoints.get(key)
        if ep is None:
            if len(self._endpoints) > 1000:
                self._forget_idle()
            ep = self._endpoints[key] = _Endpoint(self.per_endpoint)
        ep.seen = time.monotonic()
        return ep

    async def _wait(self, key: str, ep: _Endpoint) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ep.waiters.append((fut, time.monotonic()))
        if ep.watchdog is None:
            self._arm_watchdog(key, ep)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give_back(ep)  # handed a slot just as we were cancelled: pass it on
            raise

    def _give_back(self, ep: _Endpoint) -> None:
        """Return one slot, then hand free slots to the first waiters still waiting (up to the limit)."""
        ep.busy -= 1
        while ep.waiters and ep.busy < ep.slots:
            fut, _ = ep.waiters.popleft()
            if not fut.done():
                ep.busy += 1
                fut.set_result(None)

    def _arm_watchdog(self, key: str, ep: _Endpoint) -> None:
        every = min(self.hang_after, self.max_hold) / 2
        ep.watchdog = asyncio.get_running_loop().call_later(every, self._watch, key, ep)

    def _watch(self, key: str, ep: _Endpoint) -> None:
        """While deliveries wait: if the endpoint started hanging, park them (they would hold prefetch slots);
        park those that waited ``max_hold`` in any case."""
        ep.watchdog = None
        if self.hanging(key):
            self._evict_waiters(ep, key)
        else:
            self._evict_waiters(ep, key, since=time.monotonic() - self.max_hold)
        if ep.waiters:
            self._arm_watchdog(key, ep)

    def _evict_waiters(self, ep: _Endpoint, key: str, since: float | None = None) -> None:
        """Park the waiters (those waiting since before ``since``, if given: the oldest are first)."""
        while ep.waiters and (since is None or ep.waiters[0][1] < since):
            fut, _ = ep.waiters.popleft()
            if not fut.done():
                fut.set_exception(EndpointBusyError(key))

    def _active_endpoints(self, now: float) -> int:
        if now - self._active_at > 0.5:
            self._active = sum(1 for ep in self._endpoints.values() if ep.users or now - ep.seen < ACTIVE_FOR) or 1
            self._active_at = now
        return self._active

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for key in [k for k, ep in self._endpoints.items() if not ep.users and now - ep.seen > FORGET_AFTER]:
            del self._endpoints[key]
