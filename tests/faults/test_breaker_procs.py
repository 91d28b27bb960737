"""Two ``hookpost dispatcher`` processes share one breaker per endpoint: it opens once, one series of probes goes
out, and both stop sending until the endpoint is back."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from hookpost.common.endpoints import BreakerState, endpoint_key
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_breaker import Switch, changes, counts, most_in_window
from tests.faults.procs import DispatcherProcess, dispatcher_env
from tests.helpers import wait_until

BREAKER = {"breaker_probe": "500ms", "breaker_probe_max": "1s", "breaker_poll": "100ms", "http_timeout": "1s",
           "endpoint_hang_after": "500ms"}


@asynccontextmanager
async def two_dispatchers(s, url: str, logs: Path) -> AsyncIterator[tuple[Store, str, list[DispatcherProcess]]]:
    """A webhook on ``url`` and two ready dispatcher processes with settings ``s``: (store, endpoint key,
    processes); the processes are stopped afterwards."""
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(url, ["article.*"])
    procs = [DispatcherProcess(dispatcher_env(s), logs / f"d{i}.log", name=f"d{i}") for i in (1, 2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            await p.wait_ready()
        yield store, endpoint_key(url), procs
    finally:
        for p in procs:
            p.stop()
        await store.close()


async def test_two_dispatchers_run_one_outage(settings_factory, new_receiver, tmp_path):
    s = settings_factory(breaker_threshold=10, **BREAKER)
    dead = Switch()
    rx = await new_receiver(respond=dead.respond)
    async with two_dispatchers(s, rx.url, tmp_path) as (store, key, procs):
        async with Publisher.from_settings(s) as pub:
            await pub.publish_many(changes("two", "article.updated", 300))

        async def opened():
            h = await store.endpoints.get(key)
            return h if h is not None and h.state == BreakerState.OPEN else None

        health = await wait_until(opened, 30, message="the breaker opened")
        await asyncio.sleep(6)
        opened_at = health.opened_ms / 1000
        after_open = [t for t in dead.down_times if t > opened_at + 0.3]
        dead.down = False

        async def all_finished():
            return (await counts(store)).get("Finished", 0) == 300

        await wait_until(all_finished, 90, interval=0.25, message="every event Finished")
        opens = sum(p.count_logged("breaker opened: deliveries to this endpoint are held") for p in procs)
        probes = [p.count_logged("probe sent to an endpoint with an open breaker") for p in procs]
        print(f"two processes: {len(dead.down_times)} requests while down, {len(after_open)} after opening "
              f"{[round(t - opened_at, 2) for t in after_open]}; opened {opens}x; probes by process {probes}")
        assert opens == 1
        assert most_in_window(after_open, 0.5) <= 2 and len(after_open) <= 2 * 6 / 0.5
        assert sum(probes) <= 6 / 0.5 + 2
        assert await counts(store) == {"Finished": 300}


async def test_two_dispatchers_count_one_run_of_failures(settings_factory, new_receiver, tmp_path):
    # one change at a time, so the two processes take turns: each sees about half of the failures in a row. The run
    # is counted in the endpoint's document, so the breaker opens after THRESHOLD failures in all, although
    # neither process saw THRESHOLD itself (counted per process, it would not open within 2 × THRESHOLD - 2)
    threshold = 10
    s = settings_factory(breaker_threshold=threshold, max_attempts=1, retry_delays="", **BREAKER)
    dead = Switch()
    rx = await new_receiver(respond=dead.respond)
    async with two_dispatchers(s, rx.url, tmp_path) as (store, key, procs):
        opened = None
        async with Publisher.from_settings(s) as pub:
            for i in range(2 * threshold - 2):
                await pub.publish_many(changes(f"turn{i}", "article.updated", 1))

                async def settled(n: int = i + 1) -> bool:
                    c = await counts(store)
                    return c.get("Failed", 0) + await store.events.count({"held": key}) == n

                await wait_until(settled, 15, message=f"change {i} attempted or held")
                h = await store.endpoints.get(key)
                if h is not None and h.state == BreakerState.OPEN:
                    opened = h
                    break
        failures = [p.count_logged("event failed") for p in procs]
        print(f"run shared by two processes: failures by process {failures}, breaker "
              f"{'opened' if opened else 'not opened'} after {sum(failures)} in all")
        assert opened is not None
        assert sum(failures) == threshold and all(0 < n < threshold for n in failures)
        assert sum(p.count_logged("breaker opened: deliveries to this endpoint are held") for p in procs) == 1

        async with Publisher.from_settings(s) as pub:  # a held delivery, for the probe (the process that did not
            for i in range(5):                          # open it sends until its next poll, 100 ms at most)
                await pub.publish_many(changes(f"held{i}", "article.updated", 1))

                async def attempted_or_held(n: int = sum(failures) + i + 1) -> bool:
                    c = await counts(store)
                    return c.get("Failed", 0) + await store.events.count({"held": key}) == n

                await wait_until(attempted_or_held, 15, message=f"change held{i} attempted or held")
                if await store.events.count({"held": key}):
                    break
        dead.down = False  # the probe closes it, and the shared run starts again from zero

        async def closed():
            h = await store.endpoints.get(key)
            return (h is not None and h.state == BreakerState.CLOSED and h.run == 0
                    and (await counts(store)).get("Finished", 0) == 1)

        await wait_until(closed, 15, message="the breaker closed, no run, the held event Finished")
