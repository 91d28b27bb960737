"""Signed deliveries (verified independently), safe targets, hostile producers and receivers."""

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
import warnings

import pika
import pytest
from aiohttp import web
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.topology import topology_from
from hookpost.common.wire import InvalidChangeError
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.helpers import drain_queue, running_worker, wait_until


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks verification from the spec (independent of common/signing.py)."""
    ts = int(headers["webhook-timestamp"])
    if abs(time.time() - ts) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{headers['webhook-id']}.{ts}.".encode() + body, hashlib.sha256).digest()
    want = base64.b64encode(mac).decode()
    return any(sig.startswith("v1,") and hmac.compare_digest(sig[3:], want)
               for sig in headers["webhook-signature"].split())


async def publish(settings, cid, etype="article.updated"):
    async with Publisher.from_settings(settings) as p:
        await p.publish(ChangeEvent(id=cid, type=etype, entity=Entity(kind="article", id="A-1")))


async def test_signatures_verify_including_during_rotation(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([200])
    hook = await store.webhooks.create(rec.url, ["article.*"])
    await publish(settings, "c-1")
    await wait_until(lambda: len(rec.requests) == 1)
    first = rec.requests[0]
    h = {k.lower(): v for k, v in first.headers.items()}
    assert verify(hook.secret, h, first.body) and len(h["webhook-signature"].split()) == 1
    assert h["webhook-id"] == first.json["id"] and h["user-agent"].startswith("Hookpost/")

    rotated = await store.webhooks.rotate_secret(hook.id, grace=3600)
    dispatcher.cache.invalidate()
    await publish(settings, "c-2")
    await wait_until(lambda: len(rec.requests) == 2)
    second = rec.requests[1]
    h2 = {k.lower(): v for k, v in second.headers.items()}
    assert len(h2["webhook-signature"].split()) == 2
    assert verify(rotated.secret, h2, second.body) and verify(hook.secret, h2, second.body)
    assert not verify(rotated.secret, h2, second.body + b"x")

    # after the grace period only the new secret signs
    await store.webhooks.update(hook.id, previous_secret_expires_at=rotated.updated_at.replace(year=2000))
    dispatcher.cache.invalidate()
    await publish(settings, "c-3")
    await wait_until(lambda: len(rec.requests) == 3)
    h3 = {k.lower(): v for k, v in rec.requests[2].headers.items()}
    assert verify(rotated.secret, h3, rec.requests[2].body) and not verify(hook.secret, h3, rec.requests[2].body)


async def test_private_targets_refused_by_default_and_allowed_with_setting(settings_factory, new_receiver):
    rec = await new_receiver([200])
    port = rec.url.split(":")[2].split("/")[0]
    strict = settings_factory(allow_private_targets=False, max_attempts=2, retry_delays="50ms")
    store = Store.connect(strict.mongodb_url, strict.mongodb_db)
    await store.ensure_indexes()
    # stored directly: `webhooks create` would refuse the literal address already
    by_name = await store.webhooks.create(f"http://localhost:{port}/by-name", ["article.*"])
    by_ip = await store.webhooks.create(f"http://127.0.0.1:{port}/by-ip", ["article.*"])
    mapped = await store.webhooks.create(f"http://[::ffff:127.0.0.1]:{port}/mapped", ["article.*"])
    async with running_worker(strict):
        await publish(strict, "c-1")

        async def failed():
            evs = await store.events.find_for_change("c-1")
            return evs if len(evs) == 3 and all(e.status == EventStatus.FAILED for e in evs) else None

        evs = await wait_until(failed, 20, message="all three refused")
    assert rec.requests == []
    for ev in evs:
        attempts = await store.attempts.for_event(ev.id)
        assert len(attempts) == 2 and all(a.error.startswith("TargetRefused") for a in attempts), attempts
        assert "loopback" in ev.last_error
    assert {e.webhook_id for e in evs} == {by_name.id, by_ip.id, mapped.id}
    await store.close()

    allowed = settings_factory(allow_private_targets=False, allowed_target_networks="127.0.0.0/8")
    store = Store.connect(allowed.mongodb_url, allowed.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(f"http://localhost:{port}/by-name", ["article.*"])
    async with running_worker(allowed):
        await publish(allowed, "c-2")
        await wait_until(lambda: len(rec.requests) == 1, message="delivered with the allow-list")
    await store.close()


def bad_bodies(n: int) -> list[tuple[bytes, dict]]:
    """Generated malformed change events: (body, AMQP properties)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        junk = st.one_of(
            st.binary(min_size=0, max_size=200),
            st.text(max_size=100).map(str.encode),
            st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                         max_leaves=8).map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries({"id": st.text(max_size=5), "type": st.text(max_size=8),
                                   "entity": st.one_of(st.none(), st.dictionaries(st.text(max_size=4),
                                                                                  st.text(max_size=4)))},
                                  optional={"occurred_at": st.text(max_size=8), "data": st.integers()}
                                  ).map(lambda d: json.dumps(d).encode()),
        )
        out = []
        rng = random.Random(1)
        for i in range(n):
            body = junk.example()
            props = {"content_type": "application/json"}
            if i % 25 == 0:
                body = json.dumps({"id": f"big-{i}", "type": "a.b", "entity": {"kind": "a", "id": "1"},
                                   "data": {"blob": "x" * 70000}}).encode()
            elif i % 25 == 1:
                props = {"content_type": "text/xml"}
                body = b'{"id": "x", "type": "a.b", "entity": {"kind": "a", "id": "1"}}'
            elif i % 25 == 2:
                body = '{"id": "ü", "type": "a.b", "entity": {"kind": "a", "id": "1"}}'.encode("latin-1")
            elif i % 25 == 3:
                props = {"content_type": "application/json", "content_encoding": "gzip"}
                body = b'{"id": "x", "type": "a.b", "entity": {"kind": "a", "id": "1"}}'
            elif rng.random() < 0.1:
                props = {}
            out.append((body, props))
        return out


