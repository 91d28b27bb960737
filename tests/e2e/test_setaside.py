"""Operators recover what was set aside — ``hookpost invalid list / replay`` and ``hookpost failed list``
against the real broker, with a dispatcher that sets events aside and then, with the cause fixed, delivers them."""

import asyncio
import json
import os
import sys
from pathlib import Path

import pika
from click.testing import CliRunner

from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli
from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import FailedNotice
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from tests.helpers import queue_depth, running_worker, wait_until


def env_for(s: Settings) -> dict[str, str]:
    return {"HOOKPOST_RABBITMQ_URL": s.rabbitmq_url, "HOOKPOST_MONGODB_URL": s.mongodb_url,
            "HOOKPOST_MONGODB_DB": s.mongodb_db, "HOOKPOST_PREFIX": s.prefix,
            "HOOKPOST_MAX_CHANGE_BYTES": str(s.max_change_bytes)}


def invoke(s: Settings, *args: str):
    reset_settings()
    return CliRunner().invoke(cli, list(args), env=env_for(s), catch_exceptions=False)


async def run_cli(s: Settings, *args: str):
    return await asyncio.to_thread(invoke, s, *args)


def change(cid: str, pad: int = 0, data: str | None = None) -> bytes:
    data = data or f'{{"p": "{"x" * pad}"}}'
    return (f'{{"id": "{cid}", "type": "article.updated", "entity": {{"kind": "article", "id": "A-1"}}, '
            f'"data": {data}}}').encode()


