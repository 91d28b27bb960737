"""Restarting events: a store + broker operation that gives an event a fresh budget and publishes its delivery.

A ``Failed`` event (or a ``Finished`` one with ``force``) goes back to ``New`` with ``budget_start`` = its
attempt count, so it gets ``HOOKPOST_MAX_ATTEMPTS`` more attempts; its earlier attempts stay in its history.
An event that is already ``New``/``Retrying`` is skipped: it has a delivery in flight, and a second one would
send twice. (If that delivery was lost, the dispatcher's reconciler re-publishes it.)

An event of an ordered webhook (``ordering=entity``) goes back to the tail of its entity's lane instead, waiting,
and starts when its lane is free (at once if it is): a restart never overtakes a newer change in flight.
"""

from collections.abc import Callable, Sequence
from typing import Protocol

from hookpost.admin.restart_rules import restart_refusal
from hookpost.common.deliveries import first_delivery
from hookpost.common.lanes import LaneKey
from hookpost.common.models import DeliveryMessage, EventStatus, WebhookEvent, now_ms
from hookpost.common.records import RestartReport
from hookpost.store import Store
from hookpost.store.lane_moves import LaneMover


class DeliverySink(Protocol):
    """Anything that publishes delivery messages with confirms (the dispatcher's outbox, a DeliveryPublisher)."""

    async def deliveries(self, msgs: Sequence[DeliveryMessage]) -> None:
        """Publish ``msgs``; return once the broker confirmed them all."""


async def restart_events(store: Store, outbox: DeliverySink, events: list[WebhookEvent], *, force: bool = False,
                         progress: Callable[[int], None] | None = None, window: int = 200,
                         lanes: LaneMover | None = None) -> RestartReport:
    """Restart ``events`` (see the module doc); publish their deliveries in confirmed windows. ``lanes`` moves
    ordered webhooks' lanes on (without it their events restart like any other)."""
    report = RestartReport()
    for start in range(0, len(events), window):
        chunk = events[start:start + window]
        due = []
        rejoined: dict[str, None] = {}
        for event in chunk:
            why = restart_refusal(event, force)
            at_ms = now_ms()
            if why is None and lanes is not None and event.lane:
                key = LaneKey(at_ms, event.created_ms, event.change_id)  # the tail of its lane, settled already
                if await store.lanes.rejoin(event, key, stored_ms=at_ms - lanes.settle_ms):
                    rejoined[event.lane] = None
                    report.restarted.append(event.id)
                else:
                    report.skipped[event.id] = "changed meanwhile"
                continue
            if why is None and not await store.events.restart(event, at_ms=at_ms):
                why = "changed meanwhile"
            if why:
                report.skipped[event.id] = why
            else:
                due.append(event.model_copy(update={"budget_start": event.attempt_count,
                                                    "status": EventStatus.NEW, "next_attempt_ms": at_ms}))
        await outbox.deliveries([first_delivery(e) for e in due])
        for lane in rejoined:
            await lanes.advance(lane)  # type: ignore[union-attr]  # rejoined only with lanes
        report.restarted += [e.id for e in due]
        if progress:
            progress(len(chunk))
    return report
