"""``hookpost invalid …`` and ``hookpost failed …``: what Hookpost set aside, listed and (for change events)
replayed once the cause is fixed. The broker logic lives in :mod:`hookpost.producer.setaside`."""

from datetime import datetime

import click

from hookpost.cli.base import echo_json, run, settings, shorten, table
from hookpost.common.durations import format_age
from hookpost.common.errors import InvalidInputError, NotFoundError
from hookpost.common.models import utcnow
from hookpost.producer.setaside import ReplayReport, SetAside, SetAsideQueues

TRUNCATED = ("note: only the head of the queue was looked at (10,000 messages or 64 MiB at a time); "
             "the order of a quorum queue's messages changed")


def _limit(value: int) -> int:
    if value < 1:
        raise InvalidInputError(f"--limit must be at least 1, not {value}")
    return value


def _age(when: datetime | None, now: datetime) -> str:
    return format_age((now - when).total_seconds()) if when else "-"


def _print_items(items: list[SetAside], total: int, queue: str) -> None:
    now = utcnow()
    click.echo(table(["ID", "SET ASIDE", "REASON", "BODY"],
                     [[i.key, _age(i.set_aside_at, now), shorten(i.reason, 60), shorten(i.excerpt(), 60)]
                      for i in items]))
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
    s = settings()
    _limit(limit)

    async def go() -> tuple[list[SetAside], int, bool]:
        async with await SetAsideQueues.connect(s) as queues:
            return *(await queues.list_invalid(limit)), queues.truncated

    items, total, truncated = run(go())
    if as_json:
        echo_json([i.as_dict() for i in items])
    else:
        _print_items(items, total, f"{s.prefix}.invalid")
    if truncated:
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
    s = settings()

    async def go() -> ReplayReport:
        async with await SetAsideQueues.connect(s) as queues:
            return await queues.replay(ids=set(ids), everything=everything, dry_run=dry_run, force=force,
                                       max_change_bytes=s.max_change_bytes)

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
        raise NotFoundError(f"not in {s.prefix}.invalid: {', '.join(report.not_found)}")
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
    import json

    s = settings()
    _limit(limit)

    async def go() -> tuple[list[SetAside], int]:
        async with await SetAsideQueues.connect(s) as queues:
            return await queues.list_failed(limit)

    items, total = run(go())
    notices = []
    for i in items:
        try:
            notice = json.loads(i.body)
        except ValueError:
            notice = None
        notices.append(notice if isinstance(notice, dict) else {"event_id": None, "body": i.excerpt()})
    if as_json:
        echo_json(notices)
        return
    click.echo(table(["EVENT", "WEBHOOK", "TYPE", "ATTEMPTS", "LAST ERROR", "FAILED AT"],
                     [[n.get("event_id"), n.get("webhook_id"), n.get("type"), n.get("attempts"),
                       shorten(n.get("last_error") or n.get("body"), 50), n.get("failed_at")] for n in notices]))
    if total > len(items):
        click.echo(f"{len(items)} of {total} notices in {s.prefix}.failed shown; more with --limit", err=True)
