"""The event-type catalog end to end, through the real broker, the real store and real HTTP: types seen by fan-out
are counted once flushed; an enforced schema sets a bad change aside with a useful reason while a good one is
delivered, and a replay checks the schema of the moment; the CLI warns about a typo; the catalog survives a restart
of the store, the dispatcher and the server."""

import asyncio
import json
from pathlib import Path

import aiohttp
import pika
import pytest
from click.testing import CliRunner

from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli
from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.records import Role
from hookpost.common.settings import Settings
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer
from tests.helpers import drain_queue, queue_depth, running_worker, wait_until

ROOT = Path(__file__).resolve().parents[2]
ORDER_SCHEMA = ROOT / "bench" / "schemas" / "order-created.json"
GOOD_ORDER = {"order_number": "SO-000123", "status": "paid", "currency": "EUR", "total": 12.5,
              "created_at": "2026-12-07T12:00:00Z", "customer": {"id": "C-1", "email": "a@example.com"},
              "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 12.5}]}


def env_for(s: Settings) -> dict[str, str]:
    return {"HOOKPOST_RABBITMQ_URL": s.rabbitmq_url, "HOOKPOST_MONGODB_URL": s.mongodb_url,
            "HOOKPOST_MONGODB_DB": s.mongodb_db, "HOOKPOST_PREFIX": s.prefix, "HOOKPOST_ALLOW_PRIVATE_TARGETS": "1"}


async def run_cli(s: Settings, *args: str):  # type: ignore[no-untyped-def]
    def invoke():  # type: ignore[no-untyped-def]
        reset_settings()
        return CliRunner().invoke(cli, list(args), env=env_for(s), catch_exceptions=False)
    return await asyncio.to_thread(invoke)


def change(cid: str, type_: str, data: dict | None = None) -> ChangeEvent:
    return ChangeEvent(id=cid, type=type_, entity=Entity(kind="order", id="O-1"), data=data)


async def publish_raw(s: Settings, changes: list[ChangeEvent]) -> None:
    """Publish as any AMQP producer can: straight to the changes exchange, no check at the door."""
    topo = topology_from(s)
    conn = await AmqpConnection.connect(s.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        for c in changes:
            props = pika.BasicProperties(delivery_mode=2, message_id=c.id, content_type="application/json")
            await ch.publish(topo.changes_exchange, c.type, c.model_dump_json().encode(), properties=props)
    finally:
        await conn.close()


async def catalog_of(s: Settings) -> dict[str, dict]:
    result = await run_cli(s, "event-types", "list", "--json")
    assert result.exit_code == 0, result.output
    return {t["name"]: t for t in json.loads(result.stdout)}


async def test_types_seen_by_fan_out_appear_with_their_counts_once_flushed(settings_factory, new_receiver):
    s = settings_factory(catalog_flush_interval="200ms")
    rec = await new_receiver([200])
    st = Store.connect(s.mongodb_url, s.mongodb_db)
    await st.ensure_indexes()
    await st.webhooks.create(rec.url, ["order.*"])
    await st.close()
    async with running_worker(s), Publisher.from_settings(s) as pub:
        for i in range(25):
            await pub.publish(change(f"o-{i}", "order.created"))
        for i in range(4):
            await pub.publish(change(f"p-{i}", "payment.failed"))  # no subscriber: counted all the same
        await wait_until(lambda: len(rec.requests) >= 25, 30, message="25 deliveries")
        found = await wait_until(
            lambda: _counts_reach(s, {"order.created": 25, "payment.failed": 4}), 20, message="counts flushed")
    order = found["order.created"]
    assert order["count"] >= 25 and order["title"] == "" and order["declared"] is False
    assert order["first_seen"] is not None and order["first_seen"] <= order["last_seen"]
    assert found["payment.failed"]["count"] >= 4


async def _counts_reach(s: Settings, wanted: dict[str, int]) -> dict[str, dict] | None:
    found = await catalog_of(s)
    ok = all(found.get(name, {}).get("count", 0) >= n for name, n in wanted.items())
    return found if ok else None


async def test_an_enforced_schema_sets_a_bad_change_aside_with_its_reason_and_delivers_a_good_one(
        settings_factory, new_receiver):
    s = settings_factory()
    rec = await new_receiver([200])
    declared = await run_cli(s, "event-types", "declare", "order.created", "--title", "Order created", "--schema",
                             str(ORDER_SCHEMA), "--enforce")
    assert declared.exit_code == 0, declared.output
    made = await run_cli(s, "webhooks", "create", "--url", rec.url, "--event", "order.created")
    assert made.exit_code == 0, made.output
    async with running_worker(s):
        await publish_raw(s, [change("bad-1", "order.created", {**GOOD_ORDER, "total": -3}),
                              change("good-1", "order.created", GOOD_ORDER)])
        await wait_until(lambda: len(rec.requests) >= 1, 20, message="the good change delivered")
        await wait_until(lambda: queue_depth(s, topology_from(s).invalid_queue), 20, message="the bad one set aside")
        assert [r.json["data"]["change_id"] for r in rec.requests] == ["good-1"]
        listed = await run_cli(s, "invalid", "list", "--json")
        [item] = json.loads(listed.stdout)
        assert "contract of order.created" in item["reason"]
        assert "at $.data.total" in item["reason"] and "'minimum'" in item["reason"]

        # replayed while the schema still holds: fan-out checks it again and sets it aside again
        again = await run_cli(s, "invalid", "replay", "--all")
        assert again.exit_code == 0, again.output
        await wait_until(lambda: queue_depth(s, topology_from(s).invalid_queue), 20, message="set aside again")
        assert len(rec.requests) == 1

        # enforcement removed: the replay goes through fan-out again and is delivered
        off = await run_cli(s, "event-types", "update", "order.created", "--no-enforce")
        assert off.exit_code == 0, off.output
        # the dispatcher's cache follows within its TTL (200 ms in the tests): replay until it has
        await wait_until(lambda: _replayed_and_delivered(s, rec), 20, interval=0.5, message="the replay delivered")
    assert sorted(r.json["data"]["change_id"] for r in rec.requests) == ["bad-1", "good-1"]
    assert rec.requests[-1].json["data"]["details"]["total"] == -3


async def _replayed_and_delivered(s: Settings, rec) -> bool:  # type: ignore[no-untyped-def]
    if await queue_depth(s, topology_from(s).invalid_queue):
        await run_cli(s, "invalid", "replay", "--all")  # until the dispatcher's cache has the new declaration
    return len(rec.requests) >= 2


async def test_the_cli_warns_in_one_line_about_a_pattern_that_matches_no_known_type(settings_factory):
    s = settings_factory()
    assert (await run_cli(s, "event-types", "declare", "article.updated", "--title", "Article updated")).exit_code == 0
    typo = await run_cli(s, "webhooks", "create", "--url", "http://127.0.0.1:9/hook", "--event", "artcle.*")
    assert typo.exit_code == 0, typo.output
    warnings = [line for line in typo.stderr.splitlines() if line.startswith("hookpost: warning:")]
    assert warnings == ["hookpost: warning: 'artcle.*' matches no known event type (declared, or seen in the last "
                        "30 days): check for a typo"]
    hook_id = typo.stdout.strip()
    fixed = await run_cli(s, "webhooks", "update", hook_id, "--event", "article.*")
    assert fixed.exit_code == 0 and "warning" not in fixed.stderr
    wrong = await run_cli(s, "webhooks", "update", hook_id, "--event", "article.updatd")
    assert wrong.exit_code == 0 and wrong.stderr.count("hookpost: warning:") == 1


@pytest.fixture
def private_mongo(tmp_path):  # type: ignore[no-untyped-def]
    """A store of this test's own, to stop and start again on the same data (stopped after the test's cleanup)."""
    holder = {"server": LocalMongo(tmp_path / "mongo")}
    holder["server"].start()
    yield holder
    holder["server"].stop()


async def test_the_catalog_survives_a_restart_of_the_store_the_dispatcher_and_the_server(
        private_mongo, settings_factory, new_receiver):
    mongo = private_mongo["server"]
    s = settings_factory(mongodb_url=mongo.url, catalog_flush_interval="1h")  # only the graceful stop flushes
    rec = await new_receiver([200])
    async with _server(s) as (base, token):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            resp = await http.post(f"{base}/event-types", json={
                "name": "order.created", "title": "Order created", "enforce": True,
                "schema": json.loads(ORDER_SCHEMA.read_text())})
            assert resp.status == 201, await resp.text()
            resp = await http.post(f"{base}/webhooks", json={"url": rec.url, "event_types": ["order.*"]})
            assert resp.status == 201 and (await resp.json())["warnings"] == []
        async with running_worker(s):
            await publish_raw(s, [change(f"g-{i}", "order.created", GOOD_ORDER) for i in range(6)])
            await wait_until(lambda: len(rec.requests) >= 6, 20, message="6 deliveries")

    mongo.stop()
    mongo = private_mongo["server"] = LocalMongo(mongo.folder, port=mongo.port)  # the same data, a new process
    mongo.start()
    async with _server(s) as (base, token):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(f"{base}/event-types/order.created") as resp:
                body = await resp.json()
            assert resp.status == 200, body
            assert body["title"] == "Order created" and body["enforce"] is True and body["count"] >= 6
            assert body["schema"] == json.loads(ORDER_SCHEMA.read_text())
            bad = change("bad-after", "order.created", {**GOOD_ORDER, "currency": "euro"})
            async with http.post(f"{base}/changes", json=bad.model_dump(mode="json")) as resp:
                problem = await resp.json()
            assert resp.status == 422 and problem["field"] == "$.data.currency", problem
        async with running_worker(s):
            await publish_raw(s, [change("bad-raw", "order.created", {**GOOD_ORDER, "lines": []})])
            await wait_until(lambda: queue_depth(s, topology_from(s).invalid_queue), 20, message="set aside")
        [(headers, _)] = await drain_queue(s, topology_from(s).invalid_queue)
        assert "$.data.lines" in headers["x-hookpost-error"] and "minItems" in headers["x-hookpost-error"]


class _server:
    """``hookpost server`` on a free port with an admin token (an async context manager)."""

    def __init__(self, s: Settings) -> None:
        self.server = ApiServer(s, host="127.0.0.1", port=0)

    async def __aenter__(self) -> tuple[str, str]:
        await self.server.start()
        admin = self.server.app[ADMIN_KEY]
        made = await admin.tokens.create(f"catalog-{id(self)}", Role.ADMIN, actor="test")
        return self.server.url + "/api/v1", made.token

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()
