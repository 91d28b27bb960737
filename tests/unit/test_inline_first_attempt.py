"""The first attempt made by fan-out (``HOOKPOST_FIRST_ATTEMPT=inline``), over the fakes: the outcome before the
ack, the bounds per change and per process, and a redelivered change after a crash."""

import asyncio

import pytest

from hookpost.common.amqp import ConnectionLostError
from hookpost.common.models import EventStatus
from hookpost.dispatcher.consumer import Verdict
from tests.fakes import FakeMessage, FakeSender, Hanging, build_dispatcher, make_change


async def test_fan_out_makes_the_first_attempt_and_records_it_before_the_change_is_acked():
    d = await build_dispatcher(FakeSender(default=200), first_attempt="inline")
    a = d.store.add_webhook("http://a.example/hook")
    b = d.store.add_webhook("http://b.example/hook")

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    events = d.store.all_events()
    assert {e.status for e in events} == {EventStatus.FINISHED} and {e.attempt_count for e in events} == {1}
    assert sorted(r.webhook_id for r in d.sender.requests) == sorted([a.id, b.id])
    assert d.published == []  # no trip through PREFIX.deliver
    assert d.metrics.first_attempts.labels("inline")._value.get() == 2


async def test_a_failed_first_attempt_is_handed_to_its_retry_queue_before_the_ack():
    d = await build_dispatcher(FakeSender(500), first_attempt="inline")
    d.store.add_webhook()

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    [event] = d.store.all_events()
    assert event.status is EventStatus.RETRYING and event.attempt_count == 1
    [retry] = d.published
    assert retry.routing_key.startswith(f"{d.topology.prefix}.retry.")
    assert retry.delivery().attempt == 2 and retry.delivery().event_id == event.id


async def test_past_the_bound_per_change_the_rest_go_through_the_deliver_queue():
    d = await build_dispatcher(FakeSender(default=200), first_attempt="inline", inline_per_change=3)
    hooks = [d.store.add_webhook(f"http://h{i}.example/hook") for i in range(8)]

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    assert len(d.sender.requests) == 3
    queued = d.published_to(d.topology.deliveries_exchange, "deliver")
    assert len(queued) == 5 and all(p.delivery().attempt == 1 for p in queued)
    made = {r.event_id for r in d.sender.requests}
    assert made.isdisjoint({p.delivery().event_id for p in queued})
    assert len(d.store.all_events()) == len(hooks)


async def test_no_more_than_the_bound_per_process_is_under_way_and_the_change_waits_for_a_place():
    release = asyncio.Event()
    d = await build_dispatcher(FakeSender(default=Hanging(release)), first_attempt="inline", inline_max=2)
    for i in range(3):
        d.store.add_webhook(f"http://h{i}.example/hook")

    task = asyncio.create_task(d.fanout.handle(FakeMessage.of_change(make_change())))
    while d.sender.in_flight < 2:
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert d.sender.in_flight == 2 and len(d.sender.requests) == 2 and not task.done()  # the third waits
    assert d.published == []
    release.set()
    assert await task is Verdict.ACK
    assert len(d.sender.requests) == 3
    assert {e.status for e in d.store.all_events()} == {EventStatus.FINISHED}


async def test_a_redelivered_change_attempts_what_was_not_attempted_and_republishes_what_followed_the_rest():
    d = await build_dispatcher(FakeSender(500, default=200), first_attempt="inline", inline_per_change=10)
    d.store.add_webhook("http://a.example/hook")
    d.store.add_webhook("http://b.example/hook")
    msg = FakeMessage.of_change(make_change())
    d.channel.lose()  # the broker goes away: the failed attempt's retry cannot be published, the change not acked
    with pytest.raises(ConnectionLostError):
        await d.fanout.handle(msg)
    events = {e.id: e for e in d.store.all_events()}
    assert len(d.sender.requests) == 2
    [failed] = [e for e in events.values() if e.status is EventStatus.RETRYING]
    [done] = [e for e in events.values() if e.status is EventStatus.FINISHED]

    await d.reconnect()
    assert await d.fanout.handle(msg.redelivery()) is Verdict.ACK

    assert len(d.sender.requests) == 2  # no first attempt made twice
    assert {e.id for e in d.store.all_events()} == set(events)
    [retry] = [p.delivery() for p in d.published]
    assert (retry.event_id, retry.attempt) == (failed.id, 2)  # what followed the failed attempt, published again
    assert d.store.event(done.id).status is EventStatus.FINISHED


