"""Console pages about webhooks: the overview (status, success rate and last delivery over 24 h), create and
edit forms with field-level errors from the API's own validation, enable/disable, delete with confirmation,
reveal and rotate the secret (admin, audited), send a test event."""

import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hookpost.admin.webhooks import check_headers
from hookpost.common.durations import parse_duration
from hookpost.common.errors import ConfigError, InvalidInputError
from hookpost.common.matching import validate_pattern
from hookpost.common.records import ReplayRequest, Role, WebhookCreate, WebhookUpdate, WebhookView
from hookpost.web.console import admin_of, insights_of, need, render, url_with

GRACE_CHOICES = (("0s", "at once"), ("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"))
NOTICES = {
    "created": "Webhook created. Its signing secret was generated; an admin can reveal it below.",
    "updated": "Changes saved.",
    "enabled": "Webhook enabled: new events are delivered again.",
    "disabled": "Webhook disabled: no new events are made for it until it is enabled.",
    "deleted": "Webhook deleted. Its events stay until the janitor removes them.",
}


def percent(succeeded: int, total: int) -> str:
    """``97%`` of ``total`` attempts, or ``–`` for none."""
    return f"{round(100 * succeeded / total)}%" if total else "–"


async def webhooks_page(request: web.Request) -> web.Response:
    """The Webhooks overview."""
    need(request, Role.VIEWER)
    hooks = await admin_of(request).webhooks.list()
    health = await insights_of(request).webhook_health([h.id for h in hooks])
    return await render(request, "webhooks.html", {
        "hooks": hooks, "health": health, "percent": percent,
        "notice": NOTICES.get(request.query.get("notice", "")),
    })


def form_values(form: Any) -> dict[str, str]:
    """The create/edit form's fields as typed."""
    values = {k: str(form.get(k, "")) for k in ("url", "event_types", "description", "headers")}
    values.update({k: str(form.get(k) or "none") for k in ("ordering", "coalesce")})
    return values


def split_types(text: str) -> list[str]:
    """Event types typed one per line or separated by commas or spaces."""
    return [t for t in re.split(r"[\s,]+", text) if t]


def split_headers(text: str) -> dict[str, str]:
    """Custom headers typed one ``Name: value`` per line (raise :class:`InvalidInputError` for a bad line)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise InvalidInputError(f"write each header as 'Name: value' (got {line.strip()[:60]!r})")
        out[name.strip()] = value.strip()
    return out


def check_form(request: web.Request, values: dict[str, str], *, creating: bool) -> tuple[Any, dict[str, str]]:
    """Validate the form with the API's own models and rules; return the spec and errors by field."""
    errors: dict[str, str] = {}
    headers: dict[str, str] = {}
    try:
        headers = check_headers(split_headers(values["headers"]))
    except InvalidInputError as exc:
        errors["headers"] = str(exc)
    data = {"url": values["url"].strip(), "event_types": split_types(values["event_types"]),
            "description": values["description"], "headers": headers,
            "ordering": values.get("ordering", "none"), "coalesce": values.get("coalesce", "none")}
    if data["coalesce"] == "latest" and data["ordering"] != "entity":
        errors["coalesce"] = "Folding changes needs ordering per entity: choose both, or neither"
    spec: Any = None
    try:
        spec = WebhookCreate(**data) if creating else WebhookUpdate(**data)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "url"
            errors.setdefault(name, str(err["msg"]).removeprefix("Value error, "))
    if not data["url"]:
        errors["url"] = "Give the receiver's URL, e.g. https://example.com/webhooks"
    if not data["event_types"]:
        errors["event_types"] = "Give at least one event type, e.g. article.updated or article.*"
    if "url" not in errors:
        try:
            admin_of(request).webhooks.check_url(data["url"])
        except InvalidInputError as exc:
            errors["url"] = str(exc)
    if "event_types" not in errors:
        try:
            for pattern in data["event_types"]:
                validate_pattern(pattern)
        except InvalidInputError as exc:
            errors["event_types"] = str(exc)
    return spec, errors


