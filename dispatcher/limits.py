"""Concurrency limits: a global bound on deliveries in flight and a bound per receiver endpoint."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit


def endpoint_key(url: str) -> str:
    """Return the endpoint a URL belongs to for limiting purposes: ``scheme://host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class EndpointLimiter:
    """At most ``per_endpoint`` deliveries to one endpoint and ``total`` overall at the same time.

    A delivery first takes its endpoint's slot, then a global one, so deliveries queued behind one slow
    endpoint never hold global slots while they wait.
    """

    def __init__(self, total: int, per_endpoint: int) -> None:
        self.total = asyncio.Semaphore(total)
        self.per_endpoint = per_endpoint
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    def busy(self, key: str) -> bool:
        """Tell whether every slot of endpoint ``key`` is taken."""
        sem = self._slots.get(key)
        return sem is not None and sem.locked()

    def waiting(self, key: str) -> int:
        """Return how many deliveries hold or wait for endpoint ``key``."""
        return self._users.get(key, 0)

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold one slot of endpoint ``key`` and one global slot for the duration of the block."""
        sem = self._slots.get(key)
        if sem is None:
            sem = self._slots[key] = asyncio.Semaphore(self.per_endpoint)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with sem, self.total:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._slots[key]
