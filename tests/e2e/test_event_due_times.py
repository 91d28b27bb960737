"""An event's next attempt is stored twice — epoch milliseconds to query, a datetime to show — and every write
that moves one moves the other."""

from datetime import timedelta

from hookpost.common.models import EventStatus, now_ms
from tests.seed import insert, make_events


async def test_a_reconciler_claim_moves_the_next_attempt_an_operator_sees(store):
    event = make_events(1, ["wh_1"], spread=timedelta(hours=1))[0].model_copy(
        update={"status": EventStatus.RETRYING, "next_attempt_ms": now_ms() - 600_000})
    await insert(store, [event])
    until = now_ms() + 300_000
    assert await store.events.claim_overdue(event, until, "w_test")
    shown = await store.events.get(event.id)
    assert shown.next_attempt_ms == until
    assert shown.next_attempt_at is not None and int(shown.next_attempt_at.timestamp() * 1000) == until
