"""Group commit: concurrent callers submit one item each; items are written together in one store round trip.

While a write is in flight, new items wait and form the next batch, so batches grow with load and a lone item
waits at most ``max_delay``. Each caller gets its own item's result.

Example::

    inserts = Batcher(lambda events: store.events.insert_flags(events), max_batch=500)
    created = await inserts.submit(event)      # True if this event was new
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Failed:
    """A ``write`` result standing for one item's own error: its caller gets ``error`` raised, the others their
    results (so one bad item does not fail a whole batch)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class Batcher(Generic[T, R]):
    """Collects items from concurrent callers and writes them with ``write(items) -> results`` (same order; a
    result may be :class:`Failed`)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Sequence[R | Failed]]], *, max_batch: int = 500,
                 max_delay: float = 0.001, max_in_flight: int = 2) -> None:
        self.write = write
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next batch and return its result once the batch is written."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None and self._in_flight < self.max_in_flight:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._in_flight >= self.max_in_flight:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.write([item for item, _ in batch])
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, Failed):
                    fut.set_exception(res.error)
                else:
                    fut.set_result(res)
            self.batches += 1
            self.items += len(batch)
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._flush()
