"""The dispatcher's core paths (fan-out, delivery, deferral, reconciler, settling) over in-memory fakes.

Every part under test is the real one, wired as ``worker.py`` wires it (``tests.fakes.build_dispatcher``); only
the store, the broker channel, the received messages and the HTTP sender are fakes. Each test runs in
milliseconds.
"""

import asyncio

import pytest

import hookpost.dispatcher.consumer as consumer_module
import hookpost.dispatcher.storeguard as storeguard_module
from hookpost.common.amqp import ConnectionLostError
from hookpost.common.errors import PublishError, StoreRefusedError
from hookpost.common.models import EventStatus, attempt_id, due_fields, now_ms
from hookpost.common.topology import ATTEMPT_HEADER, ROUTING_KEY_HEADER
from hookpost.dispatcher.consumer import FailureCount, Verdict, settle_after
from hookpost.dispatcher.limits import endpoint_key
from hookpost.dispatcher.policy import AttemptResult
from tests.fakes import (
    FakeMessage,
    FakeSender,
    FakeStore,
    FastSleep,
    Hanging,
    build_dispatcher,
    make_change,
)


@pytest.fixture
def guard_sleep(monkeypatch):
    """The store guard's back-off, made instant (the delays it asked for are in ``.slept``)."""
    fast = FastSleep()
    monkeypatch.setattr(storeguard_module, "asyncio", fast)
    return fast


@pytest.fixture
def consumer_sleep(monkeypatch):
    """The consumer's pause before requeueing, made instant (the pauses it asked for are in ``.slept``)."""
    fast = FastSleep()
    monkeypatch.setattr(consumer_module, "asyncio", fast)
    return fast


# ---- fan-out ------------------------------------------------------------------------------------------------------


async def test_a_valid_change_stores_a_new_event_per_subscribed_webhook_and_publishes_their_deliveries():
    d = await build_dispatcher(first_attempt="queue")
    a = d.store.add_webhook("http://a.example/hook", ["article.*"])
    b = d.store.add_webhook("http://b.example/hook", ["*"])
    d.store.add_webhook("http://c.example/hook", ["order.*"])  # not subscribed
    d.store.add_webhook("http://d.example/hook", ["article.*"], active=False)  # disabled
    change = make_change("article.updated")

    assert await d.fanout.handle(FakeMessage.of_change(change)) is Verdict.ACK

    events = d.store.all_events()
    assert sorted(e.webhook_id for e in events) == sorted([a.id, b.id])
    assert all(e.status is EventStatus.NEW and e.attempt_count == 0 and e.change_id == change.id for e in events)
    sent = d.published_to(d.topology.deliveries_exchange, "deliver")
    assert len(sent) == len(d.published) == 2
    by_event = {p.delivery().event_id: p for p in sent}
    assert set(by_event) == {e.id for e in events}
    for e in events:
        p = by_event[e.id]
        dm = p.delivery()
        assert (dm.webhook_id, dm.attempt, dm.deferrals, dm.due_ms) == (e.webhook_id, 1, 0, e.next_attempt_ms)
        assert dm.payload["id"] == e.id and dm.payload["data"]["change_id"] == change.id
        assert p.message_id == f"{e.id}/1" and p.headers == {ATTEMPT_HEADER: 1}


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"not json", "application/json", "not JSON"),
    (b'{"id": "c1", "type": "article.updated"}', "application/json", "entity"),
    (b'{"id": "c1"}', "text/plain", "unsupported content type"),
])
async def test_an_invalid_change_is_copied_to_the_invalid_queue_with_its_reason_and_acked(body, content_type,
                                                                                          reason):
    d = await build_dispatcher()
    d.store.add_webhook()
    msg = FakeMessage(body, content_type=content_type, message_id="m-1", headers={"trace": "t1"},
                      routing_key="article.updated")

    assert await d.fanout.handle(msg) is Verdict.ACK

    assert len(d.published) == 1
    p = d.published[0]
    assert (p.exchange, p.routing_key, p.body) == (d.topology.dead_exchange, "invalid", body)
    assert reason in p.headers["x-hookpost-error"]
    assert p.headers["trace"] == "t1" and p.headers[ROUTING_KEY_HEADER] == "article.updated"
    assert p.message_id == "m-1" and p.properties.delivery_mode == 2
    assert d.store.all_events() == [] and d.store.calls == []


