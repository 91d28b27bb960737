"""Concurrency limits: a global bound on deliveries in flight, a bound per receiver endpoint, and the rule that
says when a delivery should rather be deferred than wait for its endpoint."""

import asyncio
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from itertools import count
from urllib.parse import urlsplit


@lru_cache(maxsize=65536)
def endpoint_key(url: str) -> str:
    """Return the endpoint a URL belongs to for limiting purposes: ``scheme://host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class EndpointBusyError(Exception):
    """No slot of the endpoint came free within the wait allowed."""


class _Endpoint:
    """One endpoint's slots: ``free`` ones, and the deliveries waiting for one (first come, first served; a
    released slot goes straight to the first waiter, so a newcomer cannot overtake it)."""

    __slots__ = ("free", "latency", "parked", "running", "users", "waiters")

    def __init__(self, per_endpoint: int) -> None:
        self.free = per_endpoint
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.users = 0
        self.running: dict[int, float] = {}
        self.latency = 0.0
        self.parked: list[float] = []  # heap of the times deliveries this process deferred come back

    def backlog(self, now: float) -> int:
        """Deliveries this process deferred that are not back yet."""
        parked = self.parked
        while parked and parked[0] <= now:
            heapq.heappop(parked)
        return len(parked)

    async def take(self, key: str, max_wait: float | None) -> None:
        """Take a slot, waiting up to ``max_wait`` seconds (one timer, no task) or raise EndpointBusyError."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_later(max_wait, _expire, fut, key) if max_wait is not None else None
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.give()  # handed a slot just as we were cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def give(self) -> None:
        """Return a slot: to the first waiter still waiting, else to the free pool."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


def _expire(fut: asyncio.Future[None], key: str) -> None:
    if not fut.done():
        fut.set_exception(EndpointBusyError(key))


class EndpointLimiter:
    """At most ``per_endpoint`` deliveries to one endpoint and ``total`` overall at the same time.

    A delivery first takes its endpoint's slot, then a global one, so deliveries queued behind one slow
    endpoint never hold global slots while they wait. :meth:`should_defer` tells when waiting would take longer
    than ``defer_after`` seconds, judged from the endpoint's recent request time and its oldest running request
    (a hanging endpoint is recognised before any of its requests times out).
    """

    def __init__(self, total: int, per_endpoint: int) -> None:
        self.total = asyncio.Semaphore(total)
        self.per_endpoint = per_endpoint
        self._endpoints: dict[str, _Endpoint] = {}
        self._tokens = count()

    def waiting(self, key: str) -> int:
        """Return how many deliveries hold or wait for endpoint ``key``."""
        ep = self._endpoints.get(key)
        return ep.users if ep else 0

    def expected_wait(self, key: str) -> float:
        """Estimate how long a new delivery to ``key`` would wait for a slot, in seconds: 0 while a slot is
        free, else the rounds of requests ahead of it (those holding or waiting for a slot, and those deferred
        and not back yet) times the endpoint's request time."""
        ep = self._endpoints.get(key)
        if ep is None or ep.users < self.per_endpoint:
            return 0.0
        now = time.monotonic()
        oldest = now - next(iter(ep.running.values())) if ep.running else 0.0  # running is in start order
        per_request = max(ep.latency, oldest)
        ahead = ep.users - self.per_endpoint + ep.backlog(now)
        return (ahead // self.per_endpoint + 1) * per_request

    def park(self, key: str, seconds: float) -> None:
        """Note that a delivery to ``key`` was deferred for ``seconds``: until it is back it counts as being
        ahead of newcomers in :meth:`expected_wait`, so they are deferred for longer and cycle less."""
        ep = self._endpoints.get(key)
        if ep is not None and len(ep.parked) < 100_000:
            heapq.heappush(ep.parked, time.monotonic() + seconds)

    def should_defer(self, key: str, defer_after: float) -> bool:
        """Tell whether a delivery to ``key`` would wait longer than ``defer_after`` seconds for a slot."""
        return self.expected_wait(key) > defer_after

    @property
    def in_flight(self) -> int:
        """Deliveries holding a slot now (all endpoints)."""
        return sum(len(ep.running) for ep in self._endpoints.values())

    async def acquire(self, key: str, max_wait: float | None = None) -> int:
        """Take one slot of endpoint ``key`` and one global slot; return the token :meth:`release` needs.

        Raises :class:`EndpointBusyError` if no endpoint slot comes free within ``max_wait`` seconds.
        """
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(self.per_endpoint)
        ep.users += 1
        try:
            await ep.take(key, max_wait)
            try:
                await self.total.acquire()
            except BaseException:
                ep.give()
                raise
        except BaseException:
            self._leave(key, ep)
            raise
        token = next(self._tokens)
        ep.running[token] = time.monotonic()
        return token

    def release(self, key: str, token: int) -> None:
        """Give back the slots taken by :meth:`acquire` (and learn the endpoint's request time)."""
        ep = self._endpoints[key]
        took = time.monotonic() - ep.running.pop(token)
        ep.latency = took if ep.latency == 0.0 else 0.8 * ep.latency + 0.2 * took
        self.total.release()
        ep.give()
        self._leave(key, ep)

    def _leave(self, key: str, ep: _Endpoint) -> None:
        ep.users -= 1
        if ep.users == 0:  # an idle endpoint is forgotten (deliveries it had deferred come back to a free slot)
            del self._endpoints[key]

    @asynccontextmanager
    async def slot(self, key: str, max_wait: float | None = None) -> AsyncIterator[None]:
        """Hold one slot of endpoint ``key`` and one global slot for the duration of the block (see :meth:`acquire`).

        Example::

            async with limiter.slot("https://hooks.example.com:443", max_wait=1.0):
                await send()
        """
        token = await self.acquire(key, max_wait)
        try:
            yield
        finally:
            self.release(key, token)
