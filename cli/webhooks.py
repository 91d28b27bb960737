"""``hookpost webhooks …``: create, list, show, update, enable, disable, delete, secret, rotate-secret."""

import json
from typing import Any

import click

from hookpost.cli.base import DURATION, echo_json, open_store, run, settings, shorten, table
from hookpost.common.errors import InvalidInputError
from hookpost.common.matching import validate_pattern
from hookpost.common.models import Webhook
from hookpost.common.signing import secret_key
from hookpost.store import Store


def check_url(url: str) -> str:
    """Validate a webhook URL against the configured target policy (one-line error if refused)."""
    from hookpost.dispatcher.targets import TargetPolicy  # imports aiohttp: only for the commands that take a URL

    s = settings()
    TargetPolicy(allow_private=s.allow_private_targets, allowed_networks=s.allowed_target_networks,
                 require_https=s.require_https).check_url(url)
    return url


def parse_headers(items: tuple[str, ...]) -> dict[str, str]:
    """Read ``--header 'Name: value'`` options."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InvalidInputError(f"invalid header {item!r}: use 'Name: value'")
        out[name.strip()] = value.strip()
    return out


async def success_rate(store: Store, webhook_id: str) -> str:
    """Return the share of 2xx answers among the webhook's last 100 attempts (``"97% of 100"``)."""
    codes = await store.attempts.recent_outcomes(webhook_id, 100)
    if not codes:
        return "-"
    ok = sum(1 for c in codes if c is not None and 200 <= c < 300)
    return f"{round(100 * ok / len(codes))}% of {len(codes)}"


def _status(hook: Webhook) -> str:
    return "active" if hook.active else f"disabled ({hook.disabled_reason})" if hook.disabled_reason else "disabled"


@click.group("webhooks")
def webhooks() -> None:
    """Manage webhooks: where events go and which event types each one wants.

    \b
    Example:
      hookpost webhooks create --url https://example.com/hooks --event 'article.*'
    """


@webhooks.command("create")
@click.option("--url", required=True, help="Receiver URL (http or https).")
@click.option("--event", "events", multiple=True, required=True,
              help="Event type to subscribe to, exact or a pattern like 'article.*' (repeatable).")
@click.option("--description", default="", help="Free text shown in lists.")
@click.option("--secret", default=None, help="Signing secret (whsec_…); generated if omitted.")
@click.option("--header", "headers", multiple=True, help="Extra request header 'Name: value' (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the webhook as JSON (including its secret).")
def create(url: str, events: tuple[str, ...], description: str, secret: str | None, headers: tuple[str, ...],
           as_json: bool) -> None:
    """Create a webhook and print its id (its signing secret goes to stderr, shown this once).

    \b
    Example:
      hookpost webhooks create --url https://shop.example/hooks --event 'article.*' --event order.created
    """
    check_url(url)
    patterns = [validate_pattern(e) for e in events]
    if secret is not None:
        secret_key(secret)

    async def go() -> Webhook:
        async with open_store() as store:
            return await store.webhooks.create(url, patterns, description=description, secret=secret,
                                               headers=parse_headers(headers))

    hook = run(go())
    if as_json:
        echo_json({**hook.public_dict(), "secret": hook.secret})
        return
    click.echo(hook.id)
    click.echo(f"signing secret: {hook.secret}  (shown once; 'hookpost webhooks secret {hook.id}' shows it again)",
               err=True)


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_(as_json: bool) -> None:
    """List webhooks with their status and recent success rate (last 100 attempts).

    \b
    Example:
      hookpost webhooks list --json | jq '.[] | select(.active == false)'
    """
    async def go() -> list[tuple[Webhook, str]]:
        async with open_store() as store:
            hooks = await store.webhooks.list()
            return [(h, await success_rate(store, h.id)) for h in hooks]

    rows = run(go())
    if as_json:
        echo_json([{**h.public_dict(), "recent_success": rate} for h, rate in rows])
        return
    if not rows:
        click.echo("no webhooks yet: create one with 'hookpost webhooks create --url URL --event TYPE'", err=True)
        return
    click.echo(table(["ID", "URL", "EVENTS", "STATUS", "SUCCESS", "DESCRIPTION"],
                     [[h.id, shorten(h.url, 50), ",".join(h.event_types), _status(h), rate,
                       shorten(h.description, 30)] for h, rate in rows]))


