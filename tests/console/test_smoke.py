"""Every console page renders for every role that may see it (no browser: plain HTTP), with the security headers."""

import aiohttp

from hookpost.common.records import WebhookCreate


async def test_pages_render(console, new_receiver):
    r = await new_receiver([200])
    hook = await console.admin.webhooks.create(WebhookCreate(url=r.url, event_types=["article.*"]), actor="test")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(console.url + "/sign-in") as resp:
            assert resp.status == 200
            html = await resp.text()
        import re
        form_csrf = re.search(r'name="_csrf" value="([^"]+)"', html).group(1)
        async with http.post(console.url + "/sign-in", data={"_csrf": form_csrf, "token": console.tokens["admin"],
                                                              "next": "/"}, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        for path in ("/", "/events", "/webhooks", "/webhooks/new", f"/webhooks/{hook.id}",
                     "/events?status=Failed&status=New&since=2026-01-01T00:00&tz=-60&q=x&type=article.*",
                     "/events?since=bad", "/nope"):
            async with http.get(console.url + path) as resp:
                body = await resp.text()
                assert resp.status in (200, 400, 404), (path, resp.status, body[:2000])
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
                print(path, resp.status)
