"""``hookpost event-types`` and the webhook typo warning in both CLI modes: directly, and in API mode through a
server (with MongoDB and RabbitMQ unreachable from the CLI, so what worked went through the API)."""

import json
from pathlib import Path

from tests.api.cli_modes import Cli, cli_fixture  # noqa: F401  (the fixture)

SCHEMA = Path(__file__).resolve().parents[2] / "bench" / "schemas" / "order-created.json"


def ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result.stdout


async def test_event_types_and_the_typo_warning(cli: Cli, store, tmp_path):
    declared = await cli("event-types", "declare", "order.created", "--title", "Order created", "--schema",
                         str(SCHEMA), "--enforce", role="admin")
    assert ok(declared).strip() == "declared order.created (schema enforced)"
    assert (await store.catalog.get("order.created")).enforce is True

    listed = json.loads(ok(await cli("event-types", "list", "--json")))
    assert [(t["name"], t["title"], t["count"], t["first_seen"], t["last_seen"]) for t in listed] == [
        ("order.created", "Order created", 0, None, None)]
    shown = json.loads(ok(await cli("event-types", "show", "order.created", "--json")))
    assert shown["schema"] == json.loads(SCHEMA.read_text())

    ok(await cli("event-types", "deprecate", "order.created", role="admin"))
    ok(await cli("event-types", "update", "order.created", "--no-schema", role="admin"))
    stored = await store.catalog.get("order.created")
    assert stored.deprecated is True and stored.schema is None and stored.enforce is False

    ok(await cli("event-types", "export", str(tmp_path / "schemas")))
    exported = json.loads((tmp_path / "schemas" / "order.created.json").read_text())
    assert exported["title"] == "Order created" and exported["deprecated"] is True

    typo = await cli("webhooks", "create", "--url", "http://127.0.0.1:9/x", "--event", "ordr.*", role="admin")
    assert typo.exit_code == 0
    assert [line for line in typo.stderr.splitlines() if "warning" in line] == [
        "hookpost: warning: 'ordr.*' matches no known event type (declared, or seen in the last 30 days): check "
        "for a typo"]

    bad = await cli("event-types", "declare", "order.x", "--schema", str(tmp_path / "missing.json"), role="admin")
    assert bad.exit_code == 2 and bad.stderr.startswith("hookpost: error: cannot read schema file")
    denied = await cli("event-types", "declare", "order.y", role="viewer")
    assert denied.exit_code == (1 if cli.is_api else 0)  # a viewer's token may not declare; directly, no roles
