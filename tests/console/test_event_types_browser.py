"""The event-type catalog in the console, in real headless Chromium: the webhook form offers the known types
grouped by their first word with their titles (deprecated ones hidden), a typo gets a field note after saving, and
the Event types page lists the types with their counts and schemas."""

import json
import os
from pathlib import Path

from playwright.async_api import expect

from hookpost.common.catalog import EventTypeDeclare
from hookpost.common.models import now_ms
from hookpost.common.records import WebhookCreate
from hookpost.store.catalog import Seen, day_of

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "bench" / "schemas" / "order-created.json").read_text())
SHOTS = Path(os.environ.get("HOOKPOST_TEST_SCREENSHOTS", "/tmp/hookpost-screenshots"))


async def seed_catalog(console, store) -> None:  # type: ignore[no-untyped-def]
    ops = console.admin.event_types
    for spec in (EventTypeDeclare(name="article.updated", title="Article updated"),
                 EventTypeDeclare(name="article.archived", title="Article archived", deprecated=True),
                 EventTypeDeclare(name="order.created", title="Order created", schema=SCHEMA, enforce=True)):
        await ops.declare(spec, actor="test")
    ms = now_ms()
    await store.catalog.record_seen({("order.created", day_of(ms)): Seen(7, ms - 1000, ms),
                                     ("invoice.paid", day_of(ms)): Seen(2, ms, ms)})


async def test_the_webhook_form_offers_known_types_and_notes_a_typo(console, store, new_page):
    await seed_catalog(console, store)
    page, watch = await new_page()
    await console.sign_in(page, "admin", "/webhooks/new")

    picker = page.locator("fieldset.type-picker")
    await expect(picker.locator(".type-group > legend")).to_have_text(["article", "invoice", "order"])
    await expect(page.get_by_label("Article updated")).to_be_visible()
    await expect(page.get_by_label("Order created")).to_be_visible()
    await expect(page.get_by_label("invoice.paid")).to_be_visible()  # seen, not declared: its name
    assert await page.get_by_label("Article archived").count() == 0  # deprecated: hidden

    await page.get_by_label("Receiver URL").fill("http://127.0.0.1:9/hook")
    await page.get_by_label("Article updated").check()
    await page.get_by_label("Other event types or patterns").fill("artcle.*")
    await page.get_by_role("button", name="Create webhook").click()

    await expect(page.get_by_text("Webhook created")).to_be_visible()
    note = page.locator(".field-note")
    await expect(note).to_have_count(1)
    await expect(note).to_contain_text("'artcle.*' matches no known event type")
    await expect(page.get_by_label("Article updated")).to_be_checked()  # the edit form shows the choice ticked
    await expect(page.get_by_label("Other event types or patterns")).to_have_value("artcle.*")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await note.scroll_into_view_if_needed()
    await page.screenshot(path=str(SHOTS / "webhook-typo-note.png"), full_page=True)
    [hook] = await console.admin.webhooks.list()
    assert hook.event_types == ["article.updated", "artcle.*"]  # warned, not refused

    # fixed through the same form: the note goes
    await page.get_by_label("Other event types or patterns").fill("article.*")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Changes saved")).to_be_visible()
    await expect(page.locator(".field-note")).to_have_count(0)
    assert not watch.errors and not watch.dialogs


async def test_a_deprecated_type_a_webhook_has_stays_shown_with_a_warning(console, store, new_page):
    await seed_catalog(console, store)
    hook = await console.admin.webhooks.create(
        WebhookCreate(url="http://127.0.0.1:9/x", event_types=["article.archived"]), actor="test")
    page, _ = await new_page()
    await console.sign_in(page, "admin", f"/webhooks/{hook.id}")
    await expect(page.get_by_label("Article archived")).to_be_checked()
    await expect(page.locator(".field-note")).to_contain_text("'article.archived' is deprecated")


async def test_the_event_types_page_lists_counts_and_schemas(console, store, new_page):
    await seed_catalog(console, store)
    page, watch = await new_page()
    await console.sign_in(page, "viewer", "/event-types")
    row = page.locator('tr[data-event-type="order.created"]')
    await expect(row).to_contain_text("Order created")
    await expect(row.locator("td.num")).to_have_text("7")
    await row.get_by_text("enforced").click()
    await expect(row.locator("pre.schema")).to_contain_text('"order_number"')
    await expect(page.locator('tr[data-event-type="invoice.paid"]')).to_contain_text("not declared")
    await expect(page.locator('tr[data-event-type="article.archived"]')).to_contain_text("deprecated")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "event-types.png"), full_page=True)
    unlabelled_js = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
        .filter(el => !el.hidden && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.tagName === 'BUTTON' && el.innerText.trim()))
        .map(el => el.outerHTML.slice(0, 120))"""
    assert await page.evaluate(unlabelled_js) == []
    admin_page, admin_watch = await new_page()
    await console.sign_in(admin_page, "admin", "/webhooks/new")
    assert await admin_page.evaluate(unlabelled_js) == []
    assert not watch.errors and not admin_watch.errors