async def test_a_redelivered_change_whose_events_were_stored_but_never_published_publishes_them():
    d = await build_dispatcher(first_attempt="queue")
    d.store.add_webhook("http://a.example/hook")
    d.store.add_webhook("http://b.example/hook")
    msg = FakeMessage.of_change(make_change())
    d.channel.lose()  # the broker goes away after the events are stored, before their deliveries are published
    with pytest.raises(ConnectionLostError):
        await d.fanout.handle(msg)
    stored = {e.id for e in d.store.all_events()}
    assert len(stored) == 2 and d.published == []

    await d.reconnect()
    assert await d.fanout.handle(msg.redelivery()) is Verdict.ACK

    assert {e.id for e in d.store.all_events()} == stored  # no second event per (change, webhook)
    sent = d.published_to(d.topology.deliveries_exchange, "deliver")
    assert sorted(p.delivery().event_id for p in sent) == sorted(stored)
    assert all(p.delivery().attempt == 1 for p in sent)


async def test_a_replayed_change_publishes_nothing_once_its_events_moved_on():
    d = await build_dispatcher(FakeSender(default=200))
    d.store.add_webhook("http://a.example/hook")
    d.store.add_webhook("http://b.example/hook")
    msg = FakeMessage.of_change(make_change())
    await d.fanout.handle(msg)
    for p in list(d.published):
        assert await d.delivery.handle(p.as_message()) is Verdict.ACK
    assert {e.status for e in d.store.all_events()} == {EventStatus.FINISHED}
    before = len(d.published)

    assert await d.fanout.handle(msg.redelivery()) is Verdict.ACK

    assert len(d.published) == before and len(d.store.all_events()) == 2


async def test_a_change_published_twice_and_not_redelivered_publishes_its_deliveries_once():
    d = await build_dispatcher(first_attempt="queue")
    d.store.add_webhook()
    change = make_change()
    await d.fanout.handle(FakeMessage.of_change(change))
    assert await d.fanout.handle(FakeMessage.of_change(change)) is Verdict.ACK  # the producer published it again
    assert len(d.store.all_events()) == 1 and len(d.published) == 1


@pytest.mark.parametrize("after_write", [False, True], ids=["outage", "lost-reply"])
async def test_fan_out_waits_out_a_store_outage_and_still_publishes_each_delivery_once(guard_sleep, after_write):
    d = await build_dispatcher(first_attempt="queue")
    d.store.add_webhook()
    d.store.fail_next("events.insert_flags", after_write=after_write)

    assert await d.fanout.handle(FakeMessage.of_change(make_change())) is Verdict.ACK

    [event] = d.store.all_events()
    assert [p.delivery().event_id for p in d.published] == [event.id]
    assert d.store.count("events.insert_flags") == 2 and guard_sleep.slept == [0.2] and d.guard.up


# ---- delivery -----------------------------------------------------------------------------------------------------


async def test_a_2xx_answer_records_the_attempt_and_finishes_the_event():
    d = await build_dispatcher(FakeSender(200))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    ev = d.store.event(event.id)
    assert (ev.status, ev.attempt_count, ev.last_status_code, ev.last_error) == (EventStatus.FINISHED, 1, 200, None)
    assert ev.next_attempt_ms is None and ev.finished_at is not None
    [att] = d.store.attempts_of(event.id)
    assert (att.id, att.attempt, att.status_code, att.error) == (attempt_id(event.id, 1), 1, 200, None)
    assert [r.event_id for r in d.sender.requests] == [event.id]
    assert d.published == []


