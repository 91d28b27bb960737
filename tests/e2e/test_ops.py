"""A running dispatcher's /healthz, /readyz and /metrics tell the truth about what it did."""

import json

import aiohttp

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.events import EventFilter
from tests.helpers import wait_until
from tests.metrics_text import Samples, label_values, parse_metrics, value


async def scrape(http: aiohttp.ClientSession, base: str) -> Samples:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(await resp.text())


async def publish_invalid(settings: Settings) -> None:
    """Publish a change event without ``id`` and ``entity`` straight to the changes exchange."""
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        await ch.publish(topo.changes_exchange, "article.updated", json.dumps({"type": "article.updated"}).encode(),
                         message_id="bad-1")
    finally:
        await conn.close()


async def test_probes_answer_while_running(dispatcher):
    base = f"http://127.0.0.1:{dispatcher.ops.port}"
    assert dispatcher.ops.port != 0
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert "available" in body.pop("broker_files")  # a report only (tests/deploy/test_broker_files.py)
            assert body == {"ready": True, "broker": True, "store": True, "broker_accepts_publishes": True}
        samples = await scrape(http, base)
    assert value(samples, "hookpost_broker_connected") == 1
    assert value(samples, "hookpost_store_up") == 1
    assert value(samples, "hookpost_changes_consumed_total", result="ok") is None  # nothing consumed yet


async def test_metrics_count_exactly_what_happened(settings: Settings, store: Store, dispatcher, new_receiver):
    articles = await new_receiver([200])
    orders = await new_receiver([500, 500, 200])  # two failed attempts, then delivered
    await store.webhooks.create(articles.url, ["article.*"])
    await store.webhooks.create(orders.url, ["order.created"])
    dispatcher.cache.invalidate()

    async with Publisher.from_settings(settings) as publisher:
        for cid, etype in (("chg-1", "article.updated"), ("chg-2", "article.created"), ("chg-3", "order.created"),
                           ("chg-4", "stock.changed")):  # chg-4 matches no webhook: consumed, no event
            await publisher.publish(ChangeEvent(id=cid, type=etype, entity=Entity(kind=etype.split(".")[0],
                                                                                  id=f"X-{cid}")))
    await publish_invalid(settings)

    base = f"http://127.0.0.1:{dispatcher.ops.port}"
    async with aiohttp.ClientSession() as http:
        async def settled() -> Samples | None:
            samples = await scrape(http, base)
            done = (value(samples, "hookpost_events_finished_total") == 3
                    and value(samples, "hookpost_changes_consumed_total", result="ok") == 4
                    and value(samples, "hookpost_changes_consumed_total", result="invalid") == 1)
            return samples if done else None

        samples = await wait_until(settled, 30, message="metrics show 3 finished events and 5 consumed changes")

        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["ready"] is True and body["broker"] is True and body["store"] is True

    # the store agrees with the metrics
    events = await store.events.find(EventFilter(), limit=10)
    assert len(events) == 3 and all(e.status == EventStatus.FINISHED for e in events)
    assert sorted(e.attempt_count for e in events) == [1, 1, 3]
    assert len(articles.requests) == 2 and len(orders.requests) == 3

    assert value(samples, "hookpost_changes_consumed_total", result="ok") == 4
    assert value(samples, "hookpost_changes_consumed_total", result="invalid") == 1
    assert value(samples, "hookpost_events_created_total") == 3
    assert value(samples, "hookpost_delivery_attempts_total", status_class="2xx") == 3
    assert value(samples, "hookpost_delivery_attempts_total", status_class="5xx") == 2
    assert label_values(samples, "hookpost_delivery_attempts_total", "status_class") == {"2xx", "5xx"}
    assert value(samples, "hookpost_events_finished_total") == 3
    assert value(samples, "hookpost_events_failed_total") == 0
    first, second = (f"{round(d * 1000)}ms" for d in settings.retry_delays[:2])  # "50ms", "100ms"
    assert value(samples, "hookpost_retries_scheduled_total", delay=first) == 1
    assert value(samples, "hookpost_retries_scheduled_total", delay=second) == 1
    assert label_values(samples, "hookpost_retries_scheduled_total", "delay") == {first, second}
    assert value(samples, "hookpost_reconciled_total") == 0
    assert value(samples, "hookpost_delivery_duration_seconds_count") == 5
    assert value(samples, "hookpost_delivery_duration_seconds_bucket", le="+Inf") == 5
    assert value(samples, "hookpost_deliveries_in_flight") == 0
    assert value(samples, "hookpost_broker_connected") == 1
    assert value(samples, "hookpost_store_up") == 1
