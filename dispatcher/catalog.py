"""The event-type catalog as fan-out sees it: count the types it sees, and check the contracts of declared types.

Counting costs a dict update per change; the counts are written every ``flush_every`` seconds as one
``bulk_write`` (one upsert per type and day, :meth:`~hookpost.store.catalog.CatalogRepo.record_seen`), so the
store operations per delivery do not grow. They are approximate: a dispatcher that is killed loses what it has not
flushed (a graceful stop flushes), and a flush that fails is retried with the next one.

Contracts are read through a :class:`~hookpost.common.contracts.ContractCache` (TTL
``HOOKPOST_WEBHOOK_CACHE_TTL``, like the webhook cache); only a declared type with a schema and ``enforce`` is
checked, so a type without one costs a dict lookup.
"""

import asyncio
import logging

from hookpost.common.contracts import ContractCache
from hookpost.common.models import ChangeEvent, now_ms
from hookpost.common.wire import NOTICE_PREFIX
from hookpost.store.catalog import DAY_MS, KEEP_DAYS, CatalogRepo, Seen, day_of

log = logging.getLogger("hookpost.catalog")


class SeenCounter:
    """Counts of event types seen, by type and UTC day, until they are taken for a flush.

    At most ``max_keys`` (type, day) pairs are held between flushes; sightings of further new types are dropped
    (and counted in :attr:`dropped`), so a producer inventing types cannot exhaust memory.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self.counts: dict[tuple[str, int], Seen] = {}
        self.dropped = 0

    def note(self, event_type: str, ms: int | None = None) -> None:
        """Count one sighting of ``event_type`` (now, or at ``ms``)."""
        ms = now_ms() if ms is None else ms
        key = (event_type, day_of(ms))
        found = self.counts.get(key)
        if found is not None:
            found.add(Seen(1, ms, ms))
        elif len(self.counts) < self.max_keys:
            self.counts[key] = Seen(1, ms, ms)
        else:
            self.dropped += 1

    def take(self) -> dict[tuple[str, int], Seen]:
        """Return the counts so far and start again from nothing."""
        counts, self.counts = self.counts, {}
        return counts

    def put_back(self, counts: dict[tuple[str, int], Seen]) -> None:
        """Fold counts that could not be written back in (they go with the next flush)."""
        for key, seen in counts.items():
            found = self.counts.get(key)
            if found is None:
                self.counts[key] = seen
            else:
                found.add(seen)


class Catalog:
    """What fan-out needs of the event-type catalog: :meth:`seen` and :meth:`violation`; plus the flusher."""

    def __init__(self, repo: CatalogRepo, *, ttl: float, flush_every: float) -> None:
        self.repo = repo
        self.flush_every = flush_every
        self.counter = SeenCounter()
        self.contracts = ContractCache(repo.declared_all, ttl)
        self._pruned_day = 0

    def seen(self, event_type: str) -> None:
        """Count one change of ``event_type`` (in memory; written by the next flush)."""
        self.counter.note(event_type)

    async def violation(self, change: ChangeEvent) -> str | None:
        """Return why ``change`` breaks its type's enforced contract (the JSON path and the rule), or None."""
        if change.type.startswith(NOTICE_PREFIX):  # Hookpost's own notices have no declared contract
            return None
        found = await self.contracts.check(change.type, change.data)
        return None if found is None else f"contract of {change.type}: {found}"

    async def flush(self) -> int:
        """Write the counts so far (one ``bulk_write``); return how many (type, day) pairs. On failure the counts
        are kept for the next flush and the error is raised."""
        counts = self.counter.take()
        if not counts:
            return 0
        try:
            await self.repo.record_seen(counts)
        except BaseException:
            self.counter.put_back(counts)
            raise
        return len(counts)

    async def prune(self) -> None:
        """Once a day, delete sightings older than the catalog shows (bounded batches)."""
        today = day_of(now_ms())
        if self._pruned_day == today:
            return
        while await self.repo.prune(today - KEEP_DAYS * DAY_MS) > 0:
            pass
        self._pruned_day = today

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every ``flush_every`` seconds until ``stopping`` is set (then :meth:`close` flushes the rest)."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.flush_every)
                return
            except TimeoutError:
                pass
            try:
                await self.flush()
                await self.prune()
            except Exception as exc:  # kept for the next flush; counts are approximate anyway
                log.warning("flushing event-type counts failed; will try again", extra={"error": str(exc)[:300]})
            if self.counter.dropped:
                log.warning("too many distinct event types between two flushes; some sightings were not counted",
                            extra={"dropped": self.counter.dropped})
                self.counter.dropped = 0

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is left (a graceful stop), waiting at most ``timeout`` seconds; a failure is logged."""
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("could not flush the last event-type counts; they are lost",
                        extra={"error": str(exc)[:300], "pairs": len(self.counter.counts)})
