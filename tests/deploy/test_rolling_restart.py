"""A rolling restart: two dispatcher containers, each with its own ops port, changes flowing from the host; each
container is stopped and started again, one at a time, three times. Every event ends Finished and none is
missing. HOOKPOST_TEST_ROLLING_CHANGES sets the number of changes (default 5,000)."""

import asyncio
import os
import time
from collections import Counter

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from tests.deploy.conftest import container_env
from tests.deploy.containers import free_port, report
from tests.deploy.test_delivery import wait_ready
from tests.helpers import wait_until

CHANGES = int(os.environ.get("HOOKPOST_TEST_ROLLING_CHANGES", "5000"))
ROUNDS = 3
CHUNKS = 40          # the changes are published in this many chunks, paced over the restarts
STOP_TIMEOUT = 20    # above HOOKPOST_SHUTDOWN_GRACE (5 s)


async def test_rolling_restart_of_two_dispatchers_loses_nothing(settings, store, containers, new_receiver,
                                                                pytestconfig):
    receiver = await new_receiver([200])
    await store.webhooks.create(receiver.url, ["article.*"])
    ports = {f"hp-{settings.prefix}-d{i}": free_port() for i in (1, 2)}
    for name, port in ports.items():
        await containers.run(name, ["dispatcher"], container_env(settings, ops_port=port))
    for name, port in ports.items():
        await wait_ready(containers, name, f"http://127.0.0.1:{port}/readyz")

    restarts_done = asyncio.Event()
    started = time.monotonic()

    async def publish() -> None:
        async with Publisher.from_settings(settings) as publisher:
            size = -(-CHANGES // CHUNKS)
            for first in range(0, CHANGES, size):
                await publisher.publish_many([
                    ChangeEvent(id=f"chg-{i}", type="article.updated", entity=Entity(kind="article", id=f"A-{i}"))
                    for i in range(first, min(first + size, CHANGES))])
                if not restarts_done.is_set():
                    await asyncio.sleep(0.5)  # pace the load so that it flows through every restart

    publisher = asyncio.create_task(publish())
    stops: list[float] = []
    try:
        for _ in range(ROUNDS):
            for name, port in ports.items():
                t0 = time.monotonic()
                await containers.runtime.call("stop", "-t", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
                stops.append(time.monotonic() - t0)
                state = await containers.state(name)
                assert state["ExitCode"] == 0, (await containers.logs(name))[-3000:]
                await containers.runtime.call("start", name)
                await wait_ready(containers, name, f"http://127.0.0.1:{port}/readyz")
    finally:
        restarts_done.set()
        await publisher
    restarted_in = time.monotonic() - started

    async def finished() -> int | None:
        n = await store.events.count({"status": EventStatus.FINISHED.value})
        return n if n == CHANGES else None
    await wait_until(finished, 300, interval=1.0, message=f"{CHANGES} events Finished")
    assert await store.events.count({}) == CHANGES, "one event per change, no more"
    change_ids = await store.events.coll.distinct("change_id")
    assert len(change_ids) == CHANGES, "an event is missing"

    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(sent) == CHANGES
    duplicates = sum(n - 1 for n in sent.values())
    report(pytestconfig, f"rolling restart: {CHANGES} changes, {ROUNDS * len(ports)} restarts in {restarted_in:.0f} s "
          f"(stops took {min(stops):.1f}-{max(stops):.1f} s), all Finished after {time.monotonic() - started:.0f} s; "
          f"requests sent twice: {duplicates}")
