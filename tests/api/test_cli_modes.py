"""The operator commands in both modes: directly, and in API mode through a server on a real port (with the
lowest role that may run each command, and a refusal for a role below it). In API mode the CLI's MongoDB and
RabbitMQ addresses reach nothing, so every result came through the API."""

import json
from datetime import UTC, datetime

import pika
import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import EventStatus
from hookpost.common.topology import topology_from
from hookpost.web.api_broker import BROKER_KEY
from tests.api.cli_modes import Cli, cli_fixture  # noqa: F401 (the fixture 'cli')
from tests.api.conftest import declare_topology, make_api
from tests.helpers import queue_depth, wait_until
from tests.seed import insert, make_events


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result.stdout


def refused(cli: Cli, result, needs: str) -> None:  # type: ignore[no-untyped-def]
    """A role below ``needs`` gets one line naming the server, and exit 1."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("hookpost: error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1], result.stderr
    assert errors[0].startswith(f"hookpost: error: {cli.api.server.url}: forbidden: role "), errors  # type: ignore
    assert f"needs {needs}" in errors[0], errors


async def test_webhook_commands(cli: Cli, store):
    res = await cli("webhooks", "create", "--url", "http://127.0.0.1:9/x", "--event", "article.*",
                    "--description", "pim", "--json", role="admin")
    made = json.loads(ok(res))
    hook_id = made["id"]
    assert made["secret"] == (await store.webhooks.get(hook_id)).secret and made["description"] == "pim"
    text = await cli("webhooks", "create", "--url", "http://127.0.0.1:9/y", "--event", "order.*", role="admin")
    second = ok(text).strip()
    assert second.startswith("wh_") and "signing secret: whsec_" in text.stderr

    listed = json.loads(ok(await cli("webhooks", "list", "--json")))
    assert [h["id"] for h in listed] == [hook_id, second] and "secret" not in listed[0]
    table = ok(await cli("webhooks", "list"))
    assert table.splitlines()[0].split() == ["ID", "URL", "EVENTS", "STATUS", "ORDERING", "SUCCESS", "DESCRIPTION"]
    assert hook_id in table and "whsec_" not in table
    shown = json.loads(ok(await cli("webhooks", "show", hook_id, "--json")))
    assert shown["event_types"] == ["article.*"] and shown["health"] == "healthy"
    assert "url:" in ok(await cli("webhooks", "show", hook_id))

    ok(await cli("webhooks", "update", hook_id, "--event", "order.*", "--description", "erp", role="admin"))
    hook = await store.webhooks.get(hook_id)
    assert hook.event_types == ["order.*"] and hook.description == "erp"
    assert "disabled" in ok(await cli("webhooks", "disable", hook_id, role="admin"))
    assert (await store.webhooks.get(hook_id)).active is False
    ok(await cli("webhooks", "enable", hook_id, role="admin"))
    assert (await store.webhooks.get(hook_id)).active is True
    assert ok(await cli("webhooks", "secret", hook_id, role="admin")).strip() == hook.secret
    rotated = ok(await cli("webhooks", "rotate-secret", hook_id, "--grace", "1h", role="admin")).strip()
    after = await store.webhooks.get(hook_id)
    assert rotated == after.secret != hook.secret and after.previous_secret == hook.secret
    ok(await cli("webhooks", "delete", hook_id, "--yes", role="admin"))
    gone = await cli("webhooks", "show", hook_id)
    assert gone.exit_code == 1 and f"no webhook '{hook_id}'" in gone.stderr

    if cli.is_api:  # a viewer may read webhooks but not change them
        refused(cli, await cli("webhooks", "delete", second, "--yes", role="viewer"), "admin")
        refused(cli, await cli("webhooks", "secret", second, role="operator"), "admin")
        assert await store.webhooks.get(second)
    audit = json.loads(ok(await cli("audit", "list", "--json", "--action", "webhook.secret_revealed")))
    assert [e["actor"] for e in audit] == [cli.actor("admin")]


@pytest.fixture
async def seeded(store):  # type: ignore[no-untyped-def]
    hooks = [await store.webhooks.create(f"http://127.0.0.1:9/h{i}", ["*"]) for i in range(2)]
    events = make_events(1500, [h.id for h in hooks], now=datetime.now(UTC))
    await insert(store, events)
    return hooks, events


async def test_events_list_show_and_stats(cli: Cli, seeded):
    hooks, events = seeded
    ended = (EventStatus.FAILED, EventStatus.FINISHED)
    failed = [e.id for e in sorted(events, key=lambda e: e.id, reverse=True) if e.status in ended]
    assert len(failed) > 600  # more than one page of the API
    two = ["--status", "failed", "--status", "FINISHED"]
    got = json.loads(ok(await cli("events", "list", "--json", *two, "--limit", "10000")))
    assert [e["id"] for e in got] == failed
    page = await cli("events", "list", "--json", *two, "--limit", "600")
    assert [e["id"] for e in json.loads(ok(page))] == failed[:600]
    assert f"more: --before {failed[599]}" in page.stderr
    nxt = json.loads(ok(await cli("events", "list", "--json", *two, "--before", failed[599])))
    assert [e["id"] for e in nxt] == failed[600:650]
    some = {e["id"] for e in json.loads(ok(await cli("events", "list", "--json", "--webhook", hooks[1].id,
                                                      "--type", "article.*", "--since", "3d", "--limit", "10000")))}
    assert some and all(e.webhook_id == hooks[1].id for e in events if e.id in some)

    table = ok(await cli("events", "list", "--limit", "3")).splitlines()
    assert table[0].split() == ["ID", "TYPE", "ENTITY", "WEBHOOK", "STATUS", "ATTEMPTS", "LAST", "AGE"]
    assert len(table) == 4 and table[1].startswith(events[-1].id)

    shown = json.loads(ok(await cli("events", "show", events[5].id, "--json")))
    assert shown["id"] == events[5].id and shown["payload"] == events[5].payload and shown["attempts"] == []
    assert f"id:               {events[5].id}" in ok(await cli("events", "show", events[5].id))
    missing = await cli("events", "show", "evt_doesnotexist")
    assert missing.exit_code == 1 and "no event 'evt_doesnotexist'" in missing.stderr

    stats = json.loads(ok(await cli("events", "stats", "--json")))
    for status in EventStatus:
        assert stats["by_status"][status.value] == sum(1 for e in events if e.status == status)
    assert stats["total"] == 1500
    assert "oldest Retrying:" in ok(await cli("events", "stats", "--since", "30d"))

    bad = await cli("events", "list", "--status", "done")
    assert bad.exit_code == 2 and "unknown status 'done'" in bad.stderr


async def test_restart_by_id_and_in_bulk(cli: Cli, settings, store):
    await declare_topology(settings)
    hook = await store.webhooks.create("http://127.0.0.1:9/h", ["*"])
    other = await store.webhooks.create("http://127.0.0.1:9/o", ["*"])
    events = make_events(600, [hook.id, other.id], now=datetime.now(UTC))
    await insert(store, events)
    target = [e.id for e in events if e.status == EventStatus.FAILED and e.webhook_id == hook.id]
    fin = next(e for e in events if e.status == EventStatus.FINISHED)
    deliver = f"{settings.prefix}.deliver"

    if cli.is_api:
        refused(cli, await cli("events", "restart", target[0], role="viewer"), "operator")
        assert (await store.events.get(target[0])).status == EventStatus.FAILED

    res = await cli("events", "restart", target[0], fin.id, role="operator")
    assert ok(res).startswith("restarted 1, skipped 1") and "use --force" in res.stdout
    assert "1 of 2 matching events can be restarted" in res.stderr
    assert (await store.events.get(target[0])).status == EventStatus.NEW
    assert await queue_depth(settings, deliver) == 1

    args = ["events", "restart", "--status", "failed", "--webhook", hook.id]
    dry = await cli(*args, "--dry-run", role="operator")
    assert f"dry run: would restart {len(target) - 1}, skip 0" in ok(dry)
    no = await cli(*args, role="operator", input="n\n")
    assert no.exit_code == 1 and await store.events.count({"webhook_id": hook.id, "status": "Failed"}) \
        == len(target) - 1
    res = await cli(*args, "--yes", role="operator")
    assert f"restarted {len(target) - 1}, skipped 0" in ok(res)
    if cli.is_api:
        assert "restart job job_" in res.stderr  # the server ran it as a job, watched to its end
    assert await store.events.count({"_id": {"$in": target}, "status": "New"}) == len(target)
    assert await queue_depth(settings, deliver) == len(target)
    assert await store.events.count({"webhook_id": other.id, "status": "New"}) == sum(
        1 for e in events if e.webhook_id == other.id and e.status == EventStatus.NEW)
    audit = json.loads(ok(await cli("audit", "list", "--json", "--action", "events.restarted")))
    assert {e["actor"] for e in audit} == {cli.actor("operator")}
    assert audit[0]["details"]["restarted"] == len(target) - 1 and audit[0]["details"]["filter"] == {
        "status": ["Failed"], "webhook_id": hook.id}
    # by id: one entry directly; through the API one per event (POST /events/{id}/restart)
    assert sum(e["details"]["restarted"] for e in audit[1:]) == 1 and len(audit) == (3 if cli.is_api else 2)
    again = await cli(*args, "--yes", role="operator")  # nothing left to restart: no job, no audit entry
    assert ok(again).startswith("restarted 0, skipped 0") and "job" not in again.stderr
    assert len(json.loads(ok(await cli("audit", "list", "--json", "--action", "events.restarted")))) == len(audit)


async def test_publish(cli: Cli, settings):
    await declare_topology(settings)
    role = "publisher" if cli.is_api else "admin"
    out = ok(await cli("publish", "article.updated", "--entity-kind", "article", "--entity-id", "A-1",
                       "--data", '{"fields": ["price"]}', "--id", "chg-modes-1", role=role))
    assert out.strip() == "chg-modes-1"
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        msg = await (await conn.channel()).get(topo.changes_queue)
        assert msg is not None and json.loads(msg.body)["id"] == "chg-modes-1"
        assert json.loads(msg.body)["data"] == {"fields": ["price"]}
        msg.ack()
    finally:
        await conn.close()
    bad = await cli("publish", "a.b", "--entity-kind", "a", "--entity-id", "1", "--data", "{nope", role=role)
    assert bad.exit_code == 2 and "--data is not JSON" in bad.stderr
    if cli.is_api:
        refused(cli, await cli("publish", "a.b", "--entity-kind", "a", "--entity-id", "1", role="operator"),
                "publisher")


async def test_tokens_and_audit(cli: Cli, store):
    made = json.loads(ok(await cli("tokens", "create", "--name", "bot", "--role", "viewer", "--json",
                                   role="admin")))
    assert made["token"].startswith("hp_") and made["record"]["role"] == "viewer"
    listed = json.loads(ok(await cli("tokens", "list", "--json", role="admin")))
    assert made["record"]["id"] in [t["id"] for t in listed] and made["token"] not in json.dumps(listed)
    assert "bot" in ok(await cli("tokens", "list", role="admin"))
    assert ok(await cli("tokens", "revoke", made["record"]["id"], role="admin")).strip() == \
        f"revoked {made['record']['id']}"
    assert (await store.tokens.get(made["record"]["id"])).revoked
    missing = await cli("tokens", "revoke", "tok_nope", role="admin")
    assert missing.exit_code == 1 and "no token 'tok_nope'" in missing.stderr

    audit = json.loads(ok(await cli("audit", "list", "--json", "--actor", cli.actor("admin"))))
    assert [(e["action"], e["target"]) for e in audit] == [("token.revoked", made["record"]["id"]),
                                                           ("token.created", made["record"]["id"])]
    assert "token.created" in ok(await cli("audit", "list", "--since", "1h"))
    bad = await cli("audit", "list", "--since", "soon")
    assert bad.exit_code == 2 and "not a time: 'soon'" in bad.stderr
    if cli.is_api:
        refused(cli, await cli("tokens", "list", role="operator"), "admin")


async def _set_aside(settings) -> None:  # type: ignore[no-untyped-def]
    """Put two change events in PREFIX.invalid (one that the door now accepts) and a notice in PREFIX.failed."""
    topo = topology_from(settings)
    conn = await AmqpConnection.connect(settings.rabbitmq_urls)
    try:
        ch = await conn.channel(confirms=True)
        good = b'{"id": "chg-ok", "type": "article.updated", "entity": {"kind": "article", "id": "A-1"}}'
        for mid, body in (("chg-ok", good), ("chg-bad", b"{oops")):
            await ch.publish(topo.dead_exchange, "invalid", body, properties=pika.BasicProperties(
                delivery_mode=2, message_id=mid, content_type="application/json",
                headers={"x-hookpost-error": "test: set aside", "x-hookpost-routing-key": "article.updated"}))
        notice = {"event_id": "evt_1", "webhook_id": "wh_1", "type": "a.b", "attempts": 10, "last_error": "HTTP 503",
                  "failed_at": "2026-01-01T00:00:00+00:00"}
        await ch.publish(topo.dead_exchange, "failed", json.dumps(notice).encode(),
                         properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    finally:
        await conn.close()


async def test_invalid_and_failed(cli: Cli, settings):
    await declare_topology(settings)
    await _set_aside(settings)
    topo = topology_from(settings)
    await wait_until(lambda: queue_depth(settings, topo.invalid_queue), message="set aside")

    listed = json.loads(ok(await cli("invalid", "list", "--json", role="operator")))
    assert [i["id"] for i in listed] == ["chg-ok", "chg-bad"] and listed[0]["reason"] == "test: set aside"
    table = ok(await cli("invalid", "list", "--limit", "1", role="operator"))
    assert "chg-ok" in table and "chg-bad" not in table
    notices = json.loads(ok(await cli("failed", "list", "--json", role="operator")))
    assert [(n["event_id"], n["last_error"]) for n in notices] == [("evt_1", "HTTP 503")]
    assert "evt_1" in ok(await cli("failed", "list", role="operator"))

    dry = await cli("invalid", "replay", "--all", "--dry-run", role="admin")
    assert dry.exit_code == 0 and "would replay chg-ok" in dry.stdout and "still invalid" in dry.stderr
    res = await cli("invalid", "replay", "--id", "chg-ok", "--id", "nope", role="admin")
    assert res.exit_code == 1 and "replayed chg-ok" in res.stdout and "nope" in res.stderr
    assert await queue_depth(settings, topo.invalid_queue) == 1
    assert await queue_depth(settings, topo.changes_queue) == 1  # published again, for fan-out
    bad = await cli("invalid", "list", "--limit", "0", role="operator")
    assert bad.exit_code == 2 and "--limit must be at least 1" in bad.stderr
    if cli.is_api:  # one broker connection in the server, opened again once lost
        broker = cli.api.server.app[BROKER_KEY]  # type: ignore[union-attr]
        first = broker._conn
        assert first is not None and first.is_open
        ok(await cli("failed", "list", role="operator"))
        assert broker._conn is first
        await first.close()
        assert [i["id"] for i in json.loads(ok(await cli("invalid", "list", "--json", role="operator")))] == [
            "chg-bad"]
        assert broker._conn is not first and broker._conn.is_open
        refused(cli, await cli("invalid", "list", role="viewer"), "operator")
        refused(cli, await cli("invalid", "replay", "--all", role="operator"), "admin")
        refused(cli, await cli("failed", "list", role="viewer"), "operator")
        assert await queue_depth(settings, topo.invalid_queue) == 1


async def test_config_shows_the_mode(cli: Cli):
    res = await cli("config", "--json")
    data = json.loads(ok(res))
    if cli.is_api:
        assert data["mode"] == "api" and data["server"] == cli.api.server.url  # type: ignore[union-attr]
        assert data["token"] == "HOOKPOST_API_TOKEN" and data["server_version"] == data["client_version"]
        assert "mode" in ok(await cli("config"))
    else:
        assert "mode: direct" in res.stderr and "prefix" in data


@pytest.mark.parametrize("args", [["dispatcher"], ["janitor", "--once"], ["server"], ["topology", "declare"],
                                  ["demo"], ["events", "reindex"]])
async def test_direct_only_commands_refuse_in_api_mode(settings, args):
    async for api in make_api(settings):
        cli = Cli("api", settings, api)
        res = await cli(*args, role="admin")
        assert res.exit_code == 2, res.output
        line = res.stderr.strip()
        assert "\n" not in line and "does not run in API mode" in line and "HOOKPOST_API_URL" in line, line
        assert (await cli(*args, "--help")).exit_code == 0  # help still works


async def test_webhook_replay(cli: Cli, settings, store):
    from hookpost.common.models import ChangeEvent, Entity
    from hookpost.producer import Publisher

    await declare_topology(settings)
    hook = await store.webhooks.create("http://127.0.0.1:9/r", ["article.*"])
    async with Publisher.from_settings(settings) as pub:  # no dispatcher: the webhook has no event of them
        await pub.publish_many([ChangeEvent(id=f"r{i}", type="article.updated", entity=Entity(kind="article",
                                                                                             id=f"A-{i}"))
                                for i in range(3)])
    topo = topology_from(settings)
    assert await queue_depth(settings, topo.changes_queue) == 3

    dry = json.loads(ok(await cli("webhooks", "replay", hook.id, "--since", "10m", "--dry-run", "--json",
                                  role="admin")))
    assert (dry["logged"], dry["matched"], dry["already"], dry["replayed"], dry["dry_run"]) == (3, 3, 0, 3, True)
    if cli.is_api:
        refused(cli, await cli("webhooks", "replay", hook.id, "--since", "10m", "--yes", role="operator"), "admin")
    res = await cli("webhooks", "replay", hook.id, "--since", "10m", "--yes", role="admin")
    assert ok(res).splitlines() == ["3 change(s) logged in the window; 3 of this webhook's types; 0 it already "
                                    "has; 3 to replay", f"replayed 3 change(s) to {hook.id}"]
    assert ("replay job job_" in res.stderr) == cli.is_api

    async def six() -> bool:
        return await queue_depth(settings, topo.changes_queue) == 6

    await wait_until(six, message="three changes published again, for fan-out")
    audit = json.loads(ok(await cli("audit", "list", "--json", "--action", "webhook.replayed")))
    assert [(e["actor"], e["target"]) for e in audit] == [(cli.actor("admin"), hook.id)]
