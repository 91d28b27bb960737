"""Endpoint health end to end (real broker, store and HTTP; millisecond schedules): a circuit breaker holds the
deliveries of a dead endpoint without counting attempts and lets one probe through per interval; without it the
usual ten attempts end Failed (500 events); a flaky endpoint (500 events, half of the requests fail) does not open
it, and each of its events ends as its own answers dictate."""

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from hookpost.common.endpoints import BreakerState, endpoint_key
from hookpost.common.models import ChangeEvent, DeliveryMessage, Entity
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.localserver import free_port
from tests.helpers import Receiver, attempt_records, running_worker, wait_until


def changes(prefix: str, event_type: str, n: int) -> list[ChangeEvent]:
    """``n`` change events ``{prefix}-0`` … of one type."""
    return [ChangeEvent(id=f"{prefix}-{i}", type=event_type, entity=Entity(kind="a", id=str(i))) for i in range(n)]


@dataclass
class Switch:
    """A receiver's behaviour: answers ``status_down`` while ``down``, else 200; records wall-clock times."""

    down: bool = True
    status_down: int = 503
    times: list[float] = field(default_factory=list)
    down_times: list[float] = field(default_factory=list)

    async def respond(self, n: int, request: web.Request) -> web.StreamResponse:
        now = time.time()
        self.times.append(now)
        if self.down:
            self.down_times.append(now)
            return web.Response(status=self.status_down)
        return web.Response(status=200)


async def counts(store: Store) -> dict[str, int]:
    """Events by status."""
    return await store.events.group_counts("status", {})


def most_in_window(times: list[float], width: float) -> int:
    """The most of ``times`` that fall in any window ``width`` seconds wide."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


BREAKER = dict(breaker_threshold=10, breaker_probe="500ms", breaker_probe_max="1s", breaker_poll="100ms",
               http_timeout="1s", endpoint_hang_after="500ms")


class LateReceiver:
    """A receiver on a fixed port that is not listening yet (connections are refused) until :meth:`start`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def ok(request: web.Request) -> web.StreamResponse:
            await request.read()
            return web.Response(status=200)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", ok)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def attempt_times(store: Store, webhook_id: str) -> list[float]:
    """When each attempt to ``webhook_id`` started (epoch seconds), from the attempt records."""
    return sorted(at for _, at in await attempt_records(store, webhook_id))


@pytest.mark.parametrize("down_as", ["503", "refused"])
async def test_a_dead_endpoint_gets_one_probe_per_interval_and_every_event_finishes_once_it_is_back(
        settings_factory, new_receiver, down_as):
    s = settings_factory(**BREAKER)
    dead, late = Switch(), LateReceiver()
    url = (await new_receiver(respond=dead.respond)).url if down_as == "503" else late.url
    healthy = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    hook = await store.webhooks.create(url, ["article.*"])
    await store.webhooks.create(healthy.url, ["article.*"])
    key = endpoint_key(url)
    try:
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("c", "article.updated", 500))

            async def opened():
                h = await store.endpoints.get(key)
                return h if h is not None and h.state == BreakerState.OPEN else None

            health = await wait_until(opened, 30, message="the breaker opened")
            await wait_until(lambda: len(healthy.requests) == 500, 60, message="the healthy endpoint got all 500")
            # down far longer than the whole retry schedule (2.25 s)
            outage_until = time.time() + 8
            while time.time() < outage_until:
                await asyncio.sleep(0.2)
            assert (await counts(store)).get("Failed", 0) == 0
            assert await store.events.count({"held": key}) > 400  # held in the store, in no queue
            back_at = time.time()
            dead.down = False
            await late.start()

            async def all_finished():
                return (await counts(store)).get("Finished", 0) == 1000

            await wait_until(all_finished, 90, interval=0.25, message="every event Finished")
            probes = worker.metrics.registry.get_sample_value("hookpost_breaker_probes_total")
        opened_at = health.opened_ms / 1000
        tried = await attempt_times(store, hook.id)
        while_down = [t for t in tried if t < back_at]
        after_open = [t for t in while_down if t > opened_at + 0.3]  # requests in flight at opening may land
        c = await counts(store)
        print(f"{down_as}: {len(while_down)} requests while down ({len(while_down) - len(after_open)} before the "
              f"breaker opened), probes {probes}; statuses {c}; after opening at +s: "
              f"{[round(t - opened_at, 2) for t in after_open]}")
        assert c == {"Finished": 1000}
        assert most_in_window(after_open, 0.5) <= 2 and len(after_open) <= 2 * (8 / 0.5)
        assert len(healthy.requests) == 500
        # waiting behind the breaker cost no attempts: no event came near its ten
        assert await store.events.count({"attempt_count": {"$gte": 10}}) == 0
        h = await store.endpoints.get(key)
        assert h is not None and h.state == BreakerState.CLOSED and not h.releasing
        assert await store.events.count({"held": {"$ne": None}}) == 0
    finally:
        await late.stop()
        await store.close()