async def test_a_redelivered_change_makes_the_first_attempts_the_first_try_stored_but_never_made():
    d = await build_dispatcher(FakeSender(default=200), first_attempt="inline")
    hook = d.store.add_webhook()
    change = make_change()
    event, _ = d.seed_event(hook, change)  # stored by a fan-out killed before its attempt

    assert await d.fanout.handle(FakeMessage.of_change(change, redelivered=True)) is Verdict.ACK

    assert [r.event_id for r in d.sender.requests] == [event.id]
    assert d.store.event(event.id).status is EventStatus.FINISHED and len(d.store.all_events()) == 1
    assert d.published == []


async def test_a_change_seen_twice_without_redelivery_attempts_nothing_twice():
    d = await build_dispatcher(FakeSender(default=200), first_attempt="inline")
    d.store.add_webhook()
    change = make_change()
    assert await d.fanout.handle(FakeMessage.of_change(change)) is Verdict.ACK
    assert await d.fanout.handle(FakeMessage.of_change(change)) is Verdict.ACK  # published twice upstream
    assert len(d.sender.requests) == 1 and len(d.store.all_events()) == 1 and d.published == []


async def test_a_first_attempt_to_a_hanging_endpoint_is_parked_and_its_change_acked():
    release = asyncio.Event()
    d = await build_dispatcher(FakeSender(Hanging(release), default=200), first_attempt="inline", per_endpoint=1,
                               hang_after=0.01, grace=1.0, request_time=0.05)
    d.store.add_webhook("http://slow.example/hook")
    first = asyncio.create_task(d.fanout.handle(FakeMessage.of_change(make_change())))
    while d.sender.in_flight < 1:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)  # the endpoint now counts as hanging: the next first attempt is parked, not waited for

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    [parked] = [p for p in d.published if p.routing_key.startswith(f"{d.topology.prefix}.defer.")]
    assert parked.delivery().attempt == 1 and parked.delivery().deferrals == 1
    assert len(d.sender.requests) == 1 and not first.done()
    release.set()
    assert await first is Verdict.ACK


async def test_a_first_attempt_that_waits_too_long_for_its_place_is_handed_to_the_deliver_queue():
    release = asyncio.Event()
    d = await build_dispatcher(FakeSender(Hanging(release), default=200), first_attempt="inline", inline_max=1,
                               grace=0.3, request_time=0.05)  # at most 0.1 s in memory
    d.store.add_webhook("http://a.example/hook")
    d.store.add_webhook("http://b.example/hook")

    task = asyncio.create_task(d.fanout.handle(FakeMessage.of_change(make_change())))
    await wait_for(lambda: d.metrics.first_attempts.labels("queue")._value.get() == 1, 5)

    [handed] = d.published_to(d.topology.deliveries_exchange, "deliver")
    assert handed.delivery().attempt == 1 and len(d.sender.requests) == 1
    release.set()
    assert await task is Verdict.ACK


async def wait_for(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_first_attempt_that_raises_is_handed_to_the_deliver_queue_and_the_change_acked():
    d = await build_dispatcher(FakeSender(default=200), first_attempt="inline")
    bad = d.store.add_webhook("http://bad.example/hook")
    d.store.add_webhook("http://good.example/hook")
    real_send = d.delivery.send

    async def send(hook, dm, slot):  # type: ignore[no-untyped-def]  # a bug that hits one webhook's events
        if hook.id == bad.id:
            d.limiter.release(slot.endpoint, slot.token)
            raise RuntimeError("cannot serialise this payload")
        return await real_send(hook, dm, slot)
    d.delivery.send = send  # type: ignore[method-assign]

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    [handed] = d.published_to(d.topology.deliveries_exchange, "deliver")
    assert handed.delivery().webhook_id == bad.id and handed.delivery().attempt == 1
    statuses = {e.webhook_id: e.status for e in d.store.all_events()}
    assert statuses[bad.id] is EventStatus.NEW and EventStatus.FINISHED in statuses.values()
