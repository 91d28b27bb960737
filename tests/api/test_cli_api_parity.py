"""The CLI and the API are two faces of one implementation: the same filters give the same events,
the same stats and the same restart counts on the same seeded store."""

import json
from datetime import UTC, datetime, timedelta

from tests.e2e.test_cli import run_cli
from tests.seed import insert, make_events


async def test_same_filters_same_results(api, settings, store):
    hooks = [await store.webhooks.create(f"http://127.0.0.1:9/h{i}", ["*"]) for i in range(3)]
    now = datetime.now(UTC)
    events = make_events(1500, [h.id for h in hooks], now=now)
    await insert(store, events)
    day5 = (now - timedelta(days=5)).isoformat()
    filters = [
        {"status": ["failed"]},
        {"status": ["New", "retrying"]},
        {"type": "article.*"},
        {"webhook": hooks[1].id},
        {"entity": "E-7"},
        {"until": day5},
        {"search": "timeout"},
        {"status": ["failed"], "type": "article.*", "webhook": hooks[0].id, "since": day5},
    ]
    for flt in filters:
        args: list[str] = []
        for key, value in flt.items():
            for v in value if isinstance(value, list) else [value]:
                args += [f"--{key}", v]
        cli = await run_cli(settings, "events", "list", "--json", "--limit", "500", *args)
        assert cli.exit_code == 0, cli.output
        status, page, _ = await api.call("GET", "/events", params=[(k, v) for k, vs in flt.items()
                                                                    for v in (vs if isinstance(vs, list) else [vs])]
                                         + [("limit", "500")], role="viewer")
        assert status == 200
        assert json.loads(cli.stdout) == page["items"], flt
        assert page["items"], f"{flt} matched nothing: the seed should cover it"

        dry = await run_cli(settings, "events", "restart", *args, "--dry-run")
        _, count, _ = await api.call("POST", "/events/restart", json={**flt, "dry_run": True}, role="operator")
        assert f"would restart {count['restarted']}, skip {sum(count['skipped'].values())}" in dry.stdout, flt

    cli_stats = json.loads((await run_cli(settings, "events", "stats", "--json")).stdout)
    _, api_stats, _ = await api.call("GET", "/stats", role="viewer")
    cli_stats["oldest_retrying"].pop("age_seconds")
    api_stats["oldest_retrying"].pop("age_seconds")
    assert cli_stats == api_stats

    cli_hooks = json.loads((await run_cli(settings, "webhooks", "list", "--json")).stdout)
    _, api_hooks, _ = await api.call("GET", "/webhooks", role="viewer")
    assert cli_hooks == api_hooks


async def test_cli_actions_are_audited_as_the_os_user(api, settings):
    res = await run_cli(settings, "webhooks", "create", "--url", "http://127.0.0.1:9/x", "--event", "a.*")
    hook_id = res.stdout.strip()
    await run_cli(settings, "webhooks", "secret", hook_id)
    made = json.loads((await run_cli(settings, "tokens", "create", "--name", "bot", "--role", "viewer",
                                     "--json")).stdout)
    await run_cli(settings, "tokens", "revoke", made["record"]["id"])
    listed = await run_cli(settings, "tokens", "list", "--json")
    assert made["token"] not in listed.stdout and "hash" not in listed.stdout
    audit = json.loads((await run_cli(settings, "audit", "list", "--json")).stdout)
    mine = [(e["action"], e["target"]) for e in audit if e["actor"].startswith("cli:")]
    assert mine[:4] == [("token.revoked", made["record"]["id"]), ("token.created", made["record"]["id"]),
                        ("webhook.secret_revealed", hook_id), ("webhook.created", hook_id)]
    _, api_audit, _ = await api.call("GET", "/audit", role="viewer")
    assert [e["id"] for e in api_audit] == [e["id"] for e in audit]


async def test_a_broken_webhook_document_is_left_out_and_reported(api, settings, store, caplog):
    good = await store.webhooks.create("http://127.0.0.1:9/a", ["a.*"])
    broken = await store.webhooks.create("http://127.0.0.1:9/b", ["a.*"])
    await store.webhooks.coll.update_one({"_id": broken.id}, {"$set": {"description": 5}})  # edited by hand
    status, hooks, _ = await api.call("GET", "/webhooks", role="viewer")
    assert status == 200 and [h["id"] for h in hooks] == [good.id]
    assert any(getattr(r, "webhook_id", None) == broken.id for r in caplog.records)
    res = await run_cli(settings, "webhooks", "list", "--json")
    assert res.exit_code == 0 and [h["id"] for h in json.loads(res.stdout)] == [good.id]
    assert f"warning: webhook {broken.id} does not validate" in res.stderr and "description" in res.stderr
    status, problem, _ = await api.call("GET", f"/webhooks/{broken.id}", role="viewer")
    assert status == 500 and "stored Webhook document does not validate" in problem["detail"]