async def test_a_500_records_retrying_and_publishes_the_next_attempt_due_when_recorded():
    d = await build_dispatcher(FakeSender(500))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    first_delay_ms = round(d.delays[0] * 1000)

    before = now_ms()
    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK
    after = now_ms()

    ev = d.store.event(event.id)
    assert (ev.status, ev.attempt_count, ev.last_status_code, ev.last_error) == (
        EventStatus.RETRYING, 1, 500, "HTTP 500")
    assert before + first_delay_ms <= ev.next_attempt_ms <= after + first_delay_ms + 2  # after the first delay
    assert len(d.store.attempts_of(event.id)) == 1
    [p] = without_notices(d)
    assert (p.exchange, p.routing_key) == ("", d.topology.retry_queue(0))
    nxt = p.delivery()
    assert (nxt.event_id, nxt.attempt, nxt.deferrals, nxt.due_ms) == (event.id, 2, 0, ev.next_attempt_ms)
    assert p.message_id == f"{event.id}/2"


async def test_the_last_attempt_failing_fails_the_event_and_publishes_a_failure_notice():
    d = await build_dispatcher(FakeSender(AttemptResult(error="Timeout: no complete response within 2s")))
    hook = d.store.add_webhook()
    last = d.max_attempts
    event, dm = d.seed_event(hook, status=EventStatus.RETRYING, attempt_count=last - 1)
    assert dm.attempt == last

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    ev = d.store.event(event.id)
    assert (ev.status, ev.attempt_count, ev.next_attempt_ms) == (EventStatus.FAILED, last, None)
    assert ev.last_error.startswith(f"gave up after {last} attempts: Timeout")
    [n] = d.published_to(d.topology.changes_exchange, "hookpost.event.failed")  # the notice, through the pipeline
    assert n.json()["entity"] == {"kind": "webhook", "id": hook.id} and n.json()["data"]["event_id"] == event.id
    [p] = without_notices(d)
    assert (p.exchange, p.routing_key, p.message_id) == (d.topology.dead_exchange, "failed", event.id)
    notice = p.notice()
    assert (notice.event_id, notice.webhook_id, notice.attempts, notice.last_status_code) == (
        event.id, hook.id, last, None)
    assert notice.type == "article.updated" and "Timeout" in notice.last_error


async def test_a_410_fails_the_event_and_disables_the_webhook_so_its_next_delivery_sends_nothing():
    d = await build_dispatcher(FakeSender(410))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    other, other_dm = d.seed_event(hook)

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    assert d.store.event(event.id).status is EventStatus.FAILED
    stored_hook = d.store.webhook(hook.id)
    assert not stored_hook.active and "410 Gone" in stored_hook.disabled_reason
    assert [p.notice().last_status_code for p in d.published_to(d.topology.dead_exchange, "failed")] == [410]

    assert await d.delivery.handle(FakeMessage.of_delivery(other_dm)) is Verdict.ACK  # no request scripted
    ev = d.store.event(other.id)
    assert ev.status is EventStatus.FAILED and ev.last_error.startswith("webhook disabled: 410 Gone")
    assert len(d.sender.requests) == 1


async def test_a_deleted_webhook_fails_the_event_without_a_request():
    d = await build_dispatcher(FakeSender())
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    del d.store.webhooks.docs[hook.id]

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    ev = d.store.event(event.id)
    assert (ev.status, ev.attempt_count, ev.last_error) == (EventStatus.FAILED, 0, "webhook deleted")
    assert d.sender.requests == [] and d.store.attempts_of(event.id) == []
    [p] = without_notices(d)
    assert p.routing_key == "failed" and p.notice().attempts == 0 and p.notice().last_error == "webhook deleted"


