"""Concurrency limits: a global bound on deliveries in flight, a bound per receiver endpoint, and the rule that
says when a delivery should rather be deferred than wait for its endpoint."""

import asyncio
import time
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
    __slots__ = ("latency", "running", "sem", "users")

    def __init__(self, per_endpoint: int) -> None:
        self.sem = asyncio.Semaphore(per_endpoint)
        self.users = 0
        self.running: dict[int, float] = {}
        self.latency = 0.0


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
        """Estimate how long a new delivery to ``key`` would wait for a slot, in seconds."""
        ep = self._endpoints.get(key)
        if ep is None or ep.users < self.per_endpoint:
            return 0.0
        oldest = time.monotonic() - min(ep.running.values()) if ep.running else 0.0
        per_request = max(ep.latency, oldest)
        rounds = (ep.users - self.per_endpoint) // self.per_endpoint + 1
        return rounds * per_request

    def should_defer(self, key: str, defer_after: float) -> bool:
        """Tell whether a delivery to ``key`` would wait longer than ``defer_after`` seconds for a slot."""
        return self.expected_wait(key) > defer_after

    @asynccontextmanager
    async def slot(self, key: str, max_wait: float | None = None) -> AsyncIterator[None]:
        """Hold one slot of endpoint ``key`` and one global slot for the duration of the block.

        Raises :class:`EndpointBusyError` if no endpoint slot comes free within ``max_wait`` seconds.
        """
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(self.per_endpoint)
        ep.users += 1
        token = next(self._tokens)
        try:
            if not ep.sem.locked():
                await ep.sem.acquire()  # free now: no timer needed
            else:
                try:
                    async with asyncio.timeout(max_wait):
                        await ep.sem.acquire()
                except TimeoutError:
                    raise EndpointBusyError(key) from None
            try:
                async with self.total:
                    started = ep.running[token] = time.monotonic()
                    try:
                        yield
                    finally:
                        del ep.running[token]
                        took = time.monotonic() - started
                        ep.latency = took if ep.latency == 0.0 else 0.8 * ep.latency + 0.2 * took
            finally:
                ep.sem.release()
        finally:
            ep.users -= 1
            if ep.users == 0:
                del self._endpoints[key]
