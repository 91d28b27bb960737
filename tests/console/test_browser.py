"""The console in real headless Chromium: sign in, create a webhook through the form, watch its event arrive live,
filter, open a Failed event and restart it, bulk-restart with the dry-run count first, roles enforced by the
server, hostile text rendered as text, the dashboard's totals, and no sideways scroll on a phone."""

import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import expect

from hookpost.common.ids import new_id
from hookpost.common.models import ChangeEvent, Entity, EventStatus, WebhookEvent, build_payload
from hookpost.common.records import WebhookCreate
from tests.console.conftest import PHONE
from tests.helpers import wait_until

HOSTILE = '<script>window.__pwned = 1; alert("script")</script>"><img src=x onerror="window.__pwned = 2; alert(2)">'


def seeded_event(webhook_id: str, status: EventStatus, created: datetime, *, entity: str = "A-1",
                 etype: str = "article.updated", attempts: int = 3, data: dict | None = None) -> WebhookEvent:
    ms = int(created.timestamp() * 1000)
    eid = new_id("evt", ms)
    change = ChangeEvent(id=new_id("chg", ms), type=etype, entity=Entity(kind="article", id=entity), data=data)
    failed = status in (EventStatus.FAILED, EventStatus.RETRYING)
    return WebhookEvent(id=eid, webhook_id=webhook_id, change_id=change.id, type=etype, entity=change.entity,
                        payload=build_payload(eid, change), status=status, attempt_count=attempts if failed else 1,
                        last_status_code=503 if failed else 200, last_error="HTTP 503" if failed else None,
                        created_at=created, created_ms=ms, updated_at=created, updated_ms=ms)


async def rows(page) -> list[str]:
    return await page.locator("tr[data-event]").evaluate_all("els => els.map(e => e.dataset.event)")


async def test_sign_in_create_webhook_and_see_the_event_arrive_live(console, dispatcher, new_receiver, new_page):
    receiver = await new_receiver([200])
    page, watch = await new_page()
    await console.sign_in(page, "admin", "/webhooks")
    await expect(page.get_by_text("No webhooks yet")).to_be_visible()

    await page.get_by_role("link", name="New webhook").click()
    await page.get_by_label("Receiver URL").fill("ftp://nowhere")          # field-level error, same rules as the API
    await page.get_by_label("Event types").fill("article.updated, bad..type")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(page.locator("#url-error")).to_be_visible()
    await expect(page.locator("#event_types-error")).to_be_visible()
    await page.get_by_label("Receiver URL").fill(receiver.url)
    await page.get_by_label("Event types").fill("article.*")
    await page.get_by_label("Description").fill("PIM sync")
    await page.get_by_label("Custom headers").fill("X-Team: pim")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(page.get_by_text("Webhook created")).to_be_visible()
    hooks = await console.admin.webhooks.list()
    assert [(h.url, h.event_types, h.description, h.headers) for h in hooks] == [
        (receiver.url, ["article.*"], "PIM sync", {"X-Team": "pim"})]
    assert "whsec_" not in await page.content()  # no secret without an explicit reveal

    # the events overview with live refresh on, then a change is published: the row appears without a reload
    await page.goto(console.url + "/events")
    await page.get_by_role("link", name="Live refresh").click()
    await expect(page.get_by_text("Live: refreshing")).to_be_visible()
    dispatcher.cache.invalidate()
    await console.admin.changes.publish(ChangeEvent(id="chg-live-1", type="article.updated",
                                                    entity=Entity(kind="article", id="A-1001")))
    row = page.locator("tr[data-event]").first
    await expect(row).to_have_attribute("data-status", re.compile("New|Finished"), timeout=20000)
    await expect(row).to_have_attribute("data-status", "Finished", timeout=20000)
    await expect(row.locator(".status")).to_have_text("Finished")
    assert len(receiver.requests) == 1 and receiver.requests[0].headers["X-Team"] == "pim"
    assert not watch.errors and not watch.dialogs