async def test_a_webhook_whose_stored_document_no_longer_validates_fails_its_event_with_the_reason():
    d = await build_dispatcher(FakeSender())
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    d.store.webhooks.docs[hook.id]["event_types"] = []  # edited by hand

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    ev = d.store.event(event.id)
    assert ev.status is EventStatus.FAILED and ev.last_error.startswith("webhook document does not validate")
    assert "event_types" in ev.last_error and d.sender.requests == []
    assert d.metrics.webhooks_invalid._value.get() == 1


@pytest.mark.parametrize("body", [
    b"not json", b"{}", b'{"event_id": "evt_1", "webhook_id": "wh_1", "attempt": 0, "payload": {}}',
    b'["evt_1"]'])
async def test_a_malformed_delivery_message_is_dead_lettered_untouched(body):
    d = await build_dispatcher(FakeSender())
    msg = FakeMessage(body)

    assert await d.delivery.handle(msg) is Verdict.DEAD_LETTER
    await d.consume(d.delivery, msg)

    assert msg.settled == [("reject", False)]
    assert d.published == [] and d.store.calls == [] and d.sender.requests == []


async def test_a_redelivered_attempt_already_recorded_publishes_the_next_attempt_again():
    d = await build_dispatcher(FakeSender(500, 500))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    msg = FakeMessage.of_delivery(dm)
    d.channel.lose()  # the broker goes away between recording attempt 1 and publishing attempt 2
    with pytest.raises(ConnectionLostError):
        await d.delivery.handle(msg)
    recorded = d.store.event(event.id)
    assert (recorded.status, recorded.attempt_count) == (EventStatus.RETRYING, 1) and d.published == []

    await d.reconnect()
    assert await d.delivery.handle(msg.redelivery()) is Verdict.ACK

    [p] = without_notices(d)
    assert (p.exchange, p.routing_key) == ("", d.topology.retry_queue(0))
    assert (p.delivery().attempt, p.delivery().due_ms) == (2, recorded.next_attempt_ms)
    assert d.store.event(event.id) == recorded  # nothing recorded twice
    assert len(d.store.attempts_of(event.id)) == 1


async def test_a_duplicate_attempt_that_was_not_redelivered_publishes_nothing():
    d = await build_dispatcher(FakeSender(500, 500))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    await d.delivery.handle(FakeMessage.of_delivery(dm))
    recorded = d.store.event(event.id)

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK  # a second copy of attempt 1

    assert len(d.published) == 1  # only the first copy's attempt 2
    assert d.store.event(event.id) == recorded and len(d.store.attempts_of(event.id)) == 1


# ---- store outage while recording -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "after_write"), [
    ("events.record_attempts", False), ("events.record_attempts", True), ("attempts.insert", True)],
    ids=["events-outage", "events-lost-reply", "attempts-lost-reply"])
async def test_a_store_outage_mid_batch_still_records_each_delivery_exactly_once(guard_sleep, method, after_write):
    d = await build_dispatcher(FakeSender(500, 200))
    hook = d.store.add_webhook()
    (e1, dm1), (e2, dm2) = d.seed_event(hook), d.seed_event(hook)
    d.store.fail_next(method, after_write=after_write)

    verdicts = await asyncio.gather(d.delivery.handle(FakeMessage.of_delivery(dm1)),
                                    d.delivery.handle(FakeMessage.of_delivery(dm2)))

    assert verdicts == [Verdict.ACK, Verdict.ACK]
    record_calls = [c for c in d.store.calls if c.name == "events.record_attempts"]
    assert [len(c.args[0]) for c in record_calls] == ([2] if method == "attempts.insert" else [2, 2])  # one batch
    assert guard_sleep.slept == [0.2] and d.guard.up
    statuses = {d.store.event(e.id).status for e in (e1, e2)}
    assert statuses == {EventStatus.RETRYING, EventStatus.FINISHED}
    assert all(d.store.event(e.id).attempt_count == 1 for e in (e1, e2))
    assert [len(d.store.attempts_of(e.id)) for e in (e1, e2)] == [1, 1]
    [retry] = d.published  # the failed one's next attempt, once; the finished one publishes nothing
    assert retry.routing_key == d.topology.retry_queue(0) and retry.delivery().attempt == 2


