"""Who may call what. Every route × every role (+ no token, a revoked token, a malformed header),
the failed-auth limit (429), X-Forwarded-For only from trusted proxies, body and header limits."""

import asyncio
import ipaddress

import pytest

from hookpost.common.records import Role
from hookpost.web.api import ROUTES
from hookpost.web.app import LIMITER_KEY
from hookpost.web.auth import FailureLimiter
from tests.api.conftest import declare_topology, make_api

# the documented matrix (docs/api.md): which roles may call each route
ALLOWED = {
    "viewer": {"list_webhooks", "get_webhook", "list_events", "get_event", "get_stats", "list_audit",
               "list_event_types", "get_event_type"},
    "operator": {"test_webhook", "restart_event", "restart_events", "get_job", "list_invalid", "list_failed"},
    "admin": {"create_webhook", "update_webhook", "delete_webhook", "enable_webhook", "disable_webhook",
              "get_webhook_secret", "rotate_webhook_secret", "list_tokens", "create_token", "revoke_token",
              "publish_change", "replay_invalid", "replay_webhook", "declare_event_type", "update_event_type"},
}
RANK = {"viewer": ["viewer", "operator", "admin"], "operator": ["operator", "admin"], "admin": ["admin"]}


def allowed_roles(op: str) -> set[str]:
    if op == "publish_change":
        return {"publisher", "admin"}
    for level, ops in ALLOWED.items():
        if op in ops:
            return set(RANK[level])
    raise AssertionError(f"route {op} missing from the matrix")


def test_matrix_covers_every_route():
    assert {r.op_id for r in ROUTES} == {op for ops in ALLOWED.values() for op in ops}
    for route in ROUTES:
        expected = allowed_roles(route.op_id)
        assert {r.value for r in Role if r.allows(route.role)} == expected, route.op_id


BODIES = {"create_webhook": {"url": "http://127.0.0.1:9/x", "event_types": ["a.*"]},
          "update_webhook": {"description": "x"}, "restart_events": {"status": ["failed"], "dry_run": True},
          "create_token": {"name": "n", "role": "viewer"}, "replay_invalid": {"ids": ["x"], "dry_run": True},
          "replay_webhook": {"since": "1h", "dry_run": True},
          "publish_change": {"id": "c1", "type": "a.b", "entity": {"kind": "a", "id": "1"}},
          "declare_event_type": {"name": "a.b", "title": "A b"}, "update_event_type": {"title": "x"}}


async def test_every_route_for_every_caller(api, settings):
    await declare_topology(settings)
    limiter = api.server.app[LIMITER_KEY]
    callers = [*[r.value for r in Role], None, "revoked", "malformed", "basic"]
    seen = 0
    for route in ROUTES:
        path = route.path.replace("{id}", "x_does_not_exist").replace("{name}", "x.does_not_exist")
        for caller in callers:
            limiter.reset()
            if caller == "malformed":
                headers = {"Authorization": "Bearer"}
            elif caller == "basic":
                headers = {"Authorization": "Basic dXNlcjpwYXNz"}
            elif caller is None:
                headers = {}
            else:
                headers = api.auth(caller)
            status, problem, resp = await api.call(route.method, path, role=None, headers=headers,
                                                   json=BODIES.get(route.op_id))
            where = (route.method, route.path, caller, status, problem)
            if caller in (None, "revoked", "malformed", "basic"):
                assert status == 401, where
                assert resp.headers["WWW-Authenticate"].startswith("Bearer") and problem["status"] == 401
            elif caller in allowed_roles(route.op_id):
                assert status not in (401, 403, 500), where
                assert status in (200, 201, 202, 204, 404), where
            else:
                assert status == 403, where
                assert resp.content_type == "application/problem+json" and caller in problem["detail"]
            seen += 1
    assert seen == len(ROUTES) * len(callers)


async def test_probes_need_no_token_and_openapi_does(api):
    for path in ("/healthz", "/readyz", "/metrics"):
        async with api.session.get(api.server.url + path) as resp:
            assert resp.status == 200, path
    status, _, _ = await api.call("GET", "/openapi.json", role=None)
    assert status == 401
    status, spec, _ = await api.call("GET", "/openapi.json", role="viewer")
    assert status == 200 and spec["openapi"].startswith("3.1")
    async with api.session.get(api.server.url + "/metrics") as resp:
        text = await resp.text()
    assert "hookpost_api_requests_total" in text and 'route="/api/v1/openapi.json"' in text