async def test_filter_two_statuses_and_a_time_range(console, store, new_page):
    now = datetime.now(UTC).replace(microsecond=0)
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    plan = [(EventStatus.FAILED, 5), (EventStatus.NEW, 4), (EventStatus.FINISHED, 3), (EventStatus.FAILED, 2),
            (EventStatus.RETRYING, 2), (EventStatus.NEW, 1), (EventStatus.FAILED, 0.25)]
    events = [seeded_event(hook.id, s, now - timedelta(hours=h)) for s, h in plan]
    await store.events.insert_new(events)
    expected = [e.id for e in events if e.status in (EventStatus.FAILED, EventStatus.NEW)
                and now - timedelta(hours=4, minutes=30) <= e.created_at < now - timedelta(minutes=30)]
    assert len(expected) == 3

    # the browser is in Berlin: the typed times are local, the server gets them as UTC
    page, _ = await new_page(timezone_id="Europe/Berlin")
    await console.sign_in(page, "viewer", "/events")
    form = page.get_by_role("search", name="Filter events")
    await form.get_by_label("Failed").check()
    await form.get_by_label("New").check()
    berlin = timedelta(hours=1)  # November: CET
    await form.get_by_label("From").fill((now - timedelta(hours=4, minutes=30) + berlin).strftime("%Y-%m-%dT%H:%M:%S"))
    await form.get_by_label("Until").fill((now - timedelta(minutes=30) + berlin).strftime("%Y-%m-%dT%H:%M:%S"))
    await form.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url(re.compile(r"status=Failed"))
    assert sorted(await rows(page)) == sorted(expected)
    assert "tz=-60" in page.url  # the filter is in the URL: shareable
    first = page.locator("tr[data-event] time").first                  # shown in Berlin time, UTC on hover
    title, text = await first.get_attribute("title"), await first.inner_text()
    utc = datetime.strptime(title, "%Y-%m-%d %H:%M:%S UTC")
    assert text == (utc + berlin).strftime("%Y-%m-%d %H:%M:%S")
    await expect(page.locator("[data-matching]")).to_have_text("3")

    # the URL alone reproduces it (shared link), and the back button returns to the unfiltered list
    other, _ = await new_page(timezone_id="America/New_York")
    await console.sign_in(other, "viewer", "/events")
    await other.goto(page.url)
    assert sorted(await rows(other)) == sorted(expected)
    await page.go_back()
    await page.wait_for_url(console.url + "/events")
    assert len(await rows(page)) == len(events)


async def test_open_a_failed_event_read_its_attempts_and_restart_it(console, dispatcher, new_receiver, new_page):
    receiver = await new_receiver([500, 500, 500, 200])
    hook = await console.admin.webhooks.create(WebhookCreate(url=receiver.url, event_types=["order.*"]),
                                               actor="test")
    dispatcher.cache.invalidate()
    await console.admin.changes.publish(ChangeEvent(id="chg-fail-1", type="order.created",
                                                    entity=Entity(kind="order", id="O-1")))
    from hookpost.store.events import EventFilter

    async def failed():
        return await console.admin.store.events.find(EventFilter(statuses=[EventStatus.FAILED]), limit=5)

    event = (await wait_until(failed, 20, message="event Failed after three attempts"))[0]
    page, watch = await new_page()
    await console.sign_in(page, "operator", "/events?status=Failed")
    await page.get_by_role("link", name=f"Event {event.id}").click()
    await expect(page.locator("[data-status] .status")).to_have_text("Failed")
    attempts = page.locator(".timeline .attempt")
    await expect(attempts).to_have_count(3)
    await expect(attempts.first).to_contain_text("HTTP 500")
    await expect(attempts.first.locator(".excerpt")).to_contain_text("answer 3: 500")
    await expect(page.locator("#payload")).to_contain_text('"type": "order.created"')
    await expect(page.get_by_role("link", name="Search events of this change")).to_be_visible()
    await expect(page.get_by_text("None: this change had one subscribed webhook.")).to_be_visible()
    assert hook.id in await page.get_by_role("link", name=receiver.url).get_attribute("href")

    await page.get_by_role("button", name="Restart").click()
    await expect(page.get_by_text("Restarted: the event has a fresh budget")).to_be_visible()
    await expect(page.locator("[data-status] .status")).to_have_text("Finished", timeout=20000)
    await expect(attempts).to_have_count(4)
    assert len(receiver.requests) == 4 and not watch.errors


