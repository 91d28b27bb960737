"""Per-entity ordering (ordering=entity), end to end: real broker, real store, real HTTP."""

from aiohttp import web

from hookpost.admin.core import Admin
from hookpost.common.lanes import LaneKey, lane_of
from hookpost.common.models import ChangeEvent, Entity, EventStatus, Ordering, now_ms
from hookpost.common.records import WebhookUpdate
from hookpost.dispatcher.fanout import new_events
from hookpost.producer import Publisher
from hookpost.store.cleanup import RetentionRule, cleanup
from hookpost.store.events import EventFilter
from hookpost.store.lane_moves import LaneMover
from hookpost.store.lanes import queue_doc
from tests.helpers import running_worker, wait_until


def change(cid: str, entity_id: str, seq: int | None, etype: str = "article.updated") -> ChangeEvent:
    return ChangeEvent(id=cid, type=etype, entity=Entity(kind="article", id=entity_id), sequence=seq,
                       data={"n": seq})


async def all_ended(store, n: int):  # type: ignore[no-untyped-def]
    events = await store.events.find(EventFilter(), limit=n + 10)
    done = [e for e in events if e.status in (EventStatus.FINISHED, EventStatus.FAILED)]
    return events if len(events) == n and len(done) == n else None


async def test_a_retried_change_is_not_overtaken_by_the_next_of_its_entity(stores, new_receiver):
    settings, st = await stores(order_settle="100ms")
    seen: list[tuple[str, int]] = []

    async def respond(n: int, request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((body["data"]["entity"]["id"], body["data"]["sequence"]))
        # the first request of A-1's change 1 fails: without ordering, 2 and 3 would overtake its retry
        return web.Response(status=503 if n == 1 else 200)

    rec = await new_receiver(respond=respond)
    hook = await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings):
        async with Publisher.from_settings(settings) as pub:
            await pub.publish(change("c1", "A-1", 1))
            await wait_until(lambda: len(seen) >= 1, message="first request")
            for i in (2, 3):
                await pub.publish(change(f"c{i}", "A-1", i))
            await pub.publish(change("b1", "B-1", 1))
        events = await wait_until(lambda: all_ended(st, 4), message="every event ended")
    a_seqs = [s for e, s in seen if e == "A-1"]
    assert a_seqs == [1, 1, 2, 3]
    assert ("B-1", 1) in seen
    assert all(e.status == EventStatus.FINISHED and e.lane and not e.waiting for e in events)
    assert {e.webhook_id for e in events} == {hook.id}


async def test_a_late_change_is_superseded_not_sent(stores, new_receiver):
    settings, st = await stores(order_settle="50ms")
    rec = await new_receiver([200])
    await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings):
        async with Publisher.from_settings(settings) as pub:
            await pub.publish(change("c5", "A-1", 5))
            await wait_until(lambda: len(rec.requests) == 1, message="sequence 5 delivered")
            await pub.publish(change("c4", "A-1", 4))  # arrives after 5 was sent: late
            await pub.publish(change("c6", "A-1", 6))
        events = await wait_until(lambda: all_ended(st, 3), message="every event ended")
    assert [r.json["data"]["sequence"] for r in rec.requests] == [5, 6]
    by_change = {e.change_id: e for e in events}
    late = by_change["c4"]
    assert late.status == EventStatus.FINISHED and late.attempt_count == 0
    # superseded by the event sent last when it was looked at: c5, or c6 if c6 was stored and settled before c4
    assert late.superseded_by in (by_change["c5"].id, by_change["c6"].id)


async def test_waiting_events_fail_with_their_lane_when_the_webhook_is_disabled(stores, new_receiver):
    settings, st = await stores(order_settle="50ms", retry_delays="2s", max_attempts=2)
    rec = await new_receiver([503])
    hook = await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings) as worker:
        async with Publisher.from_settings(settings) as pub:
            for i in (1, 2, 3):
                await pub.publish(change(f"c{i}", "A-1", i))
        await wait_until(lambda: len(rec.requests) == 1, message="the head's first attempt")

        async def waiting() -> bool:
            evs = await st.events.find(EventFilter(), limit=10)
            return len(evs) == 3 and sum(e.waiting for e in evs) == 2
        await wait_until(waiting, message="two events waiting behind the head")
        assert await st.lanes.waiting_ids([e.id for e in await st.events.find(EventFilter(), limit=10)])
        await st.webhooks.set_active(hook.id, False, "by test")
        worker.cache.invalidate()
        events = await wait_until(lambda: all_ended(st, 3), timeout=20, message="the lane ended")
    assert all(e.status == EventStatus.FAILED for e in events)
    assert len(rec.requests) == 1  # the waiting ones were never sent
    assert {e.last_error for e in events} == {"webhook disabled: by test"}


async def test_other_entities_are_never_held_back(stores, new_receiver):
    settings, st = await stores(order_settle="50ms", retry_delays="30s", max_attempts=2)
    rec = await new_receiver(respond=None)

    async def respond(n: int, request: web.Request) -> web.Response:
        body = await request.json()
        return web.Response(status=503 if body["data"]["entity"]["id"] == "STUCK" else 200)
    rec.respond = respond
    await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings):
        async with Publisher.from_settings(settings) as pub:
            await pub.publish(change("s1", "STUCK", 1))
            await pub.publish(change("s2", "STUCK", 2))
            for i in range(10):
                await pub.publish(change(f"o{i}", f"E-{i}", 1))
        await wait_until(lambda: len(rec.requests) == 11, message="the other entities delivered")
    assert sum(1 for r in rec.requests if r.json["data"]["entity"]["id"] == "STUCK") == 1