async def test_ten_failures_in_a_minute_block_the_address(api):
    for _ in range(10):
        status, _, _ = await api.call("GET", "/events", role=None,
                                      headers={"Authorization": "Bearer hp_wrongwrongwrongwrong"})
        assert status == 401
    status, problem, resp = await api.call("GET", "/events", role="admin")  # even a good token: blocked
    assert status == 429 and int(resp.headers["Retry-After"]) > 0 and "too many" in problem["detail"]


def test_limiter_window_and_block():
    lim = FailureLimiter(limit=3, window=60, block=60)
    lim.failed("a", now=0)
    lim.failed("a", now=30)
    lim.failed("a", now=61)  # the first fell out of the window
    assert lim.blocked_for("a", now=61) == 0
    lim.failed("a", now=62)
    assert lim.blocked_for("a", now=62) == 60 and lim.blocked_for("b", now=62) == 0
    assert lim.blocked_for("a", now=122) == 0


async def test_forwarded_for_only_from_trusted_proxies(settings_factory, store):
    s = settings_factory(trusted_proxies="127.0.0.0/8")
    async for api in make_api(s):
        bad = {"Authorization": "Bearer hp_wrongwrongwrongwrong"}
        for i in range(10):
            await api.call("GET", "/events", role=None, headers={**bad, "X-Forwarded-For": f"203.0.113.{i}"})
        # ten different clients behind the proxy: none blocked
        status, _, _ = await api.call("GET", "/events", headers={"X-Forwarded-For": "203.0.113.1"})
        assert status == 200
        for _ in range(10):
            await api.call("GET", "/events", role=None,
                           headers={**bad, "X-Forwarded-For": "198.51.100.7, 127.0.0.1"})
        status, _, _ = await api.call("GET", "/events", headers={"X-Forwarded-For": "198.51.100.7"})
        assert status == 429
        status, _, _ = await api.call("GET", "/events", headers={"X-Forwarded-For": "198.51.100.8"})
        assert status == 200
    # without trusted proxies the header is ignored: the peer (127.0.0.1) is the client
    s2 = settings_factory()
    async for api in make_api(s2):
        for i in range(10):
            await api.call("GET", "/events", role=None,
                           headers={"Authorization": "Bearer nope", "X-Forwarded-For": f"203.0.113.{i}"})
        status, _, _ = await api.call("GET", "/events", headers={"X-Forwarded-For": "192.0.2.1"})
        assert status == 429
    assert ipaddress.ip_network("127.0.0.0/8")


async def test_revoked_token_stops_working_at_once(api):
    _, made, _ = await api.call("POST", "/tokens", json={"name": "temp", "role": "viewer"})
    token = made["token"]
    status, _, _ = await api.call("GET", "/events", role=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    status, listed, _ = await api.call("GET", "/tokens")
    assert all("hash" not in t and "token" not in t for t in listed)
    status, rec, _ = await api.call("POST", f"/tokens/{made['record']['id']}/revoke")
    assert status == 200 and rec["revoked"] is True
    status, problem, _ = await api.call("GET", "/events", role=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 401 and "revoked" in problem["detail"]
    assert await api.admin.tokens.is_revoked(made["record"]["id"])


async def test_body_limits(settings_factory, store):
    s = settings_factory(max_change_bytes=1024, max_request_bytes=2048)
    async for api in make_api(s):
        big = {"id": "c-big", "type": "a.b", "entity": {"kind": "a", "id": "1"}, "data": {"x": "y" * 1500}}
        status, problem, _ = await api.call("POST", "/changes", json=big)
        assert status == 413 and "HOOKPOST_MAX_CHANGE_BYTES" in problem["detail"]
        status, problem, _ = await api.call("POST", "/webhooks", json={"url": "http://x/" + "a" * 5000,
                                                                       "event_types": ["a.b"]})
        assert status == 413 and problem["status"] == 413


async def test_slow_client_is_cut_off(settings_factory, store):
    s = settings_factory(header_timeout="300ms")
    async for api in make_api(s):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # the server closes the connection
        assert data == b""
        writer.close()
        # a client that sends its headers in time is served
        status, _, _ = await api.call("GET", "/events")
        assert status == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer  ", "Token abc", "bearer hp_" + "x" * 200,
                                    "Bearer hp_\u00e9t\u00e9aaaaaaaaaaaaaaaaaa"])
async def test_odd_headers_are_401(api, header):
    api.server.app[LIMITER_KEY].reset()
    raw = header.encode("utf-8").decode("latin-1")
    status, problem, _ = await api.call("GET", "/events", role=None, headers={"Authorization": raw})
    assert status == 401 and problem["status"] == 401