async def test_restart_all_matching_shows_the_count_first(console, dispatcher, new_receiver, store, new_page):
    receiver = await new_receiver([200])
    hook = await console.admin.webhooks.create(WebhookCreate(url=receiver.url, event_types=["*"]), actor="test")
    other = await console.admin.webhooks.create(WebhookCreate(url=receiver.url + "2", event_types=["*"]),
                                                actor="test")
    now = datetime.now(UTC)
    mine = [seeded_event(hook.id, EventStatus.FAILED, now - timedelta(minutes=i)) for i in range(1, 4)]
    theirs = [seeded_event(other.id, EventStatus.FAILED, now - timedelta(minutes=2))]
    done = [seeded_event(hook.id, EventStatus.FINISHED, now - timedelta(minutes=5))]
    await store.events.insert_new(mine + theirs + done)
    dispatcher.cache.invalidate()

    page, _ = await new_page()
    await console.sign_in(page, "operator", f"/events?webhook={hook.id}&status=Failed")
    await page.get_by_role("button", name="Restart all 3 matching…").click()
    await expect(page.locator("[data-dry-run]")).to_have_text("3")        # the dry run's count, nothing done yet
    assert len(receiver.requests) == 0
    await page.get_by_role("button", name="Yes, restart 3 events").click()
    await expect(page.locator("[data-job-status]")).to_have_text("done", timeout=20000)
    await expect(page.locator("[data-job-restarted]")).to_have_text("3")
    await wait_until(lambda: len(receiver.requests) == 3, 20, message="three deliveries")
    await page.get_by_role("link", name="Back to the events").click()
    for e in mine:
        assert (await store.events.get(e.id)).status in (EventStatus.NEW, EventStatus.FINISHED)
    assert (await store.events.get(theirs[0].id)).status == EventStatus.FAILED

    # restart selected rows: one ticked, the result names what was restarted and what was skipped and why
    await page.goto(console.url + f"/events?webhook={other.id}")
    await page.get_by_label(f"Select event {theirs[0].id}").check()
    await page.get_by_role("button", name="Restart selected").click()
    await expect(page.locator("[data-restarted]")).to_have_text("Restarted 1; skipped 0.")


