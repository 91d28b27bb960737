"""The console over plain HTTP (no browser): every page renders, cookie flags behind a proxy, origin and CSRF
checks, the sign-in limit, a publisher's token, and the API left to bearer tokens."""

import asyncio
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from hookpost.admin import Admin
from hookpost.common.models import EventStatus
from hookpost.common.records import Role, WebhookCreate
from hookpost.store.localserver import free_port
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer
from tests.console.test_browser import seeded_event
from tests.helpers import wait_until


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(http: aiohttp.ClientSession, base: str, token: str, headers: dict[str, str] | None = None):
    async with http.get(base + "/sign-in") as resp:
        csrf = re.search(r'name="_csrf" value="([^"]+)"', await resp.text()).group(1)
    return await http.post(base + "/sign-in", data={"_csrf": csrf, "token": token, "next": "/"},
                           allow_redirects=False, headers=headers or {})


async def test_every_page_renders_with_the_security_headers(console, new_receiver):
    r = await new_receiver([200])
    hook = await console.admin.webhooks.create(WebhookCreate(url=r.url, event_types=["article.*"]), actor="test")
    async with client() as http:
        resp = await sign_in(http, console.url, console.tokens["admin"])
        assert resp.status == 303 and resp.headers["Location"] == "/"
        for path, status in (("/", 200), ("/events", 200), ("/webhooks", 200), ("/webhooks/new", 200),
                             (f"/webhooks/{hook.id}", 200), (f"/webhooks/{hook.id}/delete", 200),
                             ("/events?status=Failed&status=New&since=2026-01-01T00:00&tz=-60&q=x&type=article.*",
                              200),
                             ("/events?since=bad", 200), ("/events?status=nope", 200), ("/events/evt_nope", 404),
                             ("/jobs/job_nope", 404), ("/nope", 404)):
            async with http.get(console.url + path) as resp:
                body = await resp.text()
                assert resp.status == status, (path, resp.status, body[:500])
                assert resp.content_type == "text/html"
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self';")
                assert resp.headers["Cache-Control"] == "no-store"
                assert "<script>" not in body and " style=" not in body and "onclick" not in body
        async with http.get(console.url + "/static/console.js") as resp:
            assert resp.status == 200 and "X-Frame-Options" in resp.headers
        async with http.get(console.url + "/events?since=bad") as resp:
            assert "not a time" in await resp.text()
        async with http.get(console.url + "/events?until=2026-13-45T10:00&tz=-60") as resp:
            body = await resp.text()
            assert 'id="until-error"' in body and 'id="since-error"' not in body
        async with http.get(console.url + "/events?tz=-60") as resp:  # only the browser's offset: no filter
            assert "No webhook events yet" in await resp.text()


