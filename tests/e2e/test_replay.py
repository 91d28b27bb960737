"""Replaying what a webhook missed, end to end: the change log (a real stream), fan-out, the CLI and a receiver."""

import asyncio
import json

from click.testing import CliRunner

from hookpost.admin.core import Admin
from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli
from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity, EventStatus, Ordering
from hookpost.common.records import ReplayRequest
from hookpost.producer import Publisher
from hookpost.store.events import EventFilter
from tests.e2e.test_cli import env_for, run_cli
from tests.helpers import running_worker, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def consumed(worker) -> float:  # type: ignore[no-untyped-def]
    return worker.metrics.changes_consumed.labels("ok")._value.get()


def article(cid: str, seq: int) -> ChangeEvent:
    return ChangeEvent(id=cid, type="article.updated", entity=Entity(kind="article", id="A-1"), sequence=seq)


async def test_changes_missed_while_disabled_are_counted_then_replayed_in_order(stores, new_receiver):
    settings, st = await stores(order_settle="50ms")
    rec = await new_receiver([200])
    hook = await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    async with Admin.open(settings) as admin, Publisher.from_settings(settings) as pub:
        async with running_worker(settings) as worker:
            await pub.publish(article("c1", 1))
            await wait_until(lambda: len(rec.requests) == 1, message="c1 delivered while enabled")
            await admin.webhooks.set_active(hook.id, False, actor="test")
            worker.cache.invalidate()
            missed = [article(f"c{i}", i) for i in range(2, 6)]
            await pub.publish_many([*missed, ChangeEvent(id="o1", type="order.created",
                                                         entity=Entity(kind="order", id="O-1"))])
            conn = await AmqpConnection.connect(settings.rabbitmq_urls)  # one published in a caller's trace
            ch = await conn.channel(confirms=True)
            body = article("c6", 6).model_dump_json().encode()
            await ch.publish(f"{settings.prefix}.changes", "article.updated", body, message_id="c6",
                             headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
            await conn.close()
            await wait_until(lambda: consumed(worker) == 7, message="fan-out saw every change")
            assert await st.events.count({}) == 1  # nothing recorded for the disabled webhook

            await admin.webhooks.set_active(hook.id, True, actor="test")
            worker.cache.invalidate()
            dry = await admin.replays.run(hook.id, ReplayRequest(since="10m", dry_run=True), actor="test")
            assert (dry.logged, dry.matched, dry.already, dry.replayed) == (7, 6, 1, 5)
            assert len(rec.requests) == 1

            cli = await run_cli(settings, "webhooks", "replay", hook.id, "--since", "10m", "--dry-run", "--json")
            assert cli.exit_code == 0, cli.output
            assert json.loads(cli.stdout)["replayed"] == 5

            done = await admin.replays.run(hook.id, ReplayRequest(since="10m"), actor="test")
            assert done.replayed == 5 and not done.dry_run
            await wait_until(lambda: len(rec.requests) == 6, message="the missed changes delivered")
            again = await admin.replays.run(hook.id, ReplayRequest(since="10m", dry_run=True), actor="test")
            assert again.replayed == 0 and again.already == 6
        events = await st.events.find(EventFilter(), limit=20)
    assert [r.json["data"]["sequence"] for r in rec.requests] == [1, 2, 3, 4, 5, 6]
    # a replayed change stays in the trace it was published in
    assert rec.requests[-1].headers["traceparent"].split("-")[1] == TRACE_ID
    assert len(events) == 6 and all(e.status == EventStatus.FINISHED for e in events)
    assert [a.target for a in await st.audit.list(action="webhook.replayed")] == [hook.id]


async def test_a_replay_without_a_change_log_says_so(stores):
    settings, st = await stores(change_log_retention="0")
    hook = await st.webhooks.create("http://127.0.0.1:9/x", ["article.*"])
    reset_settings()
    out = await asyncio.to_thread(CliRunner().invoke, cli, ["webhooks", "replay", hook.id, "--since", "1h",
                                                          "--dry-run"],
                                  env={**env_for(settings), "HOOKPOST_CHANGE_LOG_RETENTION": "0"})
    assert out.exit_code != 0
    assert "HOOKPOST_CHANGE_LOG_RETENTION is 0" in out.output and "Traceback" not in out.output