async def test_a_viewer_sees_no_restart_and_a_forged_post_is_refused(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    event = seeded_event(hook.id, EventStatus.FAILED, datetime.now(UTC))
    await store.events.insert_new([event])
    page, _ = await new_page()
    await console.sign_in(page, "viewer", f"/events/{event.id}")
    await expect(page.locator("[data-status] .status")).to_have_text("Failed")
    await expect(page.get_by_role("button", name="Restart")).to_have_count(0)
    await page.goto(console.url + "/events?status=Failed")
    await expect(page.get_by_role("button", name=re.compile("Restart"))).to_have_count(0)
    await expect(page.locator("input[name=id]")).to_have_count(0)
    await page.goto(console.url + f"/webhooks/{hook.id}")
    for name in ("Reveal secret", "Disable", "Send test event", "Save changes"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)

    # a forged POST with the viewer's own session and CSRF token: the server refuses it
    csrf = await page.locator("form[action='/sign-out'] input[name=_csrf]").get_attribute("value")
    resp = await page.request.post(console.url + f"/events/{event.id}/restart", form={"_csrf": csrf})
    assert resp.status == 403 and "needs operator" in await resp.text()
    resp = await page.request.post(console.url + f"/webhooks/{hook.id}/secret", form={"_csrf": csrf})
    assert resp.status == 403
    # an operator's POST without the CSRF token is refused too
    op, _ = await new_page()
    await console.sign_in(op, "operator", "/events")
    resp = await op.request.post(console.url + f"/events/{event.id}/restart", form={"force": "1"})
    assert resp.status == 403 and "expired" in await resp.text()
    assert (await store.events.get(event.id)).status == EventStatus.FAILED


async def test_hostile_text_renders_as_text(console, store, new_page):
    hook = await console.admin.webhooks.create(
        WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"], description=HOSTILE,
                      headers={"X-Note": HOSTILE.replace("\n", " ")}), actor="test")
    event = seeded_event(hook.id, EventStatus.FAILED, datetime.now(UTC), entity=HOSTILE[:150],
                         data={"note": HOSTILE})
    await store.events.insert_new([event])
    page, watch = await new_page()
    await console.sign_in(page, "admin", "/webhooks")
    for path in ("/webhooks", f"/webhooks/{hook.id}", "/events", f"/events/{event.id}",
                 f"/events?q={HOSTILE[:40]}", "/"):
        await page.goto(console.url + path)
        await page.wait_for_load_state("load")
        assert await page.evaluate("window.__pwned") is None, path
        assert await page.locator("img").count() == 0, path
        assert await page.locator("script:not([src])").count() == 0, path
    await page.goto(console.url + f"/webhooks/{hook.id}")
    await expect(page.locator(".desc-full")).to_have_text(HOSTILE)
    await page.goto(console.url + f"/events/{event.id}")
    await expect(page.locator("#payload")).to_contain_text('<script>window.__pwned = 1; alert(\\"script\\")</script>')
    assert watch.dialogs == [] and watch.errors == []


async def test_dashboard_totals_match_the_store(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    now = datetime.now(UTC)
    plan = {EventStatus.NEW: (1, 2), EventStatus.RETRYING: (2, 0), EventStatus.FAILED: (3, 1),
            EventStatus.FINISHED: (4, 5)}
    events = []
    for status, (recent, older) in plan.items():
        events += [seeded_event(hook.id, status, now - timedelta(minutes=5 + i)) for i in range(recent)]
        events += [seeded_event(hook.id, status, now - timedelta(hours=3, minutes=i)) for i in range(older)]
    await store.events.insert_new(events)
    page, _ = await new_page()
    await console.sign_in(page, "viewer", "/")
    at = datetime.now(UTC)
    for status in EventStatus:
        hour = await store.events.count({"status": status.value,
                                         "created_ms": {"$gte": int((at - timedelta(hours=1)).timestamp() * 1000)}})
        day = await store.events.count({"status": status.value,
                                        "created_ms": {"$gte": int((at - timedelta(days=1)).timestamp() * 1000)}})
        assert (hour, day) == (plan[status][0], sum(plan[status]))
        await expect(page.locator(f"[data-hour='{status.value}']")).to_have_text(str(hour))
        await expect(page.locator(f"[data-day='{status.value}']")).to_have_text(str(day))
    assert await page.locator("svg.chart rect[fill='#cf222e']").count() >= 1  # the Failed bars of the chart
    await expect(page.get_by_text("Oldest Retrying:")).to_be_visible()
    # a total links to exactly those events, with the window in the filter form (UTC)
    await page.locator("[data-hour='Failed']").click()
    await expect(page.locator("[data-matching]")).to_have_text(str(plan[EventStatus.FAILED][0]))
    assert await page.get_by_label("From").input_value() != ""
    await expect(page.locator("[data-tz-label]").first).to_have_text("(UTC)")


async def test_events_overview_has_no_horizontal_scroll_on_a_phone(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(
        url="http://127.0.0.1:9/a-rather-long-receiver-path/that/keeps/going/and/going", event_types=["*"]),
        actor="test")
    now = datetime.now(UTC)
    await store.events.insert_new([seeded_event(hook.id, s, now - timedelta(minutes=i), entity="A-" + "9" * 40,
                                                etype="stock.level.changed.in.the.main.warehouse")
                                   for i, s in enumerate(list(EventStatus) * 3)])
    page, _ = await new_page(viewport=PHONE)
    await console.sign_in(page, "operator", "/events")
    for path in ("/events", "/events?status=Failed&status=New", "/webhooks", "/"):
        await page.goto(console.url + path)
        widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], (path, widths)
    await page.goto(console.url + "/events")
    await expect(page.locator("tr[data-event]")).to_have_count(12)