async def test_malformed_change_events_go_to_invalid_with_reason(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([200])
    await store.webhooks.create(rec.url, ["*"])
    topo = topology_from(settings)
    bodies = [b for b in bad_bodies(300)]
    # anything a generator produced that is actually valid would be delivered, not dead-lettered: filter those
    from hookpost.common.wire import decode_change
    invalid = []
    for body, props in bodies:
        try:
            decode_change(body, props.get("content_type"), content_encoding=props.get("content_encoding"))
        except InvalidChangeError:
            invalid.append((body, props))
    assert len(invalid) >= 280
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    ch = await conn.channel(confirms=True)
    good = []
    for i, (body, props) in enumerate(invalid):
        await ch.publish(topo.changes_exchange, "junk.type", body, mandatory=True,
                         properties=pika.BasicProperties(delivery_mode=2, message_id=f"bad-{i}", **props))
        if i % 50 == 0:
            good.append(f"good-{i}")
            await ch.publish(topo.changes_exchange, "article.updated", ChangeEvent(
                id=good[-1], type="article.updated", entity=Entity(kind="article", id="A")).model_dump_json().encode(),
                message_id=good[-1])
    await conn.close()

    await wait_until(lambda: len(rec.requests) == len(good), 30, message="good events delivered")
    got = await wait_until(lambda: _drain_until(settings, topo.invalid_queue, len(invalid)), 30,
                           message="every invalid event in the invalid queue")
    assert sorted(b for _, b in got) == sorted(b for b, _ in invalid)
    for headers, _ in got:
        assert headers["x-hookpost-error"] and headers["hookpost-error"] == headers["x-hookpost-error"]
        assert headers["hookpost-routing-key"] == "junk.type"
    assert sorted(r.json["data"]["change_id"] for r in rec.requests) == sorted(good)
    assert await store.events.count({}) == len(good)
    assert not dispatcher.stopping.is_set()


_collected: dict[str, list] = {}


async def _drain_until(settings, queue, n):
    got = _collected.setdefault(settings.prefix, [])
    got += await drain_queue(settings, queue)
    return got if len(got) >= n else None


async def test_endless_response_body_does_not_grow_memory(settings, store, dispatcher, new_receiver):
    async def endless(n, request):
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(16 * 1024):  # up to 1 GiB, unless the client hangs up first
                await resp.write(chunk)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    def rss_mb() -> float:  # current resident memory of this process (dispatcher and receiver run in it)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    rec = await new_receiver(respond=endless)
    await store.webhooks.create(rec.url, ["article.*"])
    before, peak = rss_mb(), [0.0]

    async def sample():
        while True:
            peak[0] = max(peak[0], rss_mb())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    async with Publisher.from_settings(settings) as p:
        await p.publish_many([ChangeEvent(id=f"c-{i}", type="article.updated", entity=Entity(kind="a", id="1"))
                              for i in range(20)])

    async def finished():
        return await store.events.count({"status": "Finished"}) == 20

    await wait_until(finished, 30, message="20 deliveries finished")
    sampler.cancel()
    grown_mb = peak[0] - before
    assert grown_mb < 40, f"RSS grew by {grown_mb:.0f} MB while receivers streamed endless bodies"
    ev = (await store.events.find_for_change("c-0"))[0]
    attempts = await store.attempts.for_event(ev.id)
    assert len(attempts[0].response_excerpt or "") == settings.response_excerpt_bytes


async def test_producer_refuses_invalid_changes(settings):
    async with Publisher.from_settings(settings, declare=True) as p:
        with pytest.raises(InvalidChangeError, match="too large"):
            await p.publish(ChangeEvent(id="x", type="a.b", entity=Entity(kind="a", id="1"), data={"b": "x" * 70000}))
        with pytest.raises(ValueError, match="type"):
            await p.publish({"id": "x", "type": "a.*", "entity": {"kind": "a", "id": "1"}})
        with pytest.raises(ValueError, match="entity"):
            await p.publish({"id": "x", "type": "a.b"})


async def test_cookies_a_receiver_sets_are_not_sent_back(settings, store, dispatcher, new_receiver):
    async def respond(n: int, request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="ok")
        resp.set_cookie("session", f"s{n}", path="/")
        return resp

    rec = await new_receiver(respond=respond)
    # a host name, not an address: a cookie jar would keep this cookie (it ignores cookies of bare IPs)
    await store.webhooks.create(rec.url.replace("127.0.0.1", "localhost"), ["article.*"])
    for cid in ("c-1", "c-2"):
        await publish(settings, cid)
        await wait_until(lambda cid=cid: any(r.json["data"]["change_id"] == cid for r in rec.requests))
    assert len(rec.requests) == 2 and all("Cookie" not in r.headers for r in rec.requests)