async def new_webhook_page(request: web.Request) -> web.Response:
    """The create form."""
    need(request, Role.ADMIN)
    return await render(request, "webhook_form.html", {"hook": None, "values": {
        "url": "", "event_types": "", "description": "", "headers": "", "ordering": "none", "coalesce": "none"},
        "errors": {}})


async def create_webhook(request: web.Request) -> web.StreamResponse:
    """Create a webhook from the form (errors shown beside their fields)."""
    session = need(request, Role.ADMIN)
    values = form_values(await request.post())
    spec, errors = check_form(request, values, creating=True)
    if errors:
        return await render(request, "webhook_form.html", {"hook": None, "values": values, "errors": errors},
                            status=400)
    hook = await admin_of(request).webhooks.create(spec, actor=session.actor)
    raise web.HTTPSeeOther(url_with(f"/webhooks/{hook.id}", {"notice": "created"}))


def _values_of(hook: WebhookView) -> dict[str, str]:
    return {"url": hook.url, "event_types": "\n".join(hook.event_types), "description": hook.description,
            "headers": "\n".join(f"{k}: {v}" for k, v in hook.headers.items()),
            "ordering": hook.ordering.value, "coalesce": hook.coalesce.value}


async def webhook_page(request: web.Request) -> web.Response:
    """One webhook: its details, health, actions and (for admins) the edit form."""
    need(request, Role.VIEWER)
    hook = await admin_of(request).webhooks.get(request.match_info["id"])
    health = (await insights_of(request).webhook_health([hook.id]))[hook.id]
    return await render(request, "webhook.html", {
        "hook": hook, "health": health, "percent": percent, "values": _values_of(hook), "errors": {},
        "notice": NOTICES.get(request.query.get("notice", "")), "grace_choices": GRACE_CHOICES,
        "events_link": url_with("/events", {"webhook": hook.id}), "replay_windows": REPLAY_WINDOWS,
    })


async def update_webhook(request: web.Request) -> web.StreamResponse:
    """Save the edit form."""
    session = need(request, Role.ADMIN)
    admin = admin_of(request)
    hook = await admin.webhooks.get(request.match_info["id"])
    values = form_values(await request.post())
    spec, errors = check_form(request, values, creating=False)
    if errors:
        health = (await insights_of(request).webhook_health([hook.id]))[hook.id]
        return await render(request, "webhook.html", {
            "hook": hook, "health": health, "percent": percent, "values": values, "errors": errors,
            "notice": None, "grace_choices": GRACE_CHOICES, "events_link": url_with("/events", {"webhook": hook.id}),
            "replay_windows": REPLAY_WINDOWS,
        }, status=400)
    await admin.webhooks.update(hook.id, spec, actor=session.actor)
    raise web.HTTPSeeOther(url_with(f"/webhooks/{hook.id}", {"notice": "updated"}))


async def set_active(request: web.Request) -> web.StreamResponse:
    """Enable or disable a webhook."""
    session = need(request, Role.ADMIN)
    active = request.match_info["action"] == "enable"
    hook_id = request.match_info["id"]
    await admin_of(request).webhooks.set_active(hook_id, active, actor=session.actor)
    raise web.HTTPSeeOther(url_with(f"/webhooks/{hook_id}", {"notice": "enabled" if active else "disabled"}))


async def delete_confirm(request: web.Request) -> web.Response:
    """Ask before deleting."""
    need(request, Role.ADMIN)
    hook = await admin_of(request).webhooks.get(request.match_info["id"])
    return await render(request, "webhook_delete.html", {"hook": hook})


async def delete_webhook(request: web.Request) -> web.StreamResponse:
    """Delete a webhook (after the confirmation page)."""
    session = need(request, Role.ADMIN)
    await admin_of(request).webhooks.delete(request.match_info["id"], actor=session.actor)
    raise web.HTTPSeeOther(url_with("/webhooks", {"notice": "deleted"}))