class PerEvent:
    """A receiver that answers each event's n-th request by a rule of (entity id, n) — so each event's outcome is
    fixed in advance whatever order the requests come in — and counts the requests per event (by the payload's
    entity id) and the answers it gave."""

    def __init__(self, fails: Callable[[str, int], bool], status_failed: int = 503) -> None:
        self.fails = fails
        self.status_failed = status_failed
        self.requests: Counter[str] = Counter()
        self.answers: dict[str, list[int]] = {}

    async def respond(self, n: int, request: web.Request) -> web.StreamResponse:
        entity = json.loads(await request.read())["data"]["entity"]["id"]
        self.requests[entity] += 1
        status = self.status_failed if self.fails(entity, self.requests[entity]) else 200
        self.answers.setdefault(entity, []).append(status)
        return web.Response(status=status)


async def events_by_entity(store: Store) -> dict[str, tuple[str, int]]:
    """``{entity id: (status, attempt_count)}`` of every event in the store (one webhook per test here)."""
    docs = await store.events.coll.find({}, {"entity": 1, "status": 1, "attempt_count": 1}).to_list()
    return {d["entity"]["id"]: (d["status"], d["attempt_count"]) for d in docs}


async def attempts_per_event(store: Store) -> Counter[int]:
    """How many events have each number of attempt records."""
    return Counter(Counter(event_id for event_id, _ in await attempt_records(store)).values())


EVENTS = 500


async def test_without_the_breaker_a_dead_endpoint_fails_events_after_ten_attempts(settings_factory, new_receiver):
    s = settings_factory(breaker=False, **{k: v for k, v in BREAKER.items() if k != "breaker_threshold"})
    dead = PerEvent(lambda entity, n: True)
    rx = await new_receiver(respond=dead.respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rx.url, ["article.*"])
    try:
        began = time.monotonic()
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("n", "article.updated", EVENTS))

            async def all_failed():
                return (await counts(store)).get("Failed", 0) == EVENTS

            await wait_until(all_failed, 60, interval=0.25, message=f"{EVENTS} events Failed")

            def failed_counter() -> float | None:
                return worker.metrics.registry.get_sample_value("hookpost_events_failed_total")

            # the counter goes up once the handler has the store's answer: a moment after the store shows Failed
            await wait_until(lambda: failed_counter() == EVENTS, 10, message="the Failed counter at the store's count")
            failed_metric = failed_counter()
        took = time.monotonic() - began
        print(f"breaker off: {EVENTS} events Failed after {sum(dead.requests.values())} requests in {took:.1f} s")
        # the store: every event Failed after exactly ten attempts, each recorded
        assert await events_by_entity(store) == {str(i): ("Failed", 10) for i in range(EVENTS)}
        assert await store.events.count({"status": "Failed", "last_status_code": 503}) == EVENTS
        assert await attempts_per_event(store) == {10: EVENTS}
        assert failed_metric == EVENTS
        # the receiver: ten requests per event, no more, no fewer
        assert dead.requests == {str(i): 10 for i in range(EVENTS)}
        assert await store.endpoints.get(endpoint_key(rx.url)) is None  # the breaker kept no state
        assert await store.events.count({"held": {"$ne": None}}) == 0
    finally:
        await store.close()


FLAKY_SEED = 15  # with this seed, events "10" … of 500 fail ten times in a row (checked below, before the run)


