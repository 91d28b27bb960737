"""The guards of the per-delivery writes, against the real store: an attempt's outcome, a hold and a postponement
apply only to an event still in flight (New or Retrying) and waiting for that very attempt; otherwise nothing
changes."""

import pytest

from hookpost.common.ids import new_id
from hookpost.common.models import Entity, EventStatus, WebhookEvent
from hookpost.store import Store


async def stored(store: Store, status: EventStatus, count: int) -> WebhookEvent:
    eid = new_id("evt")
    ev = WebhookEvent(id=eid, webhook_id="wh_g", change_id=f"chg-{eid}", type="article.updated",
                      entity=Entity(kind="article", id="A-1"), payload={"id": eid}, status=status,
                      attempt_count=count, next_attempt_ms=1000)
    await store.events.insert_new([ev])
    return ev


async def doc(store: Store, ev: WebhookEvent) -> dict:  # type: ignore[type-arg]
    return await store.events.coll.find_one({"_id": ev.id})


@pytest.mark.parametrize("status", [EventStatus.NEW, EventStatus.RETRYING])
async def test_an_outcome_is_recorded_on_an_event_in_flight_waiting_for_that_attempt(store: Store, status) -> None:
    ev = await stored(store, status, 2)
    assert await store.events.record_attempts([(ev.id, 3, {"status": "Finished", "last_status_code": 200})])
    d = await doc(store, ev)
    assert (d["status"], d["attempt_count"], d["last_status_code"]) == ("Finished", 3, 200)


@pytest.mark.parametrize("status,count,attempt", [
    (EventStatus.FINISHED, 2, 3), (EventStatus.FAILED, 2, 3),  # ended: no outcome lands on it
    (EventStatus.RETRYING, 3, 3), (EventStatus.NEW, 0, 2)])  # another attempt than the one it waits for
async def test_no_outcome_lands_on_an_ended_event_or_another_attempt(store: Store, status, count, attempt) -> None:
    ev = await stored(store, status, count)
    before = await doc(store, ev)
    assert await store.events.record_attempts([(ev.id, attempt, {"status": "Finished"})]) == [False]
    assert await doc(store, ev) == before


async def test_a_batch_records_the_outcomes_that_apply_and_only_those(store: Store) -> None:
    live, ended = await stored(store, EventStatus.RETRYING, 1), await stored(store, EventStatus.FAILED, 1)
    assert await store.events.record_attempts([(live.id, 2, {"status": "Finished"}),
                                               (ended.id, 2, {"status": "Finished"})]) == [True, False]
    assert (await doc(store, ended))["status"] == "Failed"


async def test_holds_and_postponements_apply_only_to_an_event_in_flight(store: Store) -> None:
    live, ended = await stored(store, EventStatus.RETRYING, 1), await stored(store, EventStatus.FAILED, 1)
    await store.events.hold([(live.id, 2, "http://a:80", 5000), (ended.id, 2, "http://a:80", 5000)])
    assert (await doc(store, live))["held"] == "http://a:80"
    assert (await doc(store, ended)).get("held") is None
    assert not await store.events.postpone(ended.id, 2, 9000)
    assert (await doc(store, ended))["next_attempt_ms"] == 1000
    assert await store.events.postpone(live.id, 2, 9000)
    assert (await doc(store, live))["next_attempt_ms"] == 9000