async def reveal_secret(request: web.Request) -> web.Response:
    """Show the signing secret(s): an explicit, audited action of an admin."""
    session = need(request, Role.ADMIN)
    hook = await admin_of(request).webhooks.get(request.match_info["id"])
    secret = await admin_of(request).webhooks.reveal_secret(hook.id, actor=session.actor)
    return await render(request, "webhook_secret.html", {"hook": hook, "secret": secret, "rotated": False})


async def rotate_secret(request: web.Request) -> web.Response:
    """Make a new signing secret; the old one keeps signing for the chosen grace period (audited)."""
    session = need(request, Role.ADMIN)
    form = await request.post()
    choice = str(form.get("grace", "24h"))
    if choice not in dict(GRACE_CHOICES):
        raise InvalidInputError("choose a grace period from the list")
    try:
        grace = parse_duration(choice)
    except ConfigError as exc:
        raise InvalidInputError(str(exc)) from None
    hook = await admin_of(request).webhooks.get(request.match_info["id"])
    secret = await admin_of(request).webhooks.rotate_secret(hook.id, grace, actor=session.actor)
    return await render(request, "webhook_secret.html", {"hook": hook, "secret": secret, "rotated": True})


async def send_test(request: web.Request) -> web.StreamResponse:
    """Send a ``hookpost.test`` event to this webhook only, and show that event."""
    session = need(request, Role.OPERATOR)
    event = await admin_of(request).webhooks.send_test(request.match_info["id"], actor=session.actor)
    raise web.HTTPSeeOther(f"/events/{event.id}")


REPLAY_WINDOWS = (("1h", "the last hour"), ("6h", "the last 6 hours"), ("24h", "the last 24 hours"),
                  ("7d", "the last 7 days"))


async def replay(request: web.Request) -> web.Response:
    """Replay what a webhook missed: first a dry run that counts, then (confirmed) a background job."""
    session = need(request, Role.ADMIN)
    form = await request.post()
    hook_id = request.match_info["id"]
    since = str(form.get("since", "24h"))
    if since not in dict(REPLAY_WINDOWS):
        raise InvalidInputError(f"unknown window {since!r}")
    admin = admin_of(request)
    if form.get("confirm") != "yes":
        count = await admin.replays.run(hook_id, ReplayRequest(since=since, dry_run=True), actor=session.actor)
        return await render(request, "replay_confirm.html", {
            "count": count, "since": since, "window": dict(REPLAY_WINDOWS)[since], "hook_id": hook_id,
            "back": f"/webhooks/{hook_id}"})
    started = await admin.jobs.start_replay(hook_id, ReplayRequest(since=since), actor=session.actor)
    raise web.HTTPSeeOther(url_with(f"/jobs/{started.job}", {"back": f"/webhooks/{hook_id}"}))


def add_routes(app: web.Application) -> None:
    """Register the webhook pages."""
    app.router.add_get("/webhooks", webhooks_page)
    app.router.add_get("/webhooks/new", new_webhook_page)
    app.router.add_post("/webhooks/new", create_webhook)
    app.router.add_get("/webhooks/{id}", webhook_page)
    app.router.add_post("/webhooks/{id}", update_webhook)
    app.router.add_post(r"/webhooks/{id}/{action:enable|disable}", set_active)
    app.router.add_get("/webhooks/{id}/delete", delete_confirm)
    app.router.add_post("/webhooks/{id}/delete", delete_webhook)
    app.router.add_post("/webhooks/{id}/secret", reveal_secret)
    app.router.add_post("/webhooks/{id}/rotate-secret", rotate_secret)
    app.router.add_post("/webhooks/{id}/test", send_test)
    app.router.add_post("/webhooks/{id}/replay", replay)