# ---- deferral -----------------------------------------------------------------------------------------------------


async def _hanging_endpoint(d, hook):
    """Start a delivery to ``hook`` whose request hangs until the returned event is set, and wait until the limiter
    reports the endpoint hanging; return (release, task)."""
    release = asyncio.Event()
    d.sender.script.insert(0, Hanging(release, 200))
    _, dm = d.seed_event(hook)
    task = asyncio.create_task(d.delivery.handle(FakeMessage.of_delivery(dm)))
    for _ in range(1000):
        if d.sender.in_flight:
            break
        if task.done():
            raise AssertionError(f"the first delivery did not reach the endpoint: {task.result()}")
        await asyncio.sleep(0)
    else:
        raise AssertionError("the first delivery did not reach the endpoint")
    await asyncio.sleep(0.015)
    assert d.limiter.hanging(endpoint_key(hook.url))
    return release, task


async def test_a_delivery_to_a_hanging_endpoint_is_parked_in_the_defer_ladder_without_an_attempt():
    d = await build_dispatcher(FakeSender(), per_endpoint=1, hang_after=0.01, grace=1.0, request_time=0.05)
    hook = d.store.add_webhook()
    release, running = await _hanging_endpoint(d, hook)
    event, dm = d.seed_event(hook)  # due now: a short deferral keeps it well within half the grace

    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    [p] = without_notices(d)
    assert p.exchange == "" and p.routing_key in d.topology.defer_queues
    assert p.routing_key.startswith(f"{d.topology.prefix}.defer.")
    parked = p.delivery()
    assert (parked.event_id, parked.attempt, parked.deferrals, parked.due_ms) == (event.id, 1, 1, dm.due_ms)
    assert d.store.event(event.id) == event and d.store.attempts_of(event.id) == []  # no attempt counted
    assert d.store.count("events.postpone") == 0
    assert len(d.sender.requests) == 1 and d.sender.requests[0].event_id != event.id  # only the hanging one
    release.set()
    assert await running is Verdict.ACK


async def test_a_deferral_that_would_carry_a_delivery_past_half_the_grace_moves_the_due_time_along():
    d = await build_dispatcher(FakeSender(), per_endpoint=1, hang_after=0.01, grace=1.0, request_time=0.05)
    hook = d.store.add_webhook()
    release, running = await _hanging_endpoint(d, hook)
    long_due = now_ms() - 800  # it waited in the deliver queue for most of the grace already
    event, dm = d.seed_event(hook, **due_fields(long_due))
    deferrals_before = dm.deferrals

    before = now_ms()
    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK

    [p] = without_notices(d)
    parked = p.delivery()
    delay_ms = round(d.topology.defer_delays[d.topology.defer_queues.index(p.routing_key)] * 1000)
    ev = d.store.event(event.id)
    assert ev.next_attempt_ms == parked.due_ms >= before + delay_ms + 500  # back, plus half the grace
    assert (ev.status, ev.attempt_count) == (EventStatus.NEW, 0)
    assert (parked.attempt, parked.deferrals) == (1, deferrals_before + 1)
    release.set()
    await running


async def test_a_deferral_never_moves_a_due_time_earlier_than_a_reconciler_claim():
    d = await build_dispatcher(FakeSender(), per_endpoint=1, hang_after=0.01, grace=1.0, request_time=0.05)
    hook = d.store.add_webhook()
    release, running = await _hanging_endpoint(d, hook)
    event, dm = d.seed_event(hook, **due_fields(now_ms() - 800))
    claimed_until = now_ms() + 60_000
    d.store.events.docs[event.id].update(due_fields(claimed_until))  # a reconciler claimed it meanwhile

    await d.delivery.handle(FakeMessage.of_delivery(dm))

    assert d.store.event(event.id).next_attempt_ms == claimed_until
    release.set()
    await running


