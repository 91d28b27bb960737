"""What the two consumers write to the store, batched: new events (fan-out) and delivery outcomes.

Writes that arrive while one is on its way go together in the next (group commit, see
:mod:`~hookpost.dispatcher.batcher`). A batch of **new events** is one ``insert_many``; if the store refuses it,
each change's events are inserted on their own, so only a change that fails itself fails. A batch of delivery
**outcomes** (each the attempt made, if any, and the event's new fields) is one ``insert_many`` of the attempts
after an event's first (the first attempt is kept in the event's own document), then one ``bulk_write`` of the
event updates, each guarded on the event's previous attempt count, so a duplicate message records nothing.

Example::

    flags = await EventInserter(store).insert(events)          # which were new (a replay inserts none)
    recorder = OutcomeRecorder(store, batch=500)
    if not await recorder.record(Outcome(event_id, attempt, changes, made)):
        ...the event was already past this attempt: a duplicate message...
"""

from hookpost.common.ids import new_id
from hookpost.common.models import WebhookEvent
from hookpost.dispatcher.batcher import Batcher, Failed
from hookpost.dispatcher.delivery import Outcome
from hookpost.dispatcher.storeguard import GuardedStore
from hookpost.store.attempts import first_attempt_field, kept_in_event


class OutcomeRecorder:
    """Writes delivery outcomes to the store, batched (see the module docstring)."""

    def __init__(self, store: GuardedStore, *, batch: int = 500) -> None:
        self.store = store
        self.batches: Batcher[Outcome, bool] = Batcher(self._write, max_batch=batch)

    async def record(self, outcome: Outcome) -> bool:
        """Record ``outcome``; False if the event was already past this attempt (a duplicate message)."""
        return await self.batches.submit(outcome)

    async def _write(self, outcomes: list[Outcome]) -> list[bool]:
        """Write a batch of outcomes: the attempts after the first in one round trip (if any), then the event
        updates, first attempts included, in one."""
        await self.store.attempts.insert([o.made for o in outcomes if o.made is not None and not kept_in_event(o.made)])
        # tokens made once, outside the store's retry: a retry after a lost reply recognises its own writes
        tokens = [new_id("w") for _ in outcomes]
        return await self.store.events.record_attempts(
            [(o.event_id, o.attempt, o.changes | first_attempt_field(o.made)) for o in outcomes],
            tokens)


class EventInserter:
    """Inserts fan-out's new events, batched across changes (see the module docstring)."""

    def __init__(self, store: GuardedStore, *, batch: int = 500) -> None:
        self.store = store
        self.batches: Batcher[list[WebhookEvent], list[bool]] = Batcher(self._insert, max_batch=batch)

    async def insert(self, events: list[WebhookEvent]) -> list[bool]:
        """Insert the events of one change; return which were new."""
        return await self.batches.submit(events)

    async def of_change(self, change_id: str) -> list[WebhookEvent]:
        """The events stored for the change ``change_id``."""
        return await self.store.events.find_for_change(change_id)

    async def _insert(self, groups: list[list[WebhookEvent]]) -> list[list[bool] | Failed]:
        """Insert the events of several changes in one round trip; return per change which were new. If the
        store refuses the batch, each change is inserted on its own, so only a change that fails itself fails."""
        try:
            flags = await self.store.events.insert_flags([e for g in groups for e in g])
        except Exception:
            if len(groups) == 1:
                raise
            return [await self._insert_one(g) for g in groups]
        out: list[list[bool] | Failed] = []
        i = 0
        for g in groups:
            out.append(flags[i:i + len(g)])
            i += len(g)
        return out

    async def _insert_one(self, events: list[WebhookEvent]) -> list[bool] | Failed:
        try:
            return await self.store.events.insert_flags(events)
        except Exception as exc:
            return Failed(exc)
