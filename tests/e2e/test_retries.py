"""Delayed-retry queues, ten attempts, dead-lettering to Failed, 410, Retry-After, restart."""

import asyncio
import json
import socket

from aiohttp import web

from hookpost.admin.restart import restart_events
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.producer.deliveries import DeliveryPublisher
from hookpost.store import Store
from tests.helpers import drain_queue, running_worker, wait_until


async def publish(settings, cid="chg-1", etype="article.updated"):
    async with Publisher.from_settings(settings) as publisher:
        await publisher.publish(ChangeEvent(id=cid, type=etype, entity=Entity(kind="article", id="A-1001")))


async def only_event(store: Store, status: EventStatus | None = None, timeout: float = 20):
    async def check():
        docs = await store.events.find_for_change("chg-1")
        if len(docs) == 1 and (status is None or docs[0].status == status):
            return docs[0]
        return None
    return await wait_until(check, timeout, message=f"one event with status {status}")


async def test_fails_twice_then_succeeds(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([500, 502, 200])
    await store.webhooks.create(rec.url, ["article.*"])
    await publish(settings)
    ev = await only_event(store, EventStatus.FINISHED)
    assert ev.attempt_count == 3
    attempts = await store.attempts.for_event(ev.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 502), (3, 200)]
    assert attempts[0].error is None and attempts[0].response_excerpt == "answer 1: 500"
    assert len(rec.requests) == 3
    gaps = [b.at - a.at for a, b in zip(rec.requests, rec.requests[1:], strict=False)]
    assert gaps[0] >= settings.retry_delays[0] and gaps[1] >= settings.retry_delays[1], gaps
    # the same webhook-id on every attempt, so a receiver can deduplicate
    assert {r.headers["webhook-id"] for r in rec.requests} == {ev.id}
    assert ev.last_status_code == 200 and ev.last_error is None and ev.next_attempt_at is None


