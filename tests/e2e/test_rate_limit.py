"""A webhook's ``rate_limit`` (requests per second) holds under a burst, and nothing is lost or charged an
attempt for waiting. The limited receiver runs in its own thread, so the times it records are when requests
arrived, not when the test's event loop got round to them."""

import threading

from bench.kinds import Record, stdlib_server
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_breaker import changes, counts, most_in_window
from tests.helpers import running_worker, wait_until


async def test_a_burst_of_1000_to_a_webhook_limited_to_20_per_second(settings_factory, new_receiver):
    s = settings_factory(defer_delay="500ms")
    record = Record()
    server = stdlib_server(0, record, backlog=128, delay=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    other = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(url, ["burst.*"], rate_limit=20)
    await store.webhooks.create(other.url, ["burst.*"])
    try:
        async with running_worker(s) as worker:
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("r", "burst.x", 1000))
            await wait_until(lambda: len(other.requests) == 1000, 60, message="the unlimited webhook got all 1000")

            async def all_finished():
                return (await counts(store)).get("Finished", 0) == 2000

            await wait_until(all_finished, 150, interval=0.5, message="2000 events Finished")
            parked = worker.metrics.registry.get_sample_value("hookpost_deliveries_rate_limited_total")
        times = list(record.first.values())
        busiest = most_in_window(times, 1.0)
        print(f"rate limit: {len(times)} requests in {max(times) - min(times):.1f}s, busiest second {busiest}, "
              f"parked {parked}")
        assert len(times) == 1000 and record.requests == 1000
        assert busiest <= 21
        assert await store.events.count({"attempt_count": 1}) == 2000
    finally:
        server.shutdown()
        server.server_close()
        await store.close()
