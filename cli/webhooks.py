"""``hookpost webhooks …``: create, list, show, update, enable, disable, delete, secret, rotate-secret."""

import json
import sys
from typing import Any

import click

from hookpost.cli.base import DURATION, echo_json, run, run_watching, shorten, table
from hookpost.cli.ops import open_ops
from hookpost.common.errors import InvalidInputError
from hookpost.common.models import Coalesce, Ordering, Webhook
from hookpost.common.records import (
    ReplayCount,
    ReplayRequest,
    WebhookCreate,
    WebhookCreated,
    WebhookSaved,
    WebhookSecret,
    WebhookUpdate,
    WebhookView,
)
from hookpost.store.webhooks import BrokenWebhook


def parse_headers(items: tuple[str, ...]) -> dict[str, str]:
    """Read ``--header 'Name: value'`` options."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InvalidInputError(f"invalid header {item!r}: use 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def sync_label(hook: Webhook | WebhookView) -> str:
    """Return how a webhook keeps receivers in sync, in a few words: ``-``, ``entity`` or ``entity, latest``."""
    if hook.ordering == Ordering.NONE:
        return "-"
    return "entity, latest" if hook.coalesce == Coalesce.LATEST else "entity"


def warn_about_types(warnings: list[str]) -> None:
    """Print each event-type warning as one line on stderr (they do not refuse the change)."""
    for text in warnings:
        click.echo(f"hookpost: warning: {text}", err=True)


def _status(hook: Webhook | WebhookView) -> str:
    if isinstance(hook, WebhookView):
        return hook.health  # healthy / failing / breaker open since … / disabled (reason)
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
@click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Most requests per second to this webhook (per dispatcher process); no limit if omitted.")
@click.option("--ordering", type=click.Choice(["none", "entity"]), default=None,
              help="entity: one event per entity in flight, in the order of its changes (default none).")
@click.option("--coalesce", type=click.Choice(["none", "latest"]), default=None,
              help="latest: a change folds into its entity's newest waiting event of the same type "
                   "(needs --ordering entity).")
@click.option("--json", "as_json", is_flag=True, help="Print the webhook as JSON (including its secret).")
def create(url: str, events: tuple[str, ...], description: str, secret: str | None, headers: tuple[str, ...],
           rate_limit: float | None, ordering: str | None, coalesce: str | None, as_json: bool) -> None:
    """Create a webhook and print its id (its signing secret goes to stderr, shown this once).

    \b
    Example:
      hookpost webhooks create --url https://shop.example/hooks --event 'article.*' --event order.created
      hookpost webhooks create --url https://pim.example/sync --event 'article.*' --ordering entity --coalesce latest
    """
    spec = WebhookCreate(url=url, event_types=list(events), description=description, secret=secret,
                         headers=parse_headers(headers), rate_limit=rate_limit,
                         ordering=Ordering(ordering or "none"), coalesce=Coalesce(coalesce or "none"))

    async def go() -> WebhookCreated:
        async with open_ops() as ops:
            return await ops.create_webhook(spec)

    hook = run(go())
    warn_about_types(hook.warnings)
    if as_json:
        echo_json(hook.model_dump(mode="json"))
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
    async def go() -> tuple[list[WebhookView], list[BrokenWebhook]]:
        async with open_ops() as ops:
            return await ops.list_webhooks()

    views, broken = run(go())
    for b in broken:
        click.echo(f"hookpost: warning: webhook {b.id} does not validate and is left out ({b.error}); "
                   "fix the document in the store", err=True)
    rows = [(h, h.recent_success) for h in views]
    if as_json:
        echo_json([h.model_dump(mode="json") for h in views])
        return
    if not rows:
        click.echo("no webhooks yet: create one with 'hookpost webhooks create --url URL --event TYPE'", err=True)
        return
    click.echo(table(["ID", "URL", "EVENTS", "STATUS", "ORDERING", "SUCCESS", "DESCRIPTION"],
                     [[h.id, shorten(h.url, 50), ",".join(h.event_types), _status(h), sync_label(h), rate,
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
    async def go() -> WebhookView:
        async with open_ops() as ops:
            return await ops.get_webhook(webhook_id)

    hook = run(go())
    data: dict[str, Any] = hook.model_dump(mode="json")
    if as_json:
        echo_json(data)
        return
    data["status"] = _status(hook)
    for key in ("id", "url", "event_types", "status", "ordering", "coalesce", "description", "headers", "rate_limit",
                "recent_success",
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
@click.option("--rate-limit", type=click.FloatRange(min=0), default=None,
              help="Most requests per second (per dispatcher process); 0 removes the limit.")
@click.option("--ordering", type=click.Choice(["none", "entity"]), default=None,
              help="entity: one event per entity in flight, in the order of its changes (default none).")
@click.option("--coalesce", type=click.Choice(["none", "latest"]), default=None,
              help="latest: a change folds into its entity's newest waiting event of the same type "
                   "(needs --ordering entity).")
def update(webhook_id: str, url: str | None, events: tuple[str, ...], description: str | None,
           active: bool | None, headers: tuple[str, ...], rate_limit: float | None, ordering: str | None,
           coalesce: str | None) -> None:
    """Change a webhook's URL, event types, description, headers, active flag, rate limit, ordering or coalescing.

    Turning ordering off releases the events waiting in its lanes (and turns coalescing off).

    \b
    Example:
      hookpost webhooks update wh_01J9Z… --event 'article.*' --description "PIM sync"
    """
    spec = WebhookUpdate(url=url, event_types=list(events) or None, description=description,
                         headers=parse_headers(headers) if headers else None, active=active, rate_limit=rate_limit,
                         ordering=Ordering(ordering) if ordering else None,
                         coalesce=Coalesce(coalesce) if coalesce else None)
    if all(v is None for v in spec.model_dump().values()):
        raise click.UsageError("nothing to update: give --url, --event, --description, --header, --active, "
                               "--rate-limit, --ordering or --coalesce")

    async def go() -> WebhookSaved:
        async with open_ops() as ops:
            return await ops.update_webhook(webhook_id, spec)

    hook = run(go())
    warn_about_types(hook.warnings)
    click.echo(f"updated {hook.id}")


def _set_active(webhook_id: str, active: bool) -> None:
    async def go() -> None:
        async with open_ops() as ops:
            await ops.set_active(webhook_id, active)

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
        async with open_ops() as ops:
            await ops.delete_webhook(webhook_id)

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
    async def go() -> WebhookSecret:
        async with open_ops() as ops:
            return await ops.reveal_secret(webhook_id)

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
    async def go() -> WebhookSecret:
        async with open_ops() as ops:
            return await ops.rotate_secret(webhook_id, grace)

    hook = run(go())
    click.echo(hook.secret)
    click.echo(f"old secret keeps signing until {hook.previous_secret_expires_at}", err=True)


@webhooks.command("replay")
@click.argument("webhook_id")
@click.option("--since", required=True, help="Start of the window: a duration back from now (2h, 3d) or an "
              "ISO-8601 time.")
@click.option("--until", default=None, help="End of the window (same forms); now if omitted.")
@click.option("--type", "types", multiple=True, help="Only these event types or patterns (repeatable).")
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def replay(webhook_id: str, since: str, until: str | None, types: tuple[str, ...], dry_run: bool, yes: bool,
           as_json: bool) -> None:
    """Replay the changes a webhook missed: those kept in the change log within the window, of its event types,
    that it has no event of (published while it was disabled, broken or not yet created). They go through
    fan-out for this webhook only; an ordered webhook's replayed changes join the tails of their lanes.

    \b
    Example:
      hookpost webhooks replay wh_01J9Z… --since 2h --dry-run
      hookpost webhooks replay wh_01J9Z… --since 2026-12-01T08:00 --until 2026-12-01T10:00 --yes
    """
    request = ReplayRequest(since=since, until=until, types=list(types), dry_run=dry_run)

    async def plan() -> ReplayCount:
        async with open_ops() as ops:
            return await ops.replay_count(webhook_id, request)

    count = run(plan())
    if not as_json or not dry_run:
        click.echo(f"{count.logged} change(s) logged in the window; {count.matched} of this webhook's types; "
                   f"{count.already} it already has; {count.replayed} to replay", err=as_json)
    if not dry_run and count.replayed:
        if not yes:
            click.confirm(f"replay {count.replayed} change(s) to {webhook_id}?", abort=True, err=True)
        job: list[str] = []
        count = run_watching(_replay(webhook_id, request, count.replayed, job), job, "replay")
    if as_json:
        echo_json(count.model_dump(mode="json"))
    elif not count.dry_run:
        click.echo(f"replayed {count.replayed} change(s) to {webhook_id}")


async def _replay(webhook_id: str, request: ReplayRequest, total: int, job: list[str]) -> ReplayCount:
    def started(job_id: str) -> None:
        job.append(job_id)
        click.echo(f"replay job {job_id} started on the server", err=True)

    async with open_ops() as ops:
        with click.progressbar(length=max(total, 1), label="replaying", file=sys.stderr) as bar:
            def progress(done: int) -> None:
                bar.update(done - bar.pos)

            return await ops.replay_webhook(webhook_id, request, progress=progress, started=started)
