"""Poison change events published straight to the exchange never break the dispatcher.

A seeded generator makes malformed change events of every kind the door refuses (``common/wire.py``), each
with the reason it must be refused for, and valid ones with awkward but legal data in between. Every malformed
event must end in ``PREFIX.invalid`` with its original bytes and its reason in ``x-hookpost-error``; every valid
one must be delivered; the dispatcher never reconnects or stops.

CI runs a few hundred; the by-hand soak runs 10,000 or more::

    HOOKPOST_POISON_SOAK_EVENTS=10000 pytest tests/e2e/test_poison.py -m soak -s
"""

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import pika
import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.common.wire import MAX_DEPTH
from hookpost.store import Store
from tests.helpers import Receiver, running_worker, wait_until

MAX_BYTES = 150_000  # room for a 100,000-digit integer under the size limit


@dataclass
class Poison:
    """One generated message: body, AMQP properties, and the reason expected (None: valid, to be delivered)."""

    id: str
    body: bytes
    props: dict[str, object] = field(default_factory=dict)
    reason: str | None = None


def _valid(cid: str, **extra: object) -> dict[str, object]:
    return {"id": cid, "type": "article.updated", "entity": {"kind": "article", "id": "A-1"}, **extra}


def _text(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _nest(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def generate(n: int, seed: int = 15) -> list[Poison]:
    """``n`` messages, about one in five valid; the same ``seed`` gives the same list."""
    rng = random.Random(seed)
    out: list[Poison] = []
    for i in range(n):
        cid = f"p-{seed}-{i}"
        base = _text(_valid(cid))[:-1]
        kind = rng.randrange(15)
        ctype: dict[str, object] = {"content_type": "application/json"}
        if kind == 0:
            word = rng.choice(["NaN", "Infinity", "-Infinity"])
            out.append(Poison(cid, f'{base}, "data": {{"x": [1, {word}]}}}}'.encode(), ctype, f"{word} is not JSON"))
        elif kind == 1:
            num = rng.choice(["1e999", "-1e400", "2.5e308"])
            out.append(Poison(cid, f'{base}, "data": {{"x": {num}}}}}'.encode(), ctype, "out of range"))
        elif kind == 2:
            key = rng.choice(["id", "type", "data"])
            dup = {"id": f'"{cid}"', "type": '"a.b"', "data": '{}, "data": {"x": 1}'}[key]
            out.append(Poison(cid, f'{base}, "{key}": {dup}}}'.encode(), ctype, f"duplicate key '{key}'"))
        elif kind == 3:
            digits = rng.choice([20, 4301, 100_000])
            out.append(Poison(cid, f'{base}, "data": {{"n": {"7" * digits}}}}}'.encode(), ctype,
                              f"integer with {digits} digits"))
        elif kind == 4:
            raw = bytearray(f'{base}, "source": "erp"}}'.encode())
            raw[rng.randrange(len(raw) - 5, len(raw) - 2)] = rng.choice([0xFF, 0xC3, 0x80, 0xED])
            out.append(Poison(cid, bytes(raw), ctype, "not UTF-8"))
        elif kind == 5:
            depth = rng.choice([MAX_DEPTH, MAX_DEPTH + 5, 5000, 20000])
            out.append(Poison(cid, f'{base}, "data": {_nest(depth)}}}'.encode(), ctype, "nested deeper than"))
        elif kind == 6:
            props, reason = rng.choice([
                ({"content_type": "text/plain"}, "unsupported content type"),
                ({"content_type": "application/xml"}, "unsupported content type"),
                ({"content_type": "application/json; charset=iso-8859-1"}, "unsupported charset"),
                ({"content_type": "application/json", "content_encoding": "gzip"}, "unsupported content encoding"),
                ({"content_type": "application/json", "content_encoding": "br"}, "unsupported content encoding"),
            ])
            out.append(Poison(cid, f"{base}}}".encode(), props, reason))
        elif kind == 7:
            out.append(Poison(cid, b"", rng.choice([{}, ctype]), "empty body"))
        elif kind == 8:
            over = MAX_BYTES + rng.randint(1, 3)
            head = f'{base}, "data": {{"p": "'
            pad = over - len(head.encode()) - 3
            out.append(Poison(cid, (head + "x" * pad + '"}}').encode(), ctype, f"too large: {over} bytes"))
        elif kind == 9:
            bad = rng.choice(['{"x": "\\udc00"}', '{"\\ud800": 1}', '{"k\\u0000": 1}'])
            reason = "NUL" if "u0000" in bad else "surrogate"
            out.append(Poison(cid, f'{base}, "data": {bad}}}'.encode(), ctype, reason))
        elif kind == 10:
            when = rng.choice(["9999-12-31T23:59:59-05:00", "0001-01-01T00:30:00+01:00", "yesterday", "2026-13-01"])
            out.append(Poison(cid, f'{base}, "occurred_at": "{when}"}}'.encode(), ctype, "occurred_at"))
        elif kind == 11:
            body, reason = rng.choice([
                (b"\xef\xbb\xbf" + f"{base}}}".encode(), "byte order mark"),
                (b"[1, 2]", "not a JSON object"),
                (b"null", "not a JSON object"),
                (f"{base}".encode(), "not JSON"),
                (_text({"id": cid, "type": "a.*", "entity": {"kind": "a", "id": "1"}}).encode(), "invalid event type"),
                (_text({"id": cid, "type": "a.b"}).encode(), "entity"),
                (_text({**_valid(cid), "extra": 1}).encode(), "extra"),
                (_text({**_valid(cid), "data": [1]}).encode(), "data"),
                (_text({**_valid(cid), "id": "x" * 201}).encode(), "id"),
                (bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))), ""),
            ])
            if not reason:
                body = b"\xff" + body  # random bytes, made surely invalid
                reason = "not UTF-8"
            out.append(Poison(cid, body, ctype, reason))
        elif kind in (12, 13):
            data = rng.choice([
                {"$set": {"a.b": 1}, "a.b": "$x"},
                {"big": 2**63 - 1, "small": -(2**63), "f": 1.5e300, "tiny": 5e-324},
                {"emoji": "😀 \ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"), "nul": "a\x00b"},
                {"deep": json.loads(_nest(MAX_DEPTH - 3))},
                {"ünïcödé": "ключ", "": "empty key", "list": [None, True, False, 0, -0.0, []]},
            ])
            props = rng.choice([ctype, {}, {"content_type": "application/json; charset=utf-8"}])
            out.append(Poison(cid, _text(_valid(cid, data=data)).encode(), props))
        else:
            out.append(Poison(cid, _text(_valid(cid, source="erp")).encode(), ctype))
    return out


