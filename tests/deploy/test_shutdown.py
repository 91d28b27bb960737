"""SIGTERM to a dispatcher container with the endpoint's full concurrency in flight: it finishes those deliveries
within HOOKPOST_SHUTDOWN_GRACE and exits 0; a second dispatcher takes over the rest; every event is Finished with
exactly one successful attempt."""

import asyncio
import time
from collections import Counter

from aiohttp import web

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from tests.deploy.conftest import container_env
from tests.deploy.containers import free_port, report
from tests.deploy.test_delivery import wait_ready
from tests.helpers import wait_until

CHANGES = 200
GRACE = 5.0          # HOOKPOST_SHUTDOWN_GRACE of the containers
STOP_TIMEOUT = 20    # the runtime's stop timeout: above the grace (podman's default of 10 s is too close)


async def test_sigterm_finishes_in_flight_deliveries_and_a_second_dispatcher_takes_over(
        settings, store, containers, new_receiver, pytestconfig):
    in_flight = 0
    most_in_flight = 0

    async def slow(_n: int, _request: web.Request) -> web.Response:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(1.0)
            return web.Response(text="ok")
        finally:
            in_flight -= 1

    receiver = await new_receiver(respond=slow)
    await store.webhooks.create(receiver.url, ["article.*"])
    first, second = f"hp-{settings.prefix}-d1", f"hp-{settings.prefix}-d2"
    port1, port2 = free_port(), free_port()
    await containers.run(first, ["dispatcher"], container_env(settings, ops_port=port1))
    await wait_ready(containers, first, f"http://127.0.0.1:{port1}/readyz")

    async with Publisher.from_settings(settings) as publisher:
        await publisher.publish_many([ChangeEvent(id=f"chg-{i}", type="article.updated",
                                                  entity=Entity(kind="article", id=f"A-{i}"))
                                      for i in range(CHANGES)])
    # the endpoint's whole concurrency (HOOKPOST_ENDPOINT_CONCURRENCY, 10) in flight, a few rounds done
    await wait_until(lambda: in_flight >= 10 and len(receiver.requests) >= 30, 60,
                     message="ten deliveries in flight")
    at_stop = len(receiver.requests)
    started = time.monotonic()
    await containers.runtime.call("stop", "-t", str(STOP_TIMEOUT), first, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    state = await containers.state(first)
    logs = await containers.logs(first)
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{logs[-3000:]}"
    assert took < GRACE + 2, f"the dispatcher took {took:.1f} s to stop (grace {GRACE} s)"
    assert in_flight == 0, f"{in_flight} requests still open after the dispatcher stopped in {took:.1f} s:\n" \
                           f"{logs[-3000:]}"

    await containers.run(second, ["dispatcher"], container_env(settings, ops_port=port2))

    async def all_finished() -> bool:
        return await store.events.count({"status": EventStatus.FINISHED.value}) == CHANGES
    await wait_until(all_finished, 120, interval=0.5, message=f"{CHANGES} events Finished")
    assert await store.events.count({}) == CHANGES
    assert await store.events.count({"attempt_count": {"$ne": 1}}) == 0, "an event with more than one attempt"
    assert await store.attempts.coll.count_documents({}) == 0, "a second attempt was recorded"

    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    duplicates = sum(n - 1 for n in sent.values())
    assert len(sent) == CHANGES
    report(pytestconfig, f"SIGTERM: stopped in {took:.1f} s with {at_stop} of {CHANGES} requests made; "
          f"most in flight {most_in_flight}; duplicate requests: {duplicates}")
