"""The circuit breaker, rate limits and reserved notice types over the in-memory fakes: what opens a breaker, that
a held delivery costs no attempt and no request, that the probe goes through and its success releases the held
ones, and that a failed probe is not charged to its event's budget."""

import asyncio

import pytest

from hookpost.common.endpoints import BreakerState, endpoint_key, health_label
from hookpost.common.models import EventStatus
from hookpost.common.wire import InvalidChangeError, decode_change
from hookpost.dispatcher.breaker import Admission
from hookpost.dispatcher.consumer import Verdict
from hookpost.dispatcher.policy import AttemptResult
from hookpost.dispatcher.ratelimit import RateLimits
from tests.fakes import FakeMessage, FakeSender, build_dispatcher


async def fail_n(d, hook, n: int) -> None:
    """Make ``n`` first attempts of ``hook``'s new events, one after another."""
    for _ in range(n):
        _, dm = d.seed_event(hook)
        assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK


async def test_threshold_failures_in_a_row_open_the_breaker_and_a_delivery_is_then_held_without_an_attempt():
    d = await build_dispatcher(FakeSender(default=503), breaker_threshold=4)
    hook = d.store.add_webhook()
    key = endpoint_key(hook.url)
    await fail_n(d, hook, 2)
    assert d.store.endpoints.docs[key].state == BreakerState.FAILING
    await fail_n(d, hook, 2)
    assert d.store.endpoints.docs[key].state == BreakerState.OPEN and d.breaker.is_open(key)

    event, dm = d.seed_event(hook)
    requests = len(d.sender.requests)
    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK
    ev = d.store.event(event.id)
    assert len(d.sender.requests) == requests  # no request
    assert (ev.status, ev.attempt_count, ev.held) == (EventStatus.NEW, 0, key)
    assert ev.next_attempt_ms == d.store.endpoints.docs[key].next_probe_ms
    assert d.store.attempts_of(event.id) == []


async def test_an_answer_other_than_5xx_ends_the_run():
    d = await build_dispatcher(FakeSender(503, 503, 503, 404, 503, 503, 503, default=503), breaker_threshold=4)
    hook = d.store.add_webhook()
    await fail_n(d, hook, 7)
    assert d.store.endpoints.docs[endpoint_key(hook.url)].state != BreakerState.OPEN


async def test_the_probe_goes_through_and_its_success_closes_the_breaker_and_releases_the_held():
    d = await build_dispatcher(FakeSender(503, 503, 503, 503, default=200), breaker_threshold=4)
    hook = d.store.add_webhook()
    key = endpoint_key(hook.url)
    await fail_n(d, hook, 4)
    held = []
    for _ in range(3):
        event, dm = d.seed_event(hook)
        await d.delivery.handle(FakeMessage.of_delivery(dm))
        held.append(event.id)
    await asyncio.sleep(0.06)  # the first probe is due after 50 ms
    await d.breaker.poll()
    [probe] = [p.delivery() for p in d.published_to(d.topology.deliveries_exchange, "deliver") if p.delivery().probe]
    assert probe.event_id == held[0] and d.breaker.admit(probe, key) is Admission.PROBE
    assert await d.delivery.handle(FakeMessage.of_delivery(probe)) is Verdict.ACK
    assert d.store.endpoints.docs[key].state == BreakerState.CLOSED and d.store.endpoints.docs[key].releasing
    await d.breaker.poll()  # releases the other two
    released = {p.delivery().event_id for p in d.published_to(d.topology.deliveries_exchange, "deliver")}
    assert set(held) <= released
    assert all(d.store.event(e).held is None for e in held)
    assert not d.store.endpoints.docs[key].releasing
    kinds = [p.routing_key for p in d.published_to(d.topology.changes_exchange, "hookpost.webhook.failing")]
    assert kinds == ["hookpost.webhook.failing"]
    assert d.published_to(d.topology.changes_exchange, "hookpost.webhook.recovered")


async def test_a_failed_probe_is_recorded_but_not_charged_to_the_events_budget():
    d = await build_dispatcher(FakeSender(default=503), breaker_threshold=2)
    hook = d.store.add_webhook()
    await fail_n(d, hook, 2)
    event, dm = d.seed_event(hook, status=EventStatus.RETRYING, attempt_count=d.max_attempts - 1)
    await d.delivery.handle(FakeMessage.of_delivery(dm.model_copy(update={"probe": True})))
    ev = d.store.event(event.id)
    assert (ev.status, ev.attempt_count, ev.budget_start) == (EventStatus.RETRYING, d.max_attempts, 1)
    assert len(d.store.attempts_of(event.id)) == 1


async def test_without_the_breaker_nothing_is_held():
    d = await build_dispatcher(FakeSender(default=503), breaker_threshold=2, breaker_on=False)
    hook = d.store.add_webhook()
    await fail_n(d, hook, 6)
    assert len(d.sender.requests) == 6 and d.store.endpoints.docs == {}


def test_health_labels():
    from hookpost.common.endpoints import EndpointHealth

    opened = EndpointHealth(id="http://a:80", state=BreakerState.OPEN, opened_ms=0)
    assert health_label(True, None, opened) == "breaker open since 1970-01-01T00:00:00Z"
    assert health_label(True, None, EndpointHealth(id="x", state=BreakerState.FAILING)) == "failing"
    assert health_label(False, "gone", opened) == "disabled (gone)"


async def test_rate_limits_space_requests_and_say_when_to_park():
    limits = RateLimits(max_wait=0.2)
    waits = [limits.reserve("wh", 10.0) for _ in range(4)]
    assert waits[0] == 0.0 and waits[1] == pytest.approx(0.1, abs=0.02) and waits[3] is None
    assert limits.room("wh", 2.0) == 0.0 and limits.room("wh", 2.0) == 0.0 and limits.room("wh", 2.0) > 0
    limits.done("wh")
    assert limits.expected_wait("wh", 10.0) > 0


def test_producers_may_not_use_the_reserved_notice_types():
    body = b'{"id": "c1", "type": "hookpost.webhook.failing", "entity": {"kind": "webhook", "id": "wh_1"}}'
    with pytest.raises(InvalidChangeError, match="reserved"):
        decode_change(body, "application/json")
    assert decode_change(body, "application/json", notice=True).type == "hookpost.webhook.failing"


def test_429_counts_towards_the_breaker_and_200_does_not():
    from hookpost.dispatcher.breaker import counts_as_failure

    assert counts_as_failure(AttemptResult(status_code=429)) and not counts_as_failure(AttemptResult(status_code=200))