async def test_a_change_for_a_hanging_endpoint_parks_its_first_delivery_straight_away():
    d = await build_dispatcher(FakeSender(), per_endpoint=1, hang_after=0.01)
    hook = d.store.add_webhook()
    release, running = await _hanging_endpoint(d, hook)

    await d.fanout.handle(FakeMessage.of_change(make_change()))

    [p] = without_notices(d)
    assert p.routing_key in d.topology.defer_queues and p.delivery().deferrals == 1
    release.set()
    await running


# ---- reconciler ---------------------------------------------------------------------------------------------------


def without_notices(d):
    """What the dispatcher published, less Hookpost's own notices (``hookpost.*`` changes: see test_breaker)."""
    return [p for p in d.published
            if not (p.exchange == d.topology.changes_exchange and p.routing_key.startswith("hookpost."))]


def _overdue_event(d, hook, **fields):
    return d.seed_event(hook, status=EventStatus.RETRYING, attempt_count=1, **due_fields(now_ms() - 5_000),
                        **fields)[0]


async def test_the_reconciler_claims_an_overdue_event_and_republishes_one_delivery_once():
    d = await build_dispatcher(grace=1.0)
    hook = d.store.add_webhook()
    event = _overdue_event(d, hook)

    assert await d.reconciler.sweep() == 1

    claimed = d.store.event(event.id)
    assert claimed.next_attempt_ms > now_ms()  # claimed: due again a grace from now
    [p] = without_notices(d)
    assert (p.exchange, p.routing_key) == (d.topology.deliveries_exchange, "deliver")
    dm = p.delivery()
    assert (dm.event_id, dm.attempt, dm.due_ms) == (event.id, 2, claimed.next_attempt_ms)

    assert await d.reconciler.sweep() == 0
    assert len(d.published) == 1


async def test_the_reconciler_sweeps_nothing_while_the_deliver_queue_has_a_backlog():
    d = await build_dispatcher(grace=1.0)
    hook = d.store.add_webhook()
    event = _overdue_event(d, hook)
    d.channel.depths[d.topology.deliver_queue] = 3

    assert await d.reconciler.sweep() == 0

    assert d.published == [] and d.store.event(event.id) == event
    assert d.store.count("events.overdue") == 0
    d.channel.depths[d.topology.deliver_queue] = 0
    assert await d.reconciler.sweep() == 1


async def test_the_reconciler_leaves_finished_failed_and_merely_late_events_alone():
    d = await build_dispatcher(grace=1.0)
    hook = d.store.add_webhook()
    d.seed_event(hook, status=EventStatus.FINISHED, attempt_count=1, **due_fields(None))
    d.seed_event(hook, status=EventStatus.FAILED, attempt_count=4, **due_fields(None))
    d.seed_event(hook, **due_fields(now_ms() - 500))  # late by less than the grace

    assert await d.reconciler.sweep() == 0
    assert d.published == []


async def test_two_dispatchers_sweeping_at_once_republish_an_overdue_event_once():
    store = FakeStore()
    one = await build_dispatcher(store=store, grace=1.0)
    two = await build_dispatcher(store=store, grace=1.0)
    hook = store.add_webhook()
    _overdue_event(one, hook)

    counts = await asyncio.gather(one.reconciler.sweep(), two.reconciler.sweep())

    assert sorted(counts) == [0, 1] and len(one.published) + len(two.published) == 1


# ---- settling -----------------------------------------------------------------------------------------------------


class ScriptedStage:
    """A stage whose ``handle`` returns ``verdict`` or raises ``error``; ``poisoned`` records its reason."""

    def __init__(self, verdict=Verdict.ACK, error=None):
        self.verdict = verdict
        self.error = error
        self.poison_reasons = []

    async def handle(self, msg):
        if self.error is not None:
            raise self.error
        return self.verdict

    async def poisoned(self, msg, reason):
        self.poison_reasons.append(reason)
        return Verdict.ACK


