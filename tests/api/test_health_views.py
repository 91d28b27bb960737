"""Endpoint health and rate limits as people see them: ``webhooks create/update --rate-limit``, ``webhooks
list``/``show`` (healthy / failing / breaker open since … / disabled (reason)), and the API's webhook view."""

import json

from hookpost.common.endpoints import endpoint_key
from hookpost.common.models import now_ms
from tests.e2e.test_cli import run_cli


async def test_rate_limit_and_health_in_the_cli_and_the_api(settings, store, api):
    res = await run_cli(settings, "webhooks", "create", "--url", "http://127.0.0.1:9/a", "--event", "a.*",
                        "--rate-limit", "20")
    assert res.exit_code == 0, res.output
    wid = res.output.strip().splitlines()[0]
    shown = json.loads((await run_cli(settings, "webhooks", "show", wid, "--json")).output)
    assert shown["rate_limit"] == 20 and shown["health"] == "healthy"

    key = endpoint_key("http://127.0.0.1:9/a")
    await store.endpoints.open(key, now_ms() - 60_000, 30.0, "ConnectError", 3600.0)
    listed = (await run_cli(settings, "webhooks", "list")).output
    assert "breaker open since" in listed
    status, view, _ = await api.call("GET", f"/webhooks/{wid}")
    assert status == 200 and view["health"].startswith("breaker open since") and view["rate_limit"] == 20

    res = await run_cli(settings, "webhooks", "update", wid, "--rate-limit", "0")
    assert res.exit_code == 0, res.output
    status, upd, _ = await api.call("PATCH", f"/webhooks/{wid}", json={"rate_limit": 5})
    assert status == 200 and upd["rate_limit"] == 5
    await store.webhooks.set_active(wid, False, "endpoint failing for 5 days")
    shown = json.loads((await run_cli(settings, "webhooks", "show", wid, "--json")).output)
    assert shown["health"] == "disabled (endpoint failing for 5 days)"

    await store.endpoints.close(key, 3600.0)
    await store.webhooks.set_active(wid, True)
    status, view, _ = await api.call("GET", f"/webhooks/{wid}")
    assert view["health"] == "healthy"