async def publish_all(settings: Settings, messages: list[Poison], window: int = 200) -> None:
    """Publish every message straight to the changes exchange (a plain AMQP client, no validation)."""
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        for start in range(0, len(messages), window):
            await asyncio.gather(*[
                ch.publish_nowait(topo.changes_exchange, "article.updated", m.body, properties=pika.BasicProperties(
                    delivery_mode=2, message_id=m.id, **m.props))  # type: ignore[arg-type]
                for m in messages[start:start + window]])
    finally:
        await conn.close()


async def take_invalid(settings: Settings, into: dict[str, tuple[dict[str, object], bytes]]) -> int:
    """Move what is in the invalid queue into ``into`` (by message id); return how many are there in all."""
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel()
        while (msg := await ch.get(topology_from(settings).invalid_queue)) is not None:
            into[str(msg.properties.message_id)] = (msg.headers, msg.body)
            msg.ack()
    finally:
        await conn.close()
    return len(into)


async def run_poison(settings: Settings, n: int, receiver: Receiver) -> dict[str, object]:
    messages = generate(n)
    bad = {m.id: m for m in messages if m.reason is not None}
    good = {m.id for m in messages if m.reason is None}
    assert len(bad) > n * 0.7 and good
    store = Store.connect(settings.mongodb_url, settings.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(receiver.url, ["*"])
    await store.close()
    started = time.monotonic()
    async with running_worker(settings) as worker:
        await publish_all(settings, messages)
        got: dict[str, tuple[dict[str, object], bytes]] = {}
        timeout = 60 + n / 50
        await wait_until(lambda: _count(settings, got, len(bad)), timeout, interval=0.2,
                         message=f"{len(bad)} messages in the invalid queue")
        delivered = await wait_until(
            lambda: (ids := {r.json["data"]["change_id"] for r in receiver.requests}) >= good and ids,
            timeout, message=f"{len(good)} valid change events delivered")
        assert worker.reconnects == 0 and not worker.stopping.is_set()
        consumed = worker.metrics.registry.get_sample_value
        assert consumed("hookpost_changes_consumed_total", {"result": "invalid"}) == len(bad)
        assert consumed("hookpost_changes_consumed_total", {"result": "ok"}) == len(good)
    assert set(got) == set(bad)
    wrong = []
    for mid, (headers, body) in got.items():
        want = bad[mid]
        reason = str(headers.get("x-hookpost-error", ""))
        if body != want.body or want.reason not in reason:
            wrong.append((mid, want.reason, reason[:120], body == want.body))
    assert not wrong, f"{len(wrong)} set aside with the wrong reason or body, e.g. {wrong[:5]}"
    assert delivered == good
    kinds: dict[str, int] = {}
    for m in bad.values():
        kinds[m.reason or ""] = kinds.get(m.reason or "", 0) + 1
    return {"messages": n, "invalid": len(bad), "delivered": len(good),
            "seconds": round(time.monotonic() - started, 1), "reasons": kinds}


async def _count(settings: Settings, got: dict[str, tuple[dict[str, object], bytes]], want: int) -> bool:
    return await take_invalid(settings, got) >= want


async def test_poison_change_events_go_to_invalid_and_valid_ones_are_delivered(settings_factory, new_receiver):
    receiver = await new_receiver([200])
    settings = settings_factory(max_change_bytes=MAX_BYTES)
    summary = await run_poison(settings, int(os.environ.get("HOOKPOST_POISON_EVENTS", "300")), receiver)
    print(json.dumps(summary))


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HOOKPOST_POISON_SOAK_EVENTS"),
                    reason="by hand: HOOKPOST_POISON_SOAK_EVENTS=10000 pytest tests/e2e/test_poison.py -m soak")
async def test_poison_soak(settings_factory, new_receiver):
    receiver = await new_receiver([200])
    settings = settings_factory(max_change_bytes=MAX_BYTES, prefetch=100)
    summary = await run_poison(settings, int(os.environ["HOOKPOST_POISON_SOAK_EVENTS"]), receiver)
    print(json.dumps(summary))


async def test_set_aside_copy_does_not_expire(settings, dispatcher):
    """A producer's per-message TTL must not make the set-aside copy vanish from the invalid queue."""
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        await ch.publish(topo.changes_exchange, "a.b", b"{not json", properties=pika.BasicProperties(
            delivery_mode=2, message_id="ttl-1", expiration="300", content_type="application/json"))
    finally:
        await conn.close()
    got: dict[str, tuple[dict[str, object], bytes]] = {}
    await wait_until(lambda: _count(settings, got, 1), 10, message="the set-aside copy")
    headers, body = got["ttl-1"]
    assert body == b"{not json" and "not JSON" in str(headers["x-hookpost-error"])
    assert headers["hookpost-expiration"] == "300"