@pytest.mark.parametrize(("verdict", "settled"), [
    (Verdict.ACK, ("ack", None)), (Verdict.DEAD_LETTER, ("reject", False)), (Verdict.REQUEUE, ("reject", True))])
async def test_settle_after_settles_the_message_as_the_verdict_says(verdict, settled):
    msg = FakeMessage(b"{}")
    await settle_after(ScriptedStage(verdict), msg, failures=FailureCount(5))
    assert msg.settled == [settled]


async def test_settle_after_requeues_after_a_pause_when_the_handler_raises(consumer_sleep):
    msg = FakeMessage(b"{}", message_id="m-1")
    stage = ScriptedStage(error=RuntimeError("bug"))
    await settle_after(stage, msg, failures=FailureCount(5))
    assert msg.settled == [("reject", True)] and consumer_sleep.slept == [1.0] and stage.poison_reasons == []


async def test_settle_after_drops_the_outbox_channel_and_requeues_when_a_publish_was_refused(consumer_sleep):
    msg = FakeMessage(b"{}")
    nacked = []

    async def on_nack():
        nacked.append(True)

    await settle_after(ScriptedStage(error=PublishError("nack")), msg, failures=FailureCount(5), on_nack=on_nack)
    assert nacked == [True] and msg.settled == [("reject", True)] and consumer_sleep.slept == [0.5]


async def test_settle_after_leaves_the_message_unsettled_when_its_channel_is_gone(consumer_sleep):
    msg = FakeMessage(b"{}")
    await settle_after(ScriptedStage(error=ConnectionLostError("channel closed")), msg, failures=FailureCount(5))
    assert msg.settled == [] and consumer_sleep.slept == []


async def test_a_message_that_keeps_failing_is_ended_by_the_stage_instead_of_requeued(consumer_sleep):
    stage = ScriptedStage(error=RuntimeError("bug"))
    failures = FailureCount(poison_after=3)
    settled = []
    for _ in range(3):  # a classic queue: no x-delivery-count, the count is kept per message id
        msg = FakeMessage(b"{}", message_id="m-1", redelivered=bool(settled))
        await settle_after(stage, msg, failures=failures)
        settled += msg.settled
    assert settled == [("reject", True), ("reject", True), ("ack", None)]
    assert len(stage.poison_reasons) == 1 and "3 tries" in stage.poison_reasons[0]


async def test_a_poison_delivery_fails_its_event_with_the_reason_and_a_failure_notice(consumer_sleep, monkeypatch):
    d = await build_dispatcher(FakeSender())
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(d.sender, "send", broken)
    msg = FakeMessage.of_delivery(dm, redelivered=True)
    msg.properties.headers["x-delivery-count"] = d.poison_after - 1  # a quorum queue counts the earlier tries

    await d.consume(d.delivery, msg)

    assert msg.settled == [("ack", None)]
    ev = d.store.event(event.id)
    assert ev.status is EventStatus.FAILED and ev.attempt_count == 0
    assert "could not be handled" in ev.last_error and "RuntimeError: boom" in ev.last_error
    [p] = without_notices(d)
    assert p.routing_key == "failed" and p.notice().event_id == event.id


async def test_a_poison_change_is_set_aside_with_the_reason(consumer_sleep, monkeypatch):
    d = await build_dispatcher()
    d.store.add_webhook()
    msg = FakeMessage.of_change(make_change(), headers={"x-delivery-count": d.poison_after - 1})

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(d.fanout, "store_events", broken)

    await d.consume(d.fanout, msg)

    assert msg.settled == [("ack", None)]
    [p] = without_notices(d)
    assert (p.exchange, p.routing_key, p.body) == (d.topology.dead_exchange, "invalid", msg.body)
    assert p.headers["x-hookpost-error"].startswith("fan-out could not be handled")


