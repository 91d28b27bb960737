"""Two ``hookpost dispatcher`` processes share one breaker per endpoint: it opens once, one series of probes goes
out, and both stop sending until the endpoint is back."""

import asyncio

from hookpost.common.endpoints import BreakerState, endpoint_key
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_breaker import Switch, changes, counts, most_in_window
from tests.faults.procs import DispatcherProcess, dispatcher_env
from tests.helpers import wait_until


async def test_two_dispatchers_run_one_outage(settings_factory, new_receiver, tmp_path):
    s = settings_factory(breaker_threshold=10, breaker_probe="500ms", breaker_probe_max="1s", breaker_poll="100ms",
                         http_timeout="1s", endpoint_hang_after="500ms")
    dead = Switch()
    rx = await new_receiver(respond=dead.respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rx.url, ["article.*"])
    key = endpoint_key(rx.url)
    procs = [DispatcherProcess(dispatcher_env(s), tmp_path / f"d{i}.log", name=f"d{i}") for i in (1, 2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            await p.wait_ready()
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
    finally:
        for p in procs:
            p.stop()
        await store.close()