def flaky_fails(entity: str, n: int) -> bool:
    """Whether the flaky endpoint fails the ``n``-th request of the event of ``entity``: 50 % at random, seeded
    per (entity, n)."""
    return random.Random(f"{FLAKY_SEED}/{entity}/{n}").random() < 0.5


def expected_outcome(entity: str, max_attempts: int = 10) -> tuple[str, int]:
    """The (status, attempts) an event must end with under :func:`flaky_fails`: Finished at its first success, or
    Failed after ``max_attempts`` failures."""
    for n in range(1, max_attempts + 1):
        if not flaky_fails(entity, n):
            return "Finished", n
    return "Failed", max_attempts


async def test_a_flaky_endpoint_does_not_open_the_breaker(settings_factory, new_receiver):
    s = settings_factory(**{**BREAKER, "breaker_threshold": 20})
    expected = {str(i): expected_outcome(str(i)) for i in range(EVENTS)}
    must_fail = [e for e, (status, _) in expected.items() if status == "Failed"]
    assert len(must_fail) == 2  # the seed makes the "ten attempts, then Failed" path part of this test
    flaky = PerEvent(flaky_fails, status_failed=500)
    rx: Receiver = await new_receiver(respond=flaky.respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rx.url, ["article.*"])
    try:
        began = time.monotonic()
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("f", "article.updated", EVENTS))

            async def settled():
                c = await counts(store)
                return c.get("Finished", 0) + c.get("Failed", 0) == EVENTS

            await wait_until(settled, 60, interval=0.25, message="every event Finished or Failed")
            opened = worker.metrics.registry.get_sample_value("hookpost_breaker_transitions_total", {"to": "open"})
            held = worker.metrics.registry.get_sample_value("hookpost_deliveries_held_total")
        took = time.monotonic() - began
        print(f"flaky: {await counts(store)}, {sum(flaky.requests.values())} requests in {took:.1f} s; "
              f"Failed: {must_fail}")
        assert opened is None and held == 0
        h = await store.endpoints.get(endpoint_key(rx.url))
        assert h is None or h.state != BreakerState.OPEN
        # every event ended as its own answers dictate: Finished at its first 200, or Failed after ten failures
        assert await events_by_entity(store) == expected
        assert flaky.requests == {e: n for e, (_, n) in expected.items()}
        assert all(flaky.answers[e] == [500] * 10 for e in must_fail)
        assert await attempts_per_event(store) == Counter(n for _, n in expected.values())
        assert await store.events.count({"held": {"$ne": None}}) == 0
    finally:
        await store.close()


class Flapper:
    """Answers 503, except for one 200 each time it is :meth:`arm` ed; records when each request came."""

    def __init__(self) -> None:
        self.armed = False
        self.times: list[float] = []

    def arm(self) -> None:
        """Let the next request succeed (and only that one)."""
        self.armed = True

    async def respond(self, n: int, request: web.Request) -> web.StreamResponse:
        self.times.append(time.time())
        if self.armed:
            self.armed = False
            return web.Response(status=200)
        return web.Response(status=503)


