"""The attempt history: attempt 1 in the event's own document (one write per delivery on the happy path), later
attempts in ``attempts``; ``events show``, the webhooks' success rate and the janitor see them all."""

import json
from datetime import UTC, datetime

from hookpost.common.models import Attempt, ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.cleanup import RetentionRule, cleanup
from tests.e2e.test_cli import run_cli
from tests.helpers import wait_until


async def finished(store: Store, n: int) -> list:
    async def check():  # type: ignore[no-untyped-def]
        docs = [e for i in range(n) for e in await store.events.find_for_change(f"chg-{i}")
                if e.status == EventStatus.FINISHED]
        return docs if len(docs) == n else None
    return await wait_until(check, 30, message=f"{n} events Finished")


async def test_the_first_attempt_is_kept_in_the_event_and_the_history_reads_both(settings, store, dispatcher,
                                                                               new_receiver):
    # the receiver answers its first request 503, every other one 200: chg-0 takes two attempts, chg-1 one
    rec = await new_receiver([503, 200])
    hook = await store.webhooks.create(rec.url, ["article.*"])
    async with Publisher.from_settings(settings) as p:
        await p.publish(ChangeEvent(id="chg-0", type="article.updated", entity=Entity(kind="article", id="A-1")))
        await finished(store, 1)
        await p.publish(ChangeEvent(id="chg-1", type="article.updated", entity=Entity(kind="article", id="A-2")))
    twice, once = sorted(await finished(store, 2), key=lambda e: e.change_id)

    raw = store.db["attempts"]
    assert [d["_id"] async for d in raw.find({})] == [f"{twice.id}.002"]  # only the second attempt is a document
    assert (await store.db["events"].find_one({"_id": once.id}))["first_attempt"]["status_code"] == 200
    assert [(a.attempt, a.status_code) for a in await store.attempts.for_event(twice.id)] == [(1, 503), (2, 200)]
    assert [(a.attempt, a.status_code) for a in await store.attempts.for_event(once.id)] == [(1, 200)]

    shown = json.loads((await run_cli(settings, "events", "show", twice.id, "--json")).stdout)
    assert [(a["attempt"], a["status_code"]) for a in shown["attempts"]] == [(1, 503), (2, 200)]
    assert "first_attempt" not in shown
    listed = json.loads((await run_cli(settings, "events", "list", "--json")).stdout)
    assert listed and all("first_attempt" not in e for e in listed)
    [view] = json.loads((await run_cli(settings, "webhooks", "list", "--json")).stdout)
    assert view["id"] == hook.id and view["recent_success"] == "67% of 3"

    report = await cleanup(store, [RetentionRule(EventStatus.FINISHED, 0.0)])
    assert report.events["Finished"] == 2 and report.attempts == 1
    assert await raw.find({}).to_list() == [] and await store.events.count({}) == 0


async def test_an_event_stored_before_the_change_keeps_its_first_attempt_in_the_collection(settings, store):
    hook = await store.webhooks.create("http://127.0.0.1:9/x", ["article.*"])
    old = {"_id": "evt_old", "webhook_id": hook.id, "change_id": "chg-old", "type": "article.updated",
           "entity": {"kind": "article", "id": "A-1"}, "payload": {}, "status": "Finished", "attempt_count": 1}
    await store.db["events"].insert_one(old)
    await store.attempts.insert([Attempt(id="evt_old.001", event_id="evt_old", webhook_id=hook.id, attempt=1,
                                         started_at=datetime.now(UTC), duration_ms=3.0, status_code=200)])
    assert [(a.attempt, a.status_code) for a in await store.attempts.for_event("evt_old")] == [(1, 200)]
    assert await store.attempts.recent_outcomes(hook.id) == [200]