async def test_always_500_fails_after_ten_and_is_dead_lettered(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([500])
    hook = await store.webhooks.create(rec.url, ["article.*"])
    await publish(settings)
    ev = await only_event(store, EventStatus.FAILED)
    await asyncio.sleep(0.5)  # nothing more may arrive
    assert len(rec.requests) == 10
    assert ev.attempt_count == 10 and ev.last_status_code == 500
    attempts = await store.attempts.for_event(ev.id)
    assert [a.attempt for a in attempts] == list(range(1, 11))
    assert all(a.status_code == 500 for a in attempts)
    failed = await drain_queue(settings, topology_from(settings).failed_queue)
    assert len(failed) == 1
    notice = json.loads(failed[0][1])
    assert notice["event_id"] == ev.id and notice["webhook_id"] == hook.id and notice["attempts"] == 10
    assert "HTTP 500" in notice["last_error"]
    # no delivery is left anywhere
    for q in [topology_from(settings).deliver_queue, *topology_from(settings).retry_queues]:
        assert await drain_queue(settings, q) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_connection_and_timeout_end_failed_with_error_class(settings_factory, new_receiver):
    s = settings_factory(http_timeout="300ms")

    async def hang(n, request):
        await asyncio.sleep(5)
        return web.Response(status=200)

    slow = await new_receiver(respond=hang)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    dead = await store.webhooks.create(f"http://127.0.0.1:{closed_port()}/hook", ["article.*"])
    hanging = await store.webhooks.create(slow.url, ["article.*"])
    async with running_worker(s):
        await publish(s)

        async def both_failed():
            evs = await store.events.find_for_change("chg-1")
            return evs if len(evs) == 2 and all(e.status == EventStatus.FAILED for e in evs) else None

        evs = await wait_until(both_failed, 30, message="both events Failed")
    by_hook = {e.webhook_id: e for e in evs}
    for hook, prefix in ((dead, "ConnectError"), (hanging, "Timeout")):
        ev = by_hook[hook.id]
        attempts = await store.attempts.for_event(ev.id)
        assert ev.attempt_count == 10 and len(attempts) == 10
        assert all(a.error and a.error.startswith(prefix) and a.status_code is None for a in attempts), attempts[0]
        assert prefix in (ev.last_error or "")
    assert len(slow.requests) == 10
    await store.close()


async def test_410_fails_at_once_and_disables_webhook(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([410])
    hook = await store.webhooks.create(rec.url, ["article.*"])
    await publish(settings)
    ev = await only_event(store, EventStatus.FAILED)
    await asyncio.sleep(0.5)
    assert len(rec.requests) == 1 and ev.attempt_count == 1
    assert "410" in (ev.last_error or "")
    again = await store.webhooks.get(hook.id)
    assert again.active is False and "410" in (again.disabled_reason or "")


async def test_retry_after_moves_to_a_longer_level(settings_factory, new_receiver):
    s = settings_factory(max_attempts=4, retry_delays="50ms,100ms,1s")
    calls = []

    async def respond(n, request):
        calls.append(n)
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    rec = await new_receiver(respond=respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rec.url, ["article.*"])
    async with running_worker(s):
        await publish(s)
        ev = await only_event(store, EventStatus.FINISHED)
    assert ev.attempt_count == 2
    assert rec.requests[1].at - rec.requests[0].at >= 1.0
    await store.close()


async def test_retrying_event_is_listed_with_next_attempt(settings_factory, new_receiver):
    s = settings_factory(max_attempts=3, retry_delays="50ms,1m")
    rec = await new_receiver([500])
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rec.url, ["article.*"])
    async with running_worker(s):
        await publish(s)

        async def second_done():
            ev = await only_event(store)
            return ev if ev.attempt_count == 2 else None

        await wait_until(second_done, 15, message="two attempts made")
    proc = await asyncio.create_subprocess_exec(
        "hookpost", "events", "list", "--json", env=_cli_env(s), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    listed = json.loads(out)
    assert len(listed) == 1
    assert listed[0]["status"] == "Retrying" and listed[0]["attempt_count"] == 2
    assert listed[0]["next_attempt_at"].endswith("Z") and listed[0]["last_status_code"] == 500
    await store.close()


def _cli_env(s):
    import os
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update({"HOOKPOST_RABBITMQ_URL": s.rabbitmq_url, "HOOKPOST_MONGODB_URL": s.mongodb_url,
                "HOOKPOST_MONGODB_DB": s.mongodb_db, "HOOKPOST_PREFIX": s.prefix,
                "HOOKPOST_MAX_ATTEMPTS": str(s.max_attempts),
                "HOOKPOST_RETRY_DELAYS": ",".join(f"{round(d * 1000)}ms" for d in s.retry_delays),
                "HOOKPOST_ALLOW_PRIVATE_TARGETS": "true"})
    return env


async def test_restarted_failed_event_finishes_with_eleven_attempts(settings, store, dispatcher, new_receiver):
    outcomes = {"status": 500}

    async def respond(n, request):
        return web.Response(status=outcomes["status"])

    rec = await new_receiver(respond=respond)
    await store.webhooks.create(rec.url, ["article.*"])
    await publish(settings)
    ev = await only_event(store, EventStatus.FAILED)
    assert ev.attempt_count == 10
    outcomes["status"] = 200  # the receiver recovered

    async with DeliveryPublisher.from_settings(settings) as out:
        report = await restart_events(store, out, [ev])
        assert report.restarted == [ev.id]
        # restarting again while it is in flight does nothing
        again = await restart_events(store, out, [await store.events.get(ev.id)])
    done = await only_event(store, EventStatus.FINISHED)
    assert done.attempt_count == 11 and done.budget_start == 10
    attempts = await store.attempts.for_event(ev.id)
    assert [a.attempt for a in attempts] == list(range(1, 12))
    assert attempts[-1].status_code == 200
    assert len(rec.requests) == 11
    assert again.restarted == [] or again.skipped == {}