async def test_when_the_janitor_deletes_a_stuck_head_its_lane_moves_on(stores, new_receiver):
    settings, st = await stores(order_settle="50ms", retry_delays="1h", max_attempts=2, reconcile_interval="500ms")
    rec = await new_receiver(respond=None)

    async def respond(n: int, request: web.Request) -> web.Response:
        return web.Response(status=503 if (await request.json())["data"]["sequence"] == 1 else 200)
    rec.respond = respond
    await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings):
        async with Publisher.from_settings(settings) as pub:
            for i in (1, 2, 3):
                await pub.publish(change(f"c{i}", "A-1", i))

        async def stuck() -> bool:
            evs = await st.events.find(EventFilter(statuses=[EventStatus.RETRYING]), limit=5)
            return len(evs) == 1
        await wait_until(stuck, message="the head Retrying an hour from now")
        report = await cleanup(st, [RetentionRule(EventStatus.RETRYING, 0)], duty=1.0)
        assert report.events == {"Retrying": 1}
        await wait_until(lambda: len(rec.requests) == 3, timeout=20, message="the lane moved on")
        events = await wait_until(lambda: all_ended(st, 2), message="the rest Finished")
    assert [r.json["data"]["sequence"] for r in rec.requests] == [1, 2, 3]
    assert {e.change_id for e in events} == {"c2", "c3"}


async def test_turning_ordering_off_releases_the_waiting_events(stores, new_receiver):
    settings, st = await stores(order_settle="50ms", retry_delays="1h", max_attempts=2)
    rec = await new_receiver(respond=None)

    async def respond(n: int, request: web.Request) -> web.Response:
        return web.Response(status=503 if (await request.json())["data"]["sequence"] == 1 else 200)
    rec.respond = respond
    hook = await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with running_worker(settings) as worker, Admin.open(settings) as admin:
        async with Publisher.from_settings(settings) as pub:
            for i in (1, 2, 3):
                await pub.publish(change(f"c{i}", "A-1", i))

        async def two_waiting() -> bool:
            page = await admin.events.list(EventFilter())
            return sorted(e.lane_note() or "" for e in page.items if e.waiting) == [
                f"waiting behind {e.id}" for e in page.items if e.change_id == "c1"] * 2
        await wait_until(two_waiting, message="two events waiting behind the retrying head")
        await admin.webhooks.update(hook.id, WebhookUpdate(ordering=Ordering.NONE), actor="test")
        worker.cache.invalidate()
        await wait_until(lambda: len(rec.requests) == 3, message="the waiting events released and delivered")
        updated = await st.webhooks.get(hook.id)
    assert updated.ordering == Ordering.NONE
    assert sorted(r.json["data"]["sequence"] for r in rec.requests) == [1, 2, 3]
    assert await st.lanes.waiting_of(webhook_id=hook.id) == []


async def test_the_lane_sweep_pages_through_every_stale_lane(stores):
    _, st = await stores()
    await st.lanes.enqueue([{"_id": f"evt_{i}", "lane": f"L{i}", "webhook_id": "wh", "type": "a.b", "rank": 0,
                             "seq": i, "tie": f"c{i}", "stored_ms": 1000 + i} for i in range(5)])
    seen, after = [], -1
    for _ in range(5):
        lanes, after = await st.lanes.stale_lanes(10_000, 2, after_ms=after)
        seen += lanes
        if after == -1:
            break
    assert seen == ["L0", "L1", "L2", "L3", "L4"] and after == -1


async def test_a_change_stored_a_moment_after_a_newer_one_is_not_overtaken(stores):
    """The newer change (sequence 3) has settled, the older one (1) was stored 7 ms after it and has not: nothing
    starts until the older one settles, and then the older one does (a timer firing as the newer one settles used
    to start it, and the older one ended superseded)."""
    _, st = await stores()
    hook = await st.webhooks.create("http://127.0.0.1:9/x", ["article.*"], ordering=Ordering.ENTITY)
    lane = lane_of(hook.id, Entity(kind="article", id="A-1"))
    now = now_ms()
    events = []
    for seq, stored in ((3, now - 1000), (1, now - 993)):
        e = new_events(change(f"c{seq}", "A-1", seq), [hook.id])[0].model_copy(update={"lane": lane, "waiting": True})
        events.append((e, stored, seq))
    await st.events.insert_new([e for e, _, _ in events])
    await st.lanes.enqueue([queue_doc(e, LaneKey(0, seq, e.change_id), stored) for e, stored, seq in events])
    published: list[str] = []

    class Sink:
        async def deliveries(self, msgs):  # type: ignore[no-untyped-def]
            published.extend(m.event_id for m in msgs)

    async def lookup(webhook_id: str):  # type: ignore[no-untyped-def]
        return hook

    mover = LaneMover(st.lanes, Sink(), lookup, settle=1.0)
    due = await mover.advance(lane)
    assert published == [] and due == now - 993 + 1000
    await wait_until(lambda: now_ms() > due, message="the older change settled")
    assert await mover.advance(lane) is None
    assert published == [events[1][0].id]
