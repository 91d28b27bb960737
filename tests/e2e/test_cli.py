"""The operator CLI against the real store and broker, through click's runner and as a subprocess; the command
tests run in both modes (the ``cli`` fixture): directly, and in API mode through a server on a real port with
the lowest role that may run each command."""

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from hookpost.cli.base import reset_settings
from hookpost.cli.main import cli
from hookpost.common.matching import type_matches
from hookpost.common.models import EventStatus
from tests.api.cli_modes import cli_fixture  # noqa: F401 (the fixture 'cli')
from tests.helpers import running_worker, wait_until
from tests.seed import insert, make_events


def env_for(s) -> dict[str, str]:
    return {"HOOKPOST_RABBITMQ_URL": s.rabbitmq_url, "HOOKPOST_MONGODB_URL": s.mongodb_url,
            "HOOKPOST_MONGODB_DB": s.mongodb_db, "HOOKPOST_PREFIX": s.prefix, "HOOKPOST_MAX_ATTEMPTS": "10",
            "HOOKPOST_RETRY_DELAYS": "50ms,100ms,150ms,200ms,250ms,300ms,350ms,400ms,450ms",
            "HOOKPOST_ALLOW_PRIVATE_TARGETS": "true"}


def invoke(s, *args: str, input: str | None = None):
    reset_settings()
    return CliRunner().invoke(cli, list(args), env=env_for(s), input=input, catch_exceptions=False)


