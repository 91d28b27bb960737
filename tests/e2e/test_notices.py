"""Notices through Hookpost's own pipeline: a webhook subscribed to ``hookpost.*`` hears that another one is
failing, recovered, or was disabled (and its waiting events Failed with the reason); producers may not publish
``hookpost.*`` types themselves."""

import asyncio
import json

from hookpost.common.amqp import AmqpConnection
from hookpost.common.endpoints import BreakerState, endpoint_key
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.e2e.test_breaker import Switch, changes, counts
from tests.helpers import drain_queue, running_worker, wait_until


def notices_of(rx) -> list[dict]:
    """The notices a receiver got: ``{"type", "webhook_id", "reason", …}``."""
    out = []
    for r in rx.requests:
        body = r.json
        out.append({"type": body["type"], "entity": body["data"]["entity"], **body["data"].get("details", {})})
    return out


async def test_failing_recovered_and_disabled_notices(settings_factory, new_receiver):
    s = settings_factory(breaker_threshold=5, breaker_probe="300ms", breaker_probe_max="600ms", breaker_poll="100ms",
                         disable_after="4s", http_timeout="1s")
    flaky_switch, dead_switch = Switch(), Switch()
    flaky = await new_receiver(respond=flaky_switch.respond)
    dead = await new_receiver(respond=dead_switch.respond)
    listener = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    back = await store.webhooks.create(flaky.url, ["a.*"])
    gone = await store.webhooks.create(dead.url, ["b.*"])
    ops = await store.webhooks.create(listener.url, ["hookpost.*"])
    try:
        async with running_worker(s):
            async with Publisher.from_settings(s) as p:
                await p.publish_many(changes("a", "a.x", 20))
                await p.publish_many(changes("b", "b.x", 20))

            def heard(kind: str, webhook_id: str):
                return [n for n in notices_of(listener) if n["type"] == kind and n["webhook_id"] == webhook_id]

            await wait_until(lambda: heard("hookpost.webhook.failing", back.id), 20, message="failing notice")
            await wait_until(lambda: heard("hookpost.webhook.failing", gone.id), 20, message="failing notice")
            flaky_switch.down = False
            await wait_until(lambda: heard("hookpost.webhook.recovered", back.id), 20, message="recovered notice")
            [disabled] = await wait_until(lambda: heard("hookpost.webhook.disabled", gone.id), 30,
                                          message="disabled notice")

            async def settled():
                a = await store.events.group_counts("status", {"webhook_id": back.id})
                b = await store.events.group_counts("status", {"webhook_id": gone.id})
                return a == {"Finished": 20} and b == {"Failed": 20}

            await wait_until(settled, 30, message="20 Finished (a), 20 Failed (b)")
            await wait_until(lambda: heard("hookpost.event.failed", gone.id), 20, message="event failed notice")
            await asyncio.sleep(0.5)
        failing = heard("hookpost.webhook.failing", gone.id)[0]
        assert failing["entity"] == {"kind": "webhook", "id": gone.id} and "503" in failing["reason"]
        assert "failing since" in disabled["reason"] and dead.url.split("/hook")[0] in disabled["reason"]
        hook = await store.webhooks.get(gone.id)
        assert not hook.active and hook.disabled_reason == disabled["reason"]
        assert (await store.endpoints.get(endpoint_key(dead.url))).state == BreakerState.DISABLED
        failed = await store.events.find_ids({"status": "Failed", "webhook_id": gone.id}, limit=100)
        ev = await store.events.get(failed[0])
        assert ev.last_error.startswith("webhook disabled: endpoint")
        # one notice per webhook and kind per interval (5 minutes): 20 Failed events, one event.failed notice
        assert len(heard("hookpost.event.failed", gone.id)) == 1
        # the listener never hears about itself, and notices about notices are not made
        assert not [n for n in notices_of(listener) if n["webhook_id"] == ops.id]
    finally:
        await store.close()


async def test_producers_may_not_publish_hookpost_types(settings_factory, new_receiver):
    s = settings_factory()
    listener = await new_receiver([200])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(listener.url, ["hookpost.*"])
    t = topology_from(s)
    try:
        async with running_worker(s):
            conn = await AmqpConnection.connect(s.rabbitmq_urls)
            try:
                ch = await conn.channel(confirms=True)
                body = {"id": "forged-1", "type": "hookpost.webhook.disabled", "entity": {"kind": "webhook", "id": "x"}}
                await ch.publish(t.changes_exchange, "hookpost.webhook.disabled", json.dumps(body).encode(),
                                 message_id="forged-1")
            finally:
                await conn.close()

            async def set_aside():
                return await drain_queue(s, t.invalid_queue)

            [(headers, _)] = await wait_until(set_aside, 15, message="the forged notice in the invalid queue")
        assert "reserved" in headers["x-hookpost-error"]
        assert listener.requests == [] and await counts(store) == {}
    finally:
        await store.close()