async def test_a_flapping_endpoint_is_disabled_counting_from_its_first_failure(settings_factory, new_receiver):
    # each time the breaker opens, exactly one request (its probe) succeeds: it closes, the released deliveries fail
    # at once and it opens again, every half second or so — far shorter than HOOKPOST_DISABLE_AFTER (3 s) each time
    s = settings_factory(**{**BREAKER, "breaker_threshold": 5, "breaker_probe": "200ms", "breaker_probe_max": "200ms",
                            "disable_after": "3s"})
    flapper = Flapper()
    rx = await new_receiver(respond=flapper.respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    hook = await store.webhooks.create(rx.url, ["article.*"])
    key = endpoint_key(rx.url)
    try:
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("flap", "article.updated", 300))
            armed_for: set[int] = set()

            async def disabled_after_flapping():
                h = await store.endpoints.get(key)
                if h is not None and h.state == BreakerState.OPEN and not flapper.armed:
                    # armed again until a request takes it: a delivery still in flight when the breaker opened
                    # may take the one success instead of the probe (seen on a slow machine)
                    armed_for.add(h.opened_ms)
                    flapper.arm()
                return h if h is not None and h.state == BreakerState.DISABLED else None

            health = await wait_until(disabled_after_flapping, 30, interval=0.02, message="the endpoint disabled")
            disabled_at = time.time()
            closes = worker.metrics.registry.get_sample_value("hookpost_breaker_transitions_total", {"to": "closed"})

            async def none_waiting():
                c = await counts(store)
                return c.get("New", 0) + c.get("Retrying", 0) == 0

            await wait_until(none_waiting, 30, interval=0.25, message="every event Finished or Failed")
        first_failure = flapper.times[0]
        print(f"flapping: opened {len(armed_for)}x, closed {closes}x, disabled {disabled_at - first_failure:.1f} s "
              f"after the first failure; {await counts(store)}")
        assert closes is not None and closes >= 3  # it did flap
        assert health.failing_since_ms is not None and abs(health.failing_since_ms / 1000 - first_failure) < 0.5
        assert disabled_at - first_failure >= 3.0
        webhook = await store.webhooks.get(hook.id)
        assert not webhook.active and "failing since" in (webhook.disabled_reason or "")
        assert "recovered only briefly" in (webhook.disabled_reason or "")
        failed = await store.events.find_ids({"status": "Failed", "last_error": {"$regex": "^webhook disabled: "}},
                                            limit=1000)
        assert failed  # what it still held ended Failed with the reason
    finally:
        await store.close()


async def test_new_events_of_an_open_endpoint_are_held_by_fan_out_without_a_trip_through_the_deliver_queue(
        settings_factory, new_receiver):
    s = settings_factory(**BREAKER)
    dead = Switch()
    rx = await new_receiver(respond=dead.respond)
    healthy = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    hook = await store.webhooks.create(rx.url, ["article.*"])
    await store.webhooks.create(healthy.url, ["article.*"])
    key = endpoint_key(rx.url)
    new = 300
    try:
        async with running_worker(s) as worker:
            # every delivery the dispatcher consumes from PREFIX.deliver, as (change id, probe?), for the dead webhook
            consumed: list[tuple[str, bool]] = []
            handle = worker.delivery.handle

            async def spy(msg):  # type: ignore[no-untyped-def]
                dm = DeliveryMessage.model_validate_json(msg.body)
                if dm.webhook_id == hook.id:
                    consumed.append((str(dm.payload["data"]["change_id"]), dm.probe))
                return await handle(msg)

            worker.delivery.handle = spy  # type: ignore[method-assign]
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("before", "article.updated", 30))
            await wait_until(lambda: worker.breaker.is_open(key), 30, message="the breaker open")
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("while-open", "article.updated", new))

            async def fanned_out():
                return await store.events.count({"change_id": {"$regex": "^while-open-"}}) == 2 * new

            await wait_until(fanned_out, 30, interval=0.1, message="the new changes fanned out")
            await wait_until(lambda: len(healthy.requests) >= new, 30, message="the healthy webhook's deliveries")
            assert worker.breaker.is_open(key)  # open all along (its probes failed)
            trips = [c for c, probe in consumed if c.startswith("while-open-") and not probe]
            held_at_fanout = worker.metrics.registry.get_sample_value("hookpost_deliveries_held_at_fanout_total")
            print(f"while open: {new} new changes, {len(trips)} deliveries of theirs consumed from the deliver "
                  f"queue for the dead endpoint, {held_at_fanout:.0f} held at fan-out, "
                  f"{sum(1 for c, probe in consumed if probe)} probes")
            assert trips == []
            assert held_at_fanout >= new  # and a change of before the open fanned out after it is held too
            new_dead = {"change_id": {"$regex": "^while-open-"}, "webhook_id": hook.id}
            probed = {c for c, probe in consumed if probe and c.startswith("while-open-")}
            assert await store.events.count({**new_dead, "held": key, "status": "New", "attempt_count": 0}) \
                == new - len(probed)

            dead.down = False

            async def all_finished():
                return (await counts(store)).get("Finished", 0) == 2 * (30 + new)

            await wait_until(all_finished, 90, interval=0.25, message="every event Finished")
        assert await store.events.count({"held": {"$ne": None}}) == 0
        assert await store.events.count({**new_dead, "status": "Finished"}) == new
    finally:
        await store.close()