async def run_cli(s, *args: str, input: str | None = None):
    """Invoke the CLI in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(invoke, s, *args, input=input)


async def run_subprocess(s, *args: str) -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **env_for(s)}
    proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def seeded(settings, store):
    hooks = [await store.webhooks.create(f"http://127.0.0.1:9/h{i}", ["*"]) for i in range(3)]
    now = datetime.now(UTC)
    events = make_events(3000, [h.id for h in hooks], now=now)
    await insert(store, events)
    return hooks, events, now


def ids(result) -> set[str]:
    assert result.exit_code == 0, result.output
    return {e["id"] for e in json.loads(result.stdout)}


async def test_each_filter_alone_and_combined(cli, seeded):
    hooks, events, now = seeded
    day3 = now - timedelta(days=3)
    day5 = now - timedelta(days=5, hours=1)
    cases = [
        (["--status", "failed"], lambda e: e.status == EventStatus.FAILED),
        (["--status", "New", "--status", "RETRYING"], lambda e: e.status in (EventStatus.NEW, EventStatus.RETRYING)),
        (["--type", "article.*"], lambda e: type_matches("article.*", e.type)),
        (["--type", "order.created"], lambda e: e.type == "order.created"),
        (["--webhook", hooks[1].id], lambda e: e.webhook_id == hooks[1].id),
        (["--entity", "E-7"], lambda e: e.entity.id == "E-7"),
        (["--since", "3d"], lambda e: e.created_at >= day3 - timedelta(seconds=5)),
        (["--until", day3.isoformat()], lambda e: e.created_at < day3),
        (["--search", "timeout"], lambda e: "timeout" in (e.last_error or "").lower()),
        (["--search", "TimeOut"], lambda e: "timeout" in (e.last_error or "").lower()),  # error kinds: any case
        (["--search", "chg-42"], lambda e: e.change_id == "chg-42"),  # ids: exact
        (["--search", "chg-42*"], lambda e: e.change_id.startswith("chg-42")),  # or by prefix
        (["--search", events[42].id], lambda e: e.id == events[42].id),
        (["--status", "failed", "--type", "article.*", "--webhook", hooks[0].id, "--since", day5.isoformat()],
         lambda e: e.status == EventStatus.FAILED and e.type.startswith("article.") and e.webhook_id == hooks[0].id
         and e.created_at >= day5),
    ]
    for args, pred in cases:
        got = ids(await cli("events", "list", "--json", "--limit", "10000", *args))
        expected = {e.id for e in events if pred(e)}
        if args[:2] == ["--since", "3d"]:  # the boundary moves while the test runs: allow a few seconds
            assert expected - got == set() or len(expected ^ got) <= 2, args
        else:
            assert got == expected, args
        assert got, f"filter {args} matched nothing: the seed should cover it"


async def test_paging_visits_every_event_once(cli, seeded):
    _, events, _ = seeded
    seen: list[str] = []
    before: list[str] = []
    for _ in range(100):
        res = await cli("events", "list", "--json", "--limit", "500", "--status", "failed", *before)
        page = json.loads(res.stdout)
        seen += [e["id"] for e in page]
        if "more: --before" not in res.stderr:
            break
        before = ["--before", res.stderr.split("more: --before ")[1].split()[0]]
    expected = [e.id for e in sorted(events, key=lambda e: e.id, reverse=True) if e.status == EventStatus.FAILED]
    assert seen == expected


async def test_table_show_and_stats(cli, seeded, store):
    _, events, _ = seeded
    res = await cli("events", "list", "--limit", "5")
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "ENTITY", "WEBHOOK", "STATUS", "ATTEMPTS", "LAST", "AGE"]
    assert len(lines) == 6 and lines[1].startswith(events[-1].id)
    ev = events[-1]
    await store.attempts.insert([])
    shown = await cli("events", "show", ev.id, "--json")
    data = json.loads(shown.stdout)
    assert data["id"] == ev.id and data["payload"] == ev.payload and data["attempts"] == []
    text = await cli("events", "show", ev.id)
    assert f"id:               {ev.id}" in text.stdout and "payload:" in text.stdout
    stats = json.loads((await cli("events", "stats", "--json")).stdout)
    for status in EventStatus:
        assert stats["by_status"][status.value] == sum(1 for e in events if e.status == status)
    assert stats["total"] == 3000
    assert sum(stats["by_type"].values()) == 3000
    oldest = min((e for e in events if e.status == EventStatus.RETRYING), key=lambda e: e.id)
    assert stats["oldest_retrying"]["id"] == oldest.id


async def test_bulk_restart_of_one_webhook_since_a_time(cli, settings, store, new_receiver):
    rec = await new_receiver([200])
    hook = await store.webhooks.create(rec.url, ["*"])
    other = await store.webhooks.create(rec.url, ["*"])
    now = datetime.now(UTC)
    events = make_events(400, [hook.id, other.id], now=now, spread=timedelta(hours=10))
    await insert(store, events)
    since = now - timedelta(hours=5)
    target = {e.id for e in events if e.status == EventStatus.FAILED and e.webhook_id == hook.id
              and e.created_at >= since}
    args = ["events", "restart", "--status", "failed", "--webhook", hook.id, "--since", since.isoformat()]

    dry = await cli(*args, "--dry-run", role="operator")
    assert dry.exit_code == 0 and f"would restart {len(target)}, skip 0" in dry.stdout
    assert await store.events.count({"status": "New"}) == sum(1 for e in events if e.status == EventStatus.NEW)

    refused = await cli(*args, input="n\n", role="operator")
    assert refused.exit_code == 1 and await store.events.count({"_id": {"$in": list(target)}, "status": "Failed"}) \
        == len(target)

    async with running_worker(settings):
        code, out, err = await cli.subprocess(*args, "--yes", role="operator")
        assert code == 0, err
        assert f"restarted {len(target)}, skipped 0" in out

        async def delivered():
            return await store.events.count({"_id": {"$in": list(target)}, "status": "Finished"}) == len(target)

        await wait_until(delivered, 30, message="restarted events delivered")
    assert {r.headers["webhook-id"] for r in rec.requests} == target
    # nothing else changed
    untouched = [e for e in events if e.id not in target]
    statuses = {d["_id"]: d["status"] for d in await store.events.coll.find(
        {"_id": {"$in": [e.id for e in untouched]}}, {"status": 1}).to_list()}
    assert all(statuses[e.id] == e.status.value for e in untouched)


async def test_restart_skips_in_flight_and_finished(cli, store, seeded):
    _, events, _ = seeded
    fin = next(e for e in events if e.status == EventStatus.FINISHED)
    ret = next(e for e in events if e.status == EventStatus.RETRYING)
    res = await cli("events", "restart", fin.id, ret.id, role="operator")
    assert res.exit_code == 1
    assert "restarted 0, skipped 2" in res.stdout
    assert "already in flight (Retrying)" in res.stdout and "use --force" in res.stdout


async def test_webhook_commands(cli, store):
    res = await cli("webhooks", "create", "--url", "http://127.0.0.1:9/x", "--event", "article.*",
                    "--description", "pim", role="admin")
    assert res.exit_code == 0
    hook_id = res.stdout.strip()
    assert hook_id.startswith("wh_") and "signing secret: whsec_" in res.stderr
    listed = json.loads((await cli("webhooks", "list", "--json", role="viewer")).stdout)
    assert [h["id"] for h in listed] == [hook_id] and "secret" not in listed[0]
    assert "whsec_" not in (await cli("webhooks", "list", role="viewer")).stdout
    upd = await cli("webhooks", "update", hook_id, "--event", "order.*", "--description", "erp", role="admin")
    assert upd.exit_code == 0
    shown = json.loads((await cli("webhooks", "show", hook_id, "--json", role="viewer")).stdout)
    assert shown["event_types"] == ["order.*"] and shown["description"] == "erp"
    assert (await cli("webhooks", "disable", hook_id, role="admin")).exit_code == 0
    assert (await store.webhooks.get(hook_id)).active is False
    assert (await cli("webhooks", "enable", hook_id, role="admin")).exit_code == 0
    secret = (await cli("webhooks", "secret", hook_id, role="admin")).stdout.strip()
    assert secret == (await store.webhooks.get(hook_id)).secret
    assert (await cli("webhooks", "delete", hook_id, "--yes", role="admin")).exit_code == 0
    assert (await cli("webhooks", "show", hook_id, role="viewer")).exit_code == 1


@pytest.mark.parametrize(("args", "code", "message"), [
    (["events", "list", "--status", "done"], 2, "unknown status 'done'"),
    (["events", "list", "--since", "yesterday"], 2, "not a time: 'yesterday'"),
    (["events", "list", "--limit", "0"], 2, "--limit"),
    (["events", "list", "--type", "a..b"], 2, "invalid event type"),
    (["events", "list", "--before", "nope"], 2, "invalid --before"),
    (["events", "show", "evt_doesnotexist"], 1, "no event 'evt_doesnotexist'"),
    (["events", "restart"], 2, "give event ids, or filters"),
    (["webhooks", "create", "--url", "ftp://x/y", "--event", "a.b"], 2, "only http:// and https://"),
    (["webhooks", "create", "--url", "http://x/y", "--event", "a b"], 2, "invalid event type"),
    (["webhooks", "rotate-secret", "wh_x", "--grace", "soon"], 2, "not a duration"),
    (["webhooks", "show", "wh_nope"], 1, "no webhook 'wh_nope'"),
    (["janitor", "--once", "--older-than", "1d"], 2, "go together"),
    (["publish", "a.b", "--entity-kind", "a", "--entity-id", "1", "--data", "{nope"], 2, "--data is not JSON"),
    (["nonsense"], 2, "No such command"),
    (["tokens", "create", "--name", "x", "--role", "root"], 2, "'root' is not one of"),
    (["tokens", "revoke", "tok_nope"], 1, "no token 'tok_nope'"),
    (["audit", "list", "--since", "soon"], 2, "not a time: 'soon'"),
    (["server", "--port", "99999"], 2, "--port"),
])
async def test_bad_input_is_one_line_and_exit_code(cli, args, code, message):
    if cli.is_api and args[0] in ("janitor", "server"):  # these need the store: refused before their options
        code, message = 2, "does not run in API mode"
    rc, out, err = await cli.subprocess(*args, role="admin")
    assert rc == code, (rc, out, err)
    assert err.count("\n") == 1 and err.startswith("hookpost: error: ") and message in err, err
    assert "Traceback" not in err + out


async def test_help_has_examples_everywhere(settings):
    def walk(group, path):
        for name, cmd in group.commands.items():
            yield [*path, name], cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, [*path, name])
    for path, _ in walk(cli, []):
        res = await run_cli(settings, *path, "--help")
        assert res.exit_code == 0 and "Example" in res.stdout, path
