"""``hookpost invalid …`` and ``hookpost failed …``: what Hookpost set aside, listed and (for change events)
replayed once the cause is fixed. The broker logic lives in :mod:`hookpost.producer.setaside`."""

from datetime import datetime

import click

from hookpost.admin.setaside import SetAsideList, check_limit
from hookpost.cli.base import echo_json, run, settings, shorten, table
from hookpost.cli.ops import open_ops
from hookpost.cli.target import current
from hookpost.common.durations import format_age
from hookpost.common.errors import NotFoundError
from hookpost.common.models import utcnow
from hookpost.producer.setaside import ReplayReport

TRUNCATED = ("note: only the head of the queue was looked at (10,000 messages or 64 MiB at a time); "
             "the order of a quorum queue's messages changed")


def _queue(name: str) -> str:
    """How messages name a set-aside queue: ``PREFIX.invalid`` directly (the prefix is the server's in API mode)."""
    return f"{settings().prefix}.{name}" if not current().is_api else f"PREFIX.{name} on {current().api}"


def _age(when: str | None, now: datetime) -> str:
    return format_age((now - datetime.fromisoformat(when)).total_seconds()) if when else "-"


def _print_items(items: list[dict], total: int, queue: str) -> None:
    now = utcnow()
    click.echo(table(["ID", "SET ASIDE", "REASON", "BODY"],
                     [[i["id"], _age(i.get("set_aside_at"), now), shorten(i.get("reason"), 60),
                       shorten(i.get("excerpt"), 60)] for i in items]))
    if total > len(items):
        click.echo(f"{len(items)} of {total} messages in {queue} shown; more with --limit", err=True)


@click.group("invalid")
def invalid() -> None:
    """Change events set aside in PREFIX.invalid: list them, replay them once the cause is fixed.

    \b
    Examples:
      hookpost invalid list
      hookpost invalid replay --id chg-42 --dry-run
      hookpost invalid replay --all
    """


@invalid.command("list")
@click.option("--limit", default=50, show_default=True, help="Most messages to show, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def invalid_list(limit: int, as_json: bool) -> None:
    """List set-aside change events (reason, when, a body excerpt) without removing any.

    \b
    Example:
      hookpost invalid list --json | jq '.[].reason'
    """
    check_limit(limit)

    async def go() -> SetAsideList:
        async with open_ops() as ops:
            return await ops.list_invalid(limit)

    found = run(go())
    if as_json:
        echo_json(found.items)
    else:
        _print_items(found.items, found.total, _queue("invalid"))
    if found.truncated:
        click.echo(TRUNCATED, err=True)


@invalid.command("replay")
@click.option("--id", "ids", multiple=True, metavar="ID",
              help="Message id (or the sha256:… id 'invalid list' shows) to replay; repeatable.")
@click.option("--all", "everything", is_flag=True, help="Replay every set-aside change event.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--force", is_flag=True, help="Replay even events the door would still refuse (they come back).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def invalid_replay(ids: tuple[str, ...], everything: bool, dry_run: bool, force: bool, as_json: bool) -> None:
    """Publish set-aside change events to the changes exchange again, each removed from PREFIX.invalid only
    once the broker confirmed its copy. Events that would still be refused stay (unless --force).

    \b
    Examples:
      hookpost invalid replay --id chg-42 --id chg-43
      HOOKPOST_MAX_CHANGE_BYTES=131072 hookpost invalid replay --all --dry-run
    """
    if bool(ids) == everything:
        raise click.UsageError("give --id ID (repeatable) or --all")

    async def go() -> ReplayReport:
        async with open_ops() as ops:
            return await ops.replay_invalid(list(ids), everything, dry_run, force)

    report = run(go())
    if as_json:
        echo_json(report.as_dict())
    else:
        verb = "would replay" if dry_run else "replayed"
        for key in report.replayed:
            click.echo(f"{verb} {key}")
        for key, why in report.still_invalid:
            click.echo(f"kept {key}: still invalid: {why}", err=True)
        for key, error in report.failed:
            click.echo(f"kept {key}: not confirmed: {error}", err=True)
        click.echo(f"{verb} {len(report.replayed)}, kept {report.kept}")
    if report.truncated:
        click.echo(TRUNCATED.replace("was looked at", "was looked at; run again for the rest"), err=True)
    if report.not_found:
        raise NotFoundError(f"not in {_queue('invalid')}: {', '.join(report.not_found)}")
    if report.failed or (report.still_invalid and not report.replayed):
        raise click.exceptions.Exit(1)


@click.group("failed")
def failed() -> None:
    """Notices in PREFIX.failed: events that ran out of attempts (restart them with 'hookpost events restart').

    \b
    Example:
      hookpost failed list
    """


@failed.command("list")
@click.option("--limit", default=50, show_default=True, help="Most notices to show, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def failed_list(limit: int, as_json: bool) -> None:
    """List failure notices without removing any.

    \b
    Example:
      hookpost failed list --limit 10
    """
    check_limit(limit)

    async def go() -> SetAsideList:
        async with open_ops() as ops:
            return await ops.list_failed(limit)

    found = run(go())
    notices, total = found.items, found.total
    if as_json:
        echo_json(notices)
        return
    click.echo(table(["EVENT", "WEBHOOK", "TYPE", "ATTEMPTS", "LAST ERROR", "FAILED AT"],
                     [[n.get("event_id"), n.get("webhook_id"), n.get("type"), n.get("attempts"),
                       shorten(n.get("last_error") or n.get("body"), 50), n.get("failed_at")] for n in notices]))
    if total > len(notices):
        click.echo(f"{len(notices)} of {total} notices in {_queue('failed')} shown; more with --limit", err=True)
