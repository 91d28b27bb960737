"""Refresh-ahead for in-memory caches of store data: reload at most once per ``ttl``, and on a busy process never
make a read wait for it.

Example::

    refresh = TtlRefresh(2.0, reload=self._reload, what="webhook cache")
    await refresh.ensure()       # before answering a read from the cache
    refresh.loaded()             # at the end of a successful reload
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("hookpost.cache")

NEVER = -1e18


class TtlRefresh:
    """Decides when a cache reloads: a cache never loaded, invalidated or idle past ``ttl`` reloads before a read is
    answered; past half the TTL a read starts a reload in the background and is answered from what is loaded (one
    reload at a time)."""

    def __init__(self, ttl: float, reload: Callable[[], Awaitable[None]], *, what: str) -> None:
        self.ttl = ttl
        self.reload = reload
        self.what = what
        self.loaded_at = NEVER
        self._lock = asyncio.Lock()
        self._ahead: asyncio.Task[None] | None = None

    async def ensure(self) -> None:
        """Make the cache at most ``ttl`` old before a read (see the class docstring)."""
        age = time.monotonic() - self.loaded_at
        if age > self.ttl:
            async with self._lock:
                if time.monotonic() - self.loaded_at > self.ttl:
                    await self.reload()
        elif age > self.ttl / 2 and self._ahead is None:
            self._ahead = asyncio.get_running_loop().create_task(self._reload_ahead())

    def loaded(self) -> None:
        """Note that a reload just finished."""
        self.loaded_at = time.monotonic()

    def invalidate(self) -> None:
        """Make the next read reload first."""
        self.loaded_at = NEVER

    async def _reload_ahead(self) -> None:
        try:
            async with self._lock:
                if time.monotonic() - self.loaded_at > self.ttl / 2:
                    await self.reload()
        except Exception as exc:  # the store is down or slow: a read past the TTL reloads (and waits) itself
            log.warning(f"{self.what} reload failed; will try again", extra={"error": str(exc)[:300]})
        finally:
            self._ahead = None