async def test_sessions_cookie_flags_sign_out_and_revocation(console, new_page):
    page, _ = await new_page()
    await console.sign_in(page, "admin", "/")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "hookpost_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    assert console.tokens["admin"] not in cookie["value"]
    resp = await page.goto(console.url + "/events")
    headers = resp.headers
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe" not in headers[
        "content-security-policy"]
    assert headers["x-frame-options"] == "DENY"

    # the JSON API keeps to bearer tokens: the session cookie does not open it
    api = await page.request.get(console.url + "/api/v1/webhooks")
    assert api.status == 401

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r"/sign-in"))
    await page.goto(console.url + "/events")
    assert "/sign-in" in page.url

    # revoking the token ends its sessions at once
    await console.sign_in(page, "operator", "/events")
    await console.admin.tokens.revoke(console.token_ids["operator"], actor="test")
    await page.goto(console.url + "/webhooks")
    assert "/sign-in" in page.url
    await page.get_by_label("API token").fill(console.tokens["operator"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("not valid")).to_be_visible()


async def test_works_with_javascript_off(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    now = datetime.now(UTC)
    events = [seeded_event(hook.id, s, now - timedelta(minutes=i)) for i, s in enumerate(EventStatus)]
    await store.events.insert_new(events)
    page, _ = await new_page(java_script_enabled=False)
    await console.sign_in(page, "operator", "/events")
    await expect(page.locator("time").first).to_contain_text("UTC")       # UTC when no script converts it
    await page.get_by_label("Failed").check()
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url(re.compile(r"status=Failed"))
    assert await rows(page) == [e.id for e in events if e.status == EventStatus.FAILED]
    await page.get_by_role("button", name="Restart all 1 matching…").click()
    await expect(page.locator("[data-dry-run]")).to_have_text("1")


async def test_webhook_actions_test_event_edit_disable_secret_delete(console, dispatcher, new_receiver, new_page):
    receiver = await new_receiver([200])
    hook = await console.admin.webhooks.create(WebhookCreate(url=receiver.url, event_types=["article.*"]),
                                               actor="test")
    dispatcher.cache.invalidate()
    page, watch = await new_page()
    await console.sign_in(page, "admin", f"/webhooks/{hook.id}")

    # send a test event: its page shows it delivered
    await page.get_by_role("button", name="Send test event").click()
    await page.wait_for_url(re.compile(r"/events/evt_"))
    await expect(page.locator("[data-status] .status")).to_have_text("Finished", timeout=20000)
    await expect(page.get_by_text("hookpost.test", exact=True)).to_be_visible()

    # the edit form: a bad value is named beside its field; a good one is saved
    await page.goto(console.url + f"/webhooks/{hook.id}")
    await page.get_by_label("Custom headers").fill("no colon here")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#headers-error")).to_contain_text("Name: value")
    await page.get_by_label("Custom headers").fill("X-Env: staging")
    await page.get_by_label("Event types").fill("article.*\norder.created")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Changes saved.")).to_be_visible()
    saved = await console.admin.webhooks.get(hook.id)
    assert saved.event_types == ["article.*", "order.created"] and saved.headers == {"X-Env": "staging"}

    # disable: the overview shows why; enable again
    await page.get_by_role("button", name="Disable").click()
    await expect(page.get_by_text("Webhook disabled")).to_be_visible()
    await page.goto(console.url + "/webhooks")
    await expect(page.locator(f"tr[data-webhook='{hook.id}']")).to_contain_text("disabled by operator")
    await page.goto(console.url + f"/webhooks/{hook.id}")
    await page.get_by_role("button", name="Enable").click()
    await expect(page.get_by_text("Webhook enabled")).to_be_visible()

    # reveal and rotate the secret: shown only then, and audited
    await page.get_by_role("button", name="Reveal secret").click()
    secret = (await console.admin.store.webhooks.get(hook.id)).secret
    await expect(page.locator("code.secret").first).to_have_text(secret)
    await page.goto(console.url + f"/webhooks/{hook.id}")
    await page.get_by_label("The old secret keeps signing for").select_option("1h")
    await page.get_by_role("button", name="Rotate secret").click()
    await expect(page.get_by_role("heading", name="New signing secret")).to_be_visible()
    rotated = await console.admin.store.webhooks.get(hook.id)
    assert rotated.secret != secret and rotated.previous_secret == secret
    await expect(page.locator("code.secret").first).to_have_text(rotated.secret)
    actions = [(e.actor, e.action) for e in await console.admin.audit.list()]
    for action in ("webhook.secret_revealed", "webhook.secret_rotated", "webhook.updated", "webhook.test_sent",
                   "webhook.disabled", "webhook.enabled"):
        assert ("token:console-admin", action) in actions, action

    # delete, after a confirmation page
    await page.goto(console.url + f"/webhooks/{hook.id}")
    await page.get_by_role("link", name="Delete…").click()
    await expect(page.get_by_role("heading", name="Delete this webhook?")).to_be_visible()
    await page.get_by_role("button", name="Yes, delete it").click()
    await expect(page.get_by_text("Webhook deleted.")).to_be_visible()
    assert await console.admin.webhooks.list() == []
    assert not watch.errors and not watch.dialogs


async def test_keyboard_only_sign_in_and_filter(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    events = [seeded_event(hook.id, s, datetime.now(UTC) - timedelta(minutes=i)) for i, s in enumerate(EventStatus)]
    await store.events.insert_new(events)
    page, _ = await new_page()
    await page.goto(console.url + "/events")                     # sent to sign in, then back here
    # the token field takes the focus by itself (autofocus, which the browser applies after the page has loaded:
    # typing at once, under load, sometimes went to the page and the sign-in failed)
    await expect(page.locator("#token")).to_be_focused()
    await page.keyboard.type(console.tokens["viewer"])
    await page.keyboard.press("Enter")
    await page.wait_for_url(console.url + "/events")

    async def tab_to(name: str) -> None:
        for _ in range(40):
            await page.keyboard.press("Tab")
            label = await page.evaluate("document.activeElement.labels?.[0]?.innerText || "
                                        "document.activeElement.innerText || ''")
            if label.strip().startswith(name):
                return
        raise AssertionError(f"Tab never reached {name!r}")

    await tab_to("Retrying")
    await page.keyboard.press("Space")
    await tab_to("Apply filters")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"status=Retrying"))
    assert await rows(page) == [e.id for e in events if e.status == EventStatus.RETRYING]


async def test_every_control_has_a_label(console, store, new_page):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", event_types=["*"]),
                                               actor="test")
    event = seeded_event(hook.id, EventStatus.FAILED, datetime.now(UTC))
    await store.events.insert_new([event])
    page, _ = await new_page()
    await console.sign_in(page, "admin", "/")
    unlabelled_js = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
        .filter(el => !el.hidden && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.tagName === 'BUTTON' && el.innerText.trim()))
        .map(el => el.outerHTML.slice(0, 120))"""
    for path in ("/", "/events", f"/events/{event.id}", "/webhooks", "/webhooks/new", f"/webhooks/{hook.id}",
                 f"/webhooks/{hook.id}/delete"):
        await page.goto(console.url + path)
        assert await page.evaluate(unlabelled_js) == [], path


async def test_restart_all_of_a_search_within_one_webhook_counts_that_webhooks_events_only(console, store, new_page):
    """The dry run's count of a search (an ``$or``) within a webhook filter counts what the list shows."""
    a, b = [await console.admin.webhooks.create(WebhookCreate(url=f"http://127.0.0.1:9/{n}", event_types=["*"]),
                                                actor="test") for n in ("a", "b")]
    now = datetime.now(UTC)
    await store.events.insert_new(
        [seeded_event(a.id, EventStatus.FAILED, now - timedelta(minutes=i)) for i in range(2)]
        + [seeded_event(b.id, EventStatus.FAILED, now - timedelta(minutes=i, seconds=30)) for i in range(3)])
    page, _ = await new_page()
    await console.sign_in(page, "operator", "/events")
    await page.goto(console.url + f"/events?webhook={a.id}&q=503")
    assert len(await rows(page)) == 2
    await page.get_by_role("button", name="Restart all matching…").click()
    await expect(page.locator("[data-dry-run]")).to_have_text("2")
    await expect(page.get_by_role("button", name="Yes, restart 2 events")).to_be_visible()