async def publish_raw(s: Settings, items: list[tuple[str | None, bytes]]) -> None:
    topo = topology_from(s)
    conn = await AmqpConnection.connect(s.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        for mid, body in items:
            await ch.publish(topo.changes_exchange, "article.updated", body, properties=pika.BasicProperties(
                delivery_mode=2, message_id=mid, content_type="application/json"))
    finally:
        await conn.close()


def listed(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_invalid_list_and_replay(settings_factory, store, new_receiver):
    small = settings_factory(max_change_bytes=400)
    fixed = small.model_copy(update={"max_change_bytes": 65536})
    rec = await new_receiver([200])
    from hookpost.store import Store
    st = Store.connect(small.mongodb_url, small.mongodb_db)
    await st.ensure_indexes()
    await st.webhooks.create(rec.url, ["*"])
    await st.close()
    topo = topology_from(small)
    bodies = {"big-1": change("big-1", pad=500), "nan-1": change("nan-1", data='{"x": NaN}'),
              None: b"{oops", "big-2": change("big-2", pad=450)}
    async with running_worker(small):
        await publish_raw(small, list(bodies.items()))
        await wait_until(lambda: _depth(small, 4),
                         20, message="4 set aside")

    # list: every one, oldest first, with reason, time and excerpt; nothing removed (twice: same order)
    first = listed(await run_cli(small, "invalid", "list", "--json"))
    again = listed(await run_cli(small, "invalid", "list", "--json"))
    assert [i["id"] for i in first] == [i["id"] for i in again]
    keys = [i["id"] for i in first]
    assert keys[:2] == ["big-1", "nan-1"] and keys[2].startswith("sha256:") and keys[3] == "big-2"
    reasons = {i["id"]: i["reason"] for i in first}
    assert reasons["big-1"].startswith("too large") and "NaN is not JSON" in reasons["nan-1"]
    assert "not JSON" in reasons[keys[2]]
    assert all(i["set_aside_at"] and i["routing_key"] == "article.updated" for i in first)
    assert first[0]["excerpt"].startswith('{"id": "big-1"') and first[0]["bytes"] == len(bodies["big-1"])
    assert await queue_depth(small, topo.invalid_queue) == 4
    text = await run_cli(small, "invalid", "list", "--limit", "2")
    assert text.exit_code == 0 and "big-1" in text.stdout and "big-2" not in text.stdout
    assert "2 of 4 messages" in text.stderr

    # the cause is not fixed yet: replay keeps it, says why, exits 1
    res = await run_cli(small, "invalid", "replay", "--id", "big-1")
    assert res.exit_code == 1 and "still invalid: too large" in res.stderr
    assert await queue_depth(small, topo.invalid_queue) == 4

    # unroutable (the changes queue and the change log unbound): not confirmed, so nothing leaves the invalid queue
    # (with the change log bound the copy would be routed, and kept there for a replay)
    conn = await AmqpConnection.connect(small.rabbitmq_urls)
    ch = await conn.channel()
    await ch._rpc(ch._ch.queue_unbind, queue=topo.changes_queue, exchange=topo.changes_exchange, routing_key="#")
    await ch._rpc(ch._ch.queue_unbind, queue=topo.change_log, exchange=topo.changes_exchange, routing_key="#")
    res = await run_cli(fixed, "invalid", "replay", "--id", "big-1")
    assert res.exit_code == 1 and "not confirmed" in res.stderr and "not routed" in res.stderr
    assert await queue_depth(small, topo.invalid_queue) == 4
    await ch._rpc(ch._ch.queue_bind, queue=topo.changes_queue, exchange=topo.changes_exchange, routing_key="#")
    await ch._rpc(ch._ch.queue_bind, queue=topo.change_log, exchange=topo.changes_exchange, routing_key="#")
    await conn.close()

    async with running_worker(fixed):  # the cause fixed: a bigger HOOKPOST_MAX_CHANGE_BYTES
        res = await run_cli(fixed, "invalid", "replay", "--id", "big-1", "--dry-run")
        assert res.exit_code == 0 and "would replay big-1" in res.stdout
        assert await queue_depth(small, topo.invalid_queue) == 4

        res = await run_cli(fixed, "invalid", "replay", "--id", "big-1", "--id", "nope")
        assert res.exit_code == 1 and "replayed big-1" in res.stdout and "not in" in res.stderr and "nope" in res.stderr
        await wait_until(lambda: {r.json["data"]["change_id"] for r in rec.requests} == {"big-1"}, 15,
                         message="big-1 delivered")

        res = await run_cli(fixed, "invalid", "replay", "--all", "--json")
        report = json.loads(res.stdout)
        assert res.exit_code == 0 and report["replayed"] == ["big-2"] and report["kept"] == 2
        assert {r["id"] for r in report["still_invalid"]} == {"nan-1", keys[2]}
        await wait_until(lambda: {r.json["data"]["change_id"] for r in rec.requests} == {"big-1", "big-2"}, 15,
                         message="big-2 delivered")
        left = listed(await run_cli(fixed, "invalid", "list", "--json"))
        assert [i["id"] for i in left] == ["nan-1", keys[2]]  # order kept

        # --force sends them anyway; the dispatcher sets them aside again, counted
        res = await run_cli(fixed, "invalid", "replay", "--all", "--force")
        assert res.exit_code == 0 and "replayed 2, kept 0" in res.stdout
        await wait_until(lambda: _depth(fixed, 2), 15, message="set aside again")
        again = listed(await run_cli(fixed, "invalid", "list", "--json"))
        assert sorted(i["id"] for i in again) == sorted(["nan-1", keys[2]])
        assert all(i["replays"] == 1 and "not JSON" in i["reason"] for i in again)
    assert len(rec.requests) == 2


async def _depth(s: Settings, n: int) -> bool:
    return await queue_depth(s, topology_from(s).invalid_queue) == n


async def test_failed_list_and_bad_input(settings):
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        await ch.declare(topo)
        notice = FailedNotice(event_id="evt_1", webhook_id="wh_1", type="a.b", attempts=10, last_status_code=503,
                              last_error="gave up after 10 attempts: HTTP 503")
        await ch.publish(topo.dead_exchange, "failed", notice.model_dump_json().encode(), message_id="evt_1")
    finally:
        await conn.close()
    res = await run_cli(settings, "failed", "list", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["event_id"] == "evt_1"
    res = await run_cli(settings, "failed", "list")
    assert res.exit_code == 0 and "evt_1" in res.stdout and "HTTP 503" in res.stdout
    assert await queue_depth(settings, topo.failed_queue) == 1
    res = await run_cli(settings, "invalid", "list")
    assert res.exit_code == 0 and res.stdout.startswith("ID")

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **env_for(settings)}
    for args, code, text in [(["invalid", "replay"], 2, "give --id ID"),
                             (["invalid", "replay", "--all", "--id", "x"], 2, "give --id ID"),
                             (["invalid", "list", "--limit", "0"], 2, "--limit must be at least 1"),
                             (["invalid", "replay", "--id", "nope"], 1, "not in")]:
        proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        lines = err.decode().strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and text in lines[0], (args, proc.returncode, lines)


async def test_replay_without_a_changes_exchange_removes_nothing(settings):
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        await ch.declare(topo)
        for cid in ("r-1", "r-2"):
            await ch.publish(topo.dead_exchange, "invalid", change(cid), message_id=cid,
                             headers={"x-hookpost-error": "too large", "hookpost-routing-key": "article.updated"})
        await ch._rpc(ch._ch.exchange_delete, exchange=topo.changes_exchange)
        res = await run_cli(settings, "invalid", "replay", "--all")
        assert res.exit_code == 1 and "kept r-1: not confirmed" in res.stderr and "NOT_FOUND" in res.stderr
        await wait_until(lambda: _depth(settings, 2), 10, message="both still set aside")
        await ch.declare(topo)
        res = await run_cli(settings, "invalid", "replay", "--all")
        assert res.exit_code == 0 and "replayed 2, kept 0" in res.stdout
        assert await queue_depth(settings, topo.invalid_queue) == 0
        assert await queue_depth(settings, topo.changes_queue) == 2
    finally:
        await conn.close()


async def test_scans_are_capped(settings):
    from hookpost.producer.setaside import SetAsideQueues

    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        await ch.declare(topo)
        for i in range(5):
            await ch.publish(topo.dead_exchange, "invalid", change(f"cap-{i}"), message_id=f"cap-{i}",
                             headers={"x-hookpost-error": "too large"})
    finally:
        await conn.close()
    queues = await SetAsideQueues.connect(settings)
    try:
        queues.scan_limit = 3
        items, total = await queues.list_invalid(limit=10)
        assert [i.key for i in items] == ["cap-0", "cap-1", "cap-2"] and total == 5 and queues.truncated
        queues.truncated = False
        queues.scan_limit, queues.scan_bytes = 100, len(change("cap-0")) * 2  # bytes: stops after two
        report = await queues.replay(everything=True, dry_run=True)
        assert report.replayed == ["cap-3", "cap-4"] and report.truncated  # the scanned head moved behind
        assert await queue_depth(settings, topo.invalid_queue) == 5
    finally:
        await queues.close()