# ---- replays after a lost broker or a lost store reply ----------------------------------------------


async def test_a_redelivered_final_attempt_recorded_failed_publishes_its_failure_notice():
    d = await build_dispatcher(FakeSender(500, 500))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook, status=EventStatus.RETRYING, attempt_count=d.max_attempts - 1)
    msg = FakeMessage.of_delivery(dm)
    d.channel.lose()
    with pytest.raises(ConnectionLostError):
        await d.delivery.handle(msg)
    assert d.store.event(event.id).status is EventStatus.FAILED

    await d.reconnect()
    await d.delivery.handle(msg.redelivery())

    assert [p.notice().event_id for p in d.published_to(d.topology.dead_exchange, "failed")] == [event.id]


async def test_a_redelivered_410_recorded_failed_still_disables_the_webhook():
    d = await build_dispatcher(FakeSender(410, 410))
    hook = d.store.add_webhook()
    event, dm = d.seed_event(hook)
    msg = FakeMessage.of_delivery(dm)
    d.channel.lose()
    with pytest.raises(ConnectionLostError):
        await d.delivery.handle(msg)
    assert d.store.event(event.id).status is EventStatus.FAILED

    await d.reconnect()
    await d.delivery.handle(msg.redelivery())

    assert not d.store.webhook(hook.id).active


async def test_a_sweep_whose_claim_reply_was_lost_still_republishes_the_delivery(guard_sleep):
    d = await build_dispatcher(grace=1.0)
    hook = d.store.add_webhook()
    event = _overdue_event(d, hook)
    d.store.fail_next("events.claim_overdue", after_write=True)

    republished = await d.reconciler.sweep()

    assert d.store.event(event.id).next_attempt_ms > now_ms()  # claimed either way
    assert republished == 1 and [p.delivery().event_id for p in d.published] == [event.id]


async def test_a_change_the_store_refuses_fails_alone_not_the_changes_batched_with_it():
    d = await build_dispatcher()
    d.store.add_webhook("http://a.example/hook", ["article.*"])
    good, bad = make_change("article.updated"), make_change("article.updated")
    real = d.store.events.insert_flags

    async def insert_flags(events):
        if any(e.change_id == bad.id for e in events):
            raise ValueError("document too large")  # a write refused for good, not an outage
        return await real(events)

    d.store.events.insert_flags = insert_flags
    results = await asyncio.gather(d.fanout.handle(FakeMessage.of_change(good)),
                                   d.fanout.handle(FakeMessage.of_change(bad)), return_exceptions=True)
    assert results[0] is Verdict.ACK
    assert isinstance(results[1], ValueError)
    assert [e.change_id for e in d.store.all_events()] == [good.id]


async def test_a_change_whose_events_the_store_refuses_for_good_is_set_aside_at_once_alone():
    d = await build_dispatcher()
    d.store.add_webhook("http://a.example/hook", ["article.*"])
    good, bad = make_change("article.updated"), make_change("article.updated")
    real = d.store.events.insert_flags

    async def insert_flags(events):
        if any(e.change_id == bad.id for e in events):
            raise StoreRefusedError("webhook event too large for the store: 17,000,000 bytes of BSON")
        return await real(events)

    d.store.events.insert_flags = insert_flags
    good_msg, bad_msg = FakeMessage.of_change(good), FakeMessage.of_change(bad)
    await asyncio.gather(d.consume(d.fanout, good_msg), d.consume(d.fanout, bad_msg))

    assert good_msg.settled == bad_msg.settled == [("ack", None)]  # the refused one on its first try
    assert [e.change_id for e in d.store.all_events()] == [good.id]
    [aside] = [p for p in without_notices(d) if p.exchange == d.topology.dead_exchange]
    assert aside.routing_key == "invalid" and aside.body == bad_msg.body
    assert aside.headers["x-hookpost-error"] == ("fan-out: webhook event too large for the store: 17,000,000 bytes "
                                                 "of BSON")