async def test_an_ordered_webhook_replays_what_it_missed_from_the_console(console, dispatcher, new_receiver,
                                                                         new_page, tmp_path):
    """Create an ordered, coalescing webhook through the form (the refusal of coalescing alone shown beside its
    field), disable it, publish changes it misses, enable it, then count and replay them from its page."""
    receiver = await new_receiver([200])
    page, watch = await new_page()
    await console.sign_in(page, "admin", "/webhooks/new")
    await page.get_by_label("Receiver URL").fill(receiver.url)
    await page.get_by_label("Event types").fill("article.*")
    await page.get_by_label("Fold waiting changes").select_option("latest")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(page.locator("#coalesce-error")).to_contain_text("needs ordering per entity")
    await page.get_by_label("Order", exact=True).select_option("entity")
    await page.get_by_role("button", name="Create webhook").click()
    await expect(page.get_by_text("Webhook created")).to_be_visible()
    await expect(page.get_by_text("per entity, latest wins")).to_be_visible()
    await page.screenshot(path=str(tmp_path / "ordered-webhook.png"), full_page=True)
    hook = (await console.admin.webhooks.list())[0]
    assert (hook.ordering.value, hook.coalesce.value) == ("entity", "latest")

    await console.admin.webhooks.set_active(hook.id, False, actor="test")
    dispatcher.cache.invalidate()
    for i in range(3):
        await console.admin.changes.publish(ChangeEvent(id=f"chg-missed-{i}", type="article.updated",
                                                        entity=Entity(kind="article", id=f"A-{i}"), sequence=i))
    await wait_until(lambda: dispatcher.metrics.changes_consumed.labels("ok")._value.get() >= 3,
                     message="fan-out saw the missed changes")
    await console.admin.webhooks.set_active(hook.id, True, actor="test")
    dispatcher.cache.invalidate()

    await page.reload()
    await page.get_by_label("Changes of").select_option("1h")
    await page.get_by_role("button", name="Count missed changes…").click()
    await expect(page.locator("[data-replay-count]")).to_have_attribute("data-replay-count", "3")
    await page.screenshot(path=str(tmp_path / "replay-confirm.png"), full_page=True)
    await page.get_by_role("button", name="Yes, replay 3 changes").click()
    await expect(page.locator("[data-job-status]")).to_have_attribute("data-job-status", "done", timeout=20000)
    await wait_until(lambda: len(receiver.requests) == 3, message="the missed changes delivered")
    assert sorted(r.json["data"]["change_id"] for r in receiver.requests) == [f"chg-missed-{i}" for i in range(3)]
    assert all(r.json["data"]["coalesced"] == 1 for r in receiver.requests)
    assert not watch.errors and not watch.dialogs