async def test_signed_out_visitors_are_sent_to_sign_in_and_the_api_keeps_bearer_tokens(console):
    async with client() as http:
        async with http.get(console.url + "/events?status=Failed", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/sign-in?next=/events?status%3DFailed"
        async with http.post(console.url + "/events/restart", data={"id": "evt_x"}) as resp:
            assert resp.status == 403
        await sign_in(http, console.url, console.tokens["admin"])
        async with http.get(console.url + "/api/v1/events") as resp:  # a session cookie is no API credential
            assert resp.status == 401 and resp.content_type == "application/problem+json"
        async with http.get(console.url + "/api/v1/events", headers={
                "Authorization": f"Bearer {console.tokens['viewer']}"}) as resp:
            assert resp.status == 200


async def test_posts_from_another_origin_or_without_the_token_are_refused(console):
    async with client() as http:
        resp = await sign_in(http, console.url, console.tokens["admin"], headers={"Origin": "http://evil.example"})
        assert resp.status == 403 and "hookpost_session" not in resp.cookies
        resp = await sign_in(http, console.url, console.tokens["admin"])
        assert resp.status == 303
        async with http.get(console.url + "/webhooks/new") as page:
            csrf = re.search(r'name="_csrf" value="([^"]+)"', await page.text()).group(1)
        form = {"_csrf": csrf, "url": "http://127.0.0.1:9/x", "event_types": "a.b", "description": "",
                "headers": ""}
        async with http.post(console.url + "/webhooks/new", data=form, allow_redirects=False,
                             headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
        async with http.post(console.url + "/webhooks/new", data={**form, "_csrf": "forged"},
                             allow_redirects=False) as resp:
            assert resp.status == 403
        assert await console.admin.webhooks.list() == []
        async with http.post(console.url + "/webhooks/new", data=form, allow_redirects=False,
                             headers={"Origin": console.url}) as resp:
            assert resp.status == 303
        assert len(await console.admin.webhooks.list()) == 1


async def test_cookie_is_secure_behind_a_trusted_https_proxy_only(settings_factory):
    settings = settings_factory(trusted_proxies="127.0.0.1/32", session_secret="t" * 40)
    server = ApiServer(settings, host="127.0.0.1", port=0)
    await server.start()
    try:
        token = (await server.app[ADMIN_KEY].tokens.create("proxy", Role.VIEWER, actor="test")).token
        async with client() as http:
            headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "console.example",
                       "Origin": "https://console.example"}
            resp = await sign_in(http, server.url, token, headers=headers)
            assert resp.status == 303
            cookie = resp.cookies["hookpost_session"]
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
            assert int(cookie["max-age"]) == 8 * 3600
    finally:
        await server.stop()
    # the same headers from a peer that is not a trusted proxy do not count
    plain = settings_factory(session_secret="t" * 40)
    server = ApiServer(plain, host="127.0.0.1", port=0)
    await server.start()
    try:
        token = (await server.app[ADMIN_KEY].tokens.create("direct", Role.VIEWER, actor="test")).token
        async with client() as http:
            resp = await sign_in(http, server.url, token, headers={"X-Forwarded-Proto": "https"})
            assert resp.status == 303 and not resp.cookies["hookpost_session"]["secure"]
            resp = await sign_in(http, server.url, token, headers={"X-Forwarded-Host": "console.example",
                                                                   "Origin": "https://console.example"})
            assert resp.status == 403
    finally:
        await server.stop()


async def test_a_publisher_signs_in_but_sees_nothing_and_failed_sign_ins_are_limited(console):
    async with client() as http:
        resp = await sign_in(http, console.url, console.tokens["publisher"])
        assert resp.status == 303
        async with http.get(console.url + "/events") as page:
            assert page.status == 403 and "needs viewer" in await page.text()
    async with client() as http:
        statuses = [(await sign_in(http, console.url, "hp_wrong")).status for _ in range(11)]
        assert statuses[:10] == [401] * 10 and statuses[10] == 429


async def test_two_server_processes_share_sessions_through_the_secret(settings, store):
    """``hookpost server`` as operators run it, twice: a sign-in on one instance works on the other; the static
    script is served from the installed package; text searches are listed but not counted."""
    async with Admin.open(settings) as admin:
        token = (await admin.tokens.create("twice", Role.OPERATOR, actor="test")).token
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env.update(HOOKPOST_RABBITMQ_URL=settings.rabbitmq_url, HOOKPOST_MONGODB_URL=settings.mongodb_url,
               HOOKPOST_MONGODB_DB=settings.mongodb_db, HOOKPOST_PREFIX=settings.prefix, HOOKPOST_LOG_FORMAT="json",
               HOOKPOST_SESSION_SECRET="shared-secret-of-every-instance-0123456789")
    ports = [free_port(), free_port()]
    procs = [await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", "server", "--port",
                                                  str(p), env=env, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.PIPE) for p in ports]
    a, b = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        async with client() as http:
            async def up(base: str) -> bool:
                try:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    assert all(p.returncode is None for p in procs), "a server exited"
                    return False

            for base in (a, b):
                await wait_until(lambda base=base: up(base), 30, message=f"{base} answers")
            resp = await sign_in(http, a, token)
            assert resp.status == 303
            cookie = resp.cookies["hookpost_session"].value
        async with aiohttp.ClientSession(headers={"Cookie": f"hookpost_session={cookie}"}) as other:
            async with other.get(b + "/events?q=A-1&status=Failed", allow_redirects=False) as resp:
                body = await resp.text()
                assert resp.status == 200, body[:300]
                assert "Not counted for a text search" in body and "Restart all matching…" in body
            async with other.get(b + "/static/console.js") as resp:
                assert resp.status == 200 and "data-refresh" in await resp.text()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.communicate(), 30)
    assert all(p.returncode == 0 for p in procs)


async def test_event_detail_lists_the_other_events_of_its_change(console, store):
    hooks = [await console.admin.webhooks.create(WebhookCreate(url=f"http://127.0.0.1:9/{n}", event_types=["*"]),
                                                 actor="test") for n in ("a", "b")]
    first = seeded_event(hooks[0].id, EventStatus.FINISHED, datetime.now(UTC))
    second = seeded_event(hooks[1].id, EventStatus.FAILED, datetime.now(UTC)).model_copy(
        update={"change_id": first.change_id})
    await store.events.insert_new([first, second])
    async with client() as http:
        await sign_in(http, console.url, console.tokens["viewer"])
        async with http.get(console.url + f"/events/{first.id}") as resp:
            body = await resp.text()
    siblings = body.split("Other events of this change")[1].split("</section>")[0]
    assert f'href="/events/{second.id}"' in siblings and "http://127.0.0.1:9/b" in siblings
    assert first.id not in siblings