@webhooks.command("show")
@click.argument("webhook_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(webhook_id: str, as_json: bool) -> None:
    """Show one webhook (never its secret; see 'webhooks secret').

    \b
    Example:
      hookpost webhooks show wh_01J9Z…
    """
    async def go() -> tuple[Webhook, str]:
        async with open_store() as store:
            hook = await store.webhooks.get(webhook_id)
            return hook, await success_rate(store, webhook_id)

    hook, rate = run(go())
    data: dict[str, Any] = {**hook.public_dict(), "recent_success": rate}
    if as_json:
        echo_json(data)
        return
    data["status"] = _status(hook)
    for key in ("id", "url", "event_types", "status", "description", "headers", "recent_success",
                "previous_secret_expires_at", "created_at", "updated_at"):
        value = data.get(key)
        if isinstance(value, list | dict):
            value = ", ".join(value) if isinstance(value, list) else json.dumps(value)
        if value not in (None, "", "{}"):
            click.echo(f"{key + ':':<28}{value}")


@webhooks.command("update")
@click.argument("webhook_id")
@click.option("--url", default=None, help="New receiver URL.")
@click.option("--event", "events", multiple=True, help="Replace the event types (repeatable).")
@click.option("--description", default=None, help="New description.")
@click.option("--active/--inactive", default=None, help="Enable or disable.")
@click.option("--header", "headers", multiple=True, help="Replace the extra headers 'Name: value' (repeatable).")
def update(webhook_id: str, url: str | None, events: tuple[str, ...], description: str | None,
           active: bool | None, headers: tuple[str, ...]) -> None:
    """Change a webhook's URL, event types, description, headers or active flag.

    \b
    Example:
      hookpost webhooks update wh_01J9Z… --event 'article.*' --description "PIM sync"
    """
    fields: dict[str, Any] = {}
    if url is not None:
        fields["url"] = check_url(url)
    if events:
        fields["event_types"] = [validate_pattern(e) for e in events]
    if description is not None:
        fields["description"] = description
    if headers:
        fields["headers"] = parse_headers(headers)
    if active is not None:
        fields["active"] = active
        fields["disabled_reason"] = None if active else "disabled by operator"
    if not fields:
        raise click.UsageError("nothing to update: give --url, --event, --description, --header or --active")

    async def go() -> Webhook:
        async with open_store() as store:
            return await store.webhooks.update(webhook_id, **fields)

    hook = run(go())
    click.echo(f"updated {hook.id}")


def _set_active(webhook_id: str, active: bool) -> None:
    async def go() -> None:
        async with open_store() as store:
            await store.webhooks.set_active(webhook_id, active, None if active else "disabled by operator")

    run(go())
    click.echo(f"{'enabled' if active else 'disabled'} {webhook_id}")


@webhooks.command("enable")
@click.argument("webhook_id")
def enable(webhook_id: str) -> None:
    """Enable a webhook (it receives new events again; restart its Failed events to resend them).

    \b
    Example:
      hookpost webhooks enable wh_01J9Z…
    """
    _set_active(webhook_id, True)


@webhooks.command("disable")
@click.argument("webhook_id")
def disable(webhook_id: str) -> None:
    """Disable a webhook: no new events are made for it, and its queued deliveries end Failed.

    \b
    Example:
      hookpost webhooks disable wh_01J9Z…
    """
    _set_active(webhook_id, False)


@webhooks.command("delete")
@click.argument("webhook_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(webhook_id: str, yes: bool) -> None:
    """Delete a webhook (its events stay until the janitor deletes them).

    \b
    Example:
      hookpost webhooks delete wh_01J9Z… --yes
    """
    if not yes:
        click.confirm(f"delete webhook {webhook_id}?", abort=True, err=True)

    async def go() -> None:
        async with open_store() as store:
            await store.webhooks.delete(webhook_id)

    run(go())
    click.echo(f"deleted {webhook_id}")


@webhooks.command("secret")
@click.argument("webhook_id")
def secret(webhook_id: str) -> None:
    """Print a webhook's current signing secret (and the previous one during a rotation).

    \b
    Example:
      hookpost webhooks secret wh_01J9Z…
    """
    async def go() -> Webhook:
        async with open_store() as store:
            return await store.webhooks.get(webhook_id)

    hook = run(go())
    click.echo(hook.secret)
    if hook.previous_secret and hook.previous_secret_expires_at:
        click.echo(f"previous secret, valid until {hook.previous_secret_expires_at.isoformat()}: "
                   f"{hook.previous_secret}", err=True)


@webhooks.command("rotate-secret")
@click.argument("webhook_id")
@click.option("--grace", type=DURATION, default="24h", show_default=True,
              help="How long requests also carry a signature with the old secret.")
def rotate_secret(webhook_id: str, grace: float) -> None:
    """Make a new signing secret; during the grace period requests are signed with both.

    \b
    Example:
      hookpost webhooks rotate-secret wh_01J9Z… --grace 1h
    """
    async def go() -> Webhook:
        async with open_store() as store:
            return await store.webhooks.rotate_secret(webhook_id, grace)

    hook = run(go())
    click.echo(hook.secret)
    click.echo(f"old secret keeps signing until {hook.previous_secret_expires_at}", err=True)
