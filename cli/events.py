"""``hookpost events …``: the webhook events overview — list, search, filter, show, restart, stats."""

import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import click

from hookpost.admin.events import parse_filter
from hookpost.admin.restart_rules import restart_refusal
from hookpost.cli.base import echo_json, open_admin, parse_when, run, run_watching, shorten, table
from hookpost.cli.ops import open_ops
from hookpost.cli.target import require_direct
from hookpost.common.durations import format_age
from hookpost.common.models import WebhookEvent, utcnow
from hookpost.common.records import EventDetail, EventPage, Job, RestartCount, RestartReport, Stats
from hookpost.store.events import EventFilter


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared event filters to a command."""
    options = [
        click.option("--status", "statuses", multiple=True, metavar="STATUS",
                     help="New, Retrying, Failed or Finished (repeatable; any case)."),
        click.option("--type", "event_type", default=None, help="Event type, exact or a pattern like 'article.*'."),
        click.option("--webhook", "webhook_id", default=None, help="Webhook id."),
        click.option("--entity", "entity_id", default=None, help="Entity id (e.g. A-1001)."),
        click.option("--since", default=None, help="Created at or after: a duration ago (2h, 7d) or ISO-8601."),
        click.option("--until", default=None, help="Created before: a duration ago or ISO-8601."),
        click.option("--search", default=None,
                     help="One term: an event, change or entity id or event type (exact; a prefix with a trailing "
                          "*), a status code (503) or an error kind (timeout, refused, dns, tls, http…)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_filter(statuses: tuple[str, ...] = (), event_type: str | None = None, webhook_id: str | None = None,
                 entity_id: str | None = None, since: str | None = None, until: str | None = None,
                 search: str | None = None, before: str | None = None) -> EventFilter:
    """Turn command-line filter values into an :class:`EventFilter` (one-line errors on bad input)."""
    return parse_filter(statuses, event_type, webhook_id, entity_id, since, until, search, before,
                        spell=lambda name: f"--{name}")


def _age(created: datetime, now: datetime) -> str:
    return format_age((now - created).total_seconds())


def _last(ev: WebhookEvent) -> str:
    if note := ev.lane_note():
        return shorten(note, 40)
    if ev.last_error:
        return shorten(ev.last_error, 40)
    return str(ev.last_status_code) if ev.last_status_code is not None else ""


def _folded(ev: EventDetail) -> str | None:
    """The changes folded into a coalesced event: the count and the newest ids."""
    if not ev.coalesced or ev.coalesced < 2:
        return None
    shown = ", ".join(ev.folded_changes[:5]) + (", …" if len(ev.folded_changes) > 5 else "")
    return f"{ev.coalesced - 1} (newest: {shown})" if shown else str(ev.coalesced - 1)


def event_json(ev: WebhookEvent) -> dict[str, Any]:
    """Return an event as JSON-ready data (times in ISO-8601 UTC)."""
    return ev.model_dump(mode="json")


@click.group("events")
def events() -> None:
    """List, search, inspect and restart webhook events.

    \b
    Example:
      hookpost events list --status failed --since 24h
    """


@events.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="At most this many.")
@click.option("--before", default=None, help="Page on: only events older than this event id (printed at the end).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of full event documents.")
def list_(statuses: tuple[str, ...], event_type: str | None, webhook_id: str | None, entity_id: str | None,
          since: str | None, until: str | None, search: str | None, limit: int, before: str | None,
          as_json: bool) -> None:
    """List webhook events, newest first; filters combine.

    \b
    Examples:
      hookpost events list --status failed --status retrying --since 2h
      hookpost events list --type 'article.*' --entity A-1001
      hookpost events list --search timeout --json | jq length
      hookpost events list --limit 100 --before evt_01J9Z…     # the next page
    """
    flt = build_filter(statuses, event_type, webhook_id, entity_id, since, until, search, before)

    async def go() -> EventPage:
        async with open_ops() as ops:
            return await ops.list_events(flt, limit)

    page = run(go())
    found = page.items
    if as_json:
        echo_json([event_json(e) for e in found])
    elif not found:
        click.echo("no events match", err=True)
    else:
        now = utcnow()
        click.echo(table(["ID", "TYPE", "ENTITY", "WEBHOOK", "STATUS", "ATTEMPTS", "LAST", "AGE"],
                         [[e.id, e.type, f"{e.entity.kind}/{e.entity.id}", e.webhook_id, e.status.value,
                           e.attempt_count, _last(e), _age(e.created_at, now)] for e in found]))
    if page.next:
        click.echo(f"more: --before {page.next}", err=True)


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print the event and its attempts as JSON.")
def show(event_id: str, as_json: bool) -> None:
    """Show one event: its fields, its payload and every attempt.

    \b
    Example:
      hookpost events show evt_01J9Z…
    """
    async def go() -> EventDetail:
        async with open_ops() as ops:
            return await ops.get_event(event_id)

    ev = run(go())
    attempts = ev.attempts
    if as_json:
        echo_json(ev.model_dump(mode="json"))
        return
    now = utcnow()
    rows = [("id", ev.id), ("status", ev.status.value), ("type", ev.type),
            ("entity", f"{ev.entity.kind}/{ev.entity.id}"), ("webhook", ev.webhook_id), ("change", ev.change_id),
            ("attempts", f"{ev.attempt_count} (this budget from attempt {ev.budget_start + 1})"),
            ("last status code", ev.last_status_code), ("last error", ev.last_error), ("lane", ev.lane_note()),
            ("folded changes", _folded(ev)),
            ("next attempt", ev.next_attempt_at.isoformat() if ev.next_attempt_at else None),
            ("created", f"{ev.created_at.isoformat()} ({_age(ev.created_at, now)} ago)"),
            ("updated", ev.updated_at.isoformat()),
            ("finished", ev.finished_at.isoformat() if ev.finished_at else None),
            ("trace", f"{ev.trace.trace_id} (parent span {ev.trace.parent_span_id})" if ev.trace else None)]
    for key, value in rows:
        if value not in (None, ""):
            click.echo(f"{key + ':':<18}{value}")
    click.echo("payload:")
    click.echo("  " + json.dumps(ev.payload, indent=2, ensure_ascii=False).replace("\n", "\n  "))
    if attempts:
        click.echo("attempts:")
        click.echo(table(["#", "STARTED", "DURATION", "RESULT", "RESPONSE"],
                         [[a.attempt, a.started_at.isoformat(timespec="seconds"), f"{a.duration_ms:.0f}ms",
                           a.error or a.status_code, shorten(a.response_excerpt, 50)] for a in attempts]))


@events.command("restart")
@click.argument("event_ids", nargs=-1)
@filter_options
@click.option("--force", is_flag=True, help="Also restart Finished events (they are sent again).")
@click.option("--dry-run", is_flag=True, help="Only count what would be restarted.")
@click.option("--yes", is_flag=True, help="Do not ask before a bulk restart.")
def restart(event_ids: tuple[str, ...], statuses: tuple[str, ...], event_type: str | None, webhook_id: str | None,
            entity_id: str | None, since: str | None, until: str | None, search: str | None, force: bool,
            dry_run: bool, yes: bool) -> None:
    """Restart events by id, or in bulk by filter: each gets a fresh budget of attempts.

    Events already New or Retrying are skipped (they have a delivery in flight); Finished ones only with --force.

    \b
    Examples:
      hookpost events restart evt_01J9Z… evt_01J9Y…
      hookpost events restart --status failed --webhook wh_01J9… --since 24h --dry-run
      hookpost events restart --status failed --since 24h --yes
    """
    bulk = not event_ids
    has_filter = any([statuses, event_type, webhook_id, entity_id, since, until, search])
    if bulk and not has_filter:
        raise click.UsageError("give event ids, or filters such as --status failed for a bulk restart")
    if not bulk and has_filter:
        raise click.UsageError("give either event ids or filters, not both")
    if not bulk:
        _restart_ids(list(event_ids), force, dry_run)
    else:
        _restart_bulk(build_filter(statuses, event_type, webhook_id, entity_id, since, until, search), force,
                      dry_run, yes)


def _can_restart(eligible: int, matched: int) -> None:
    click.echo(f"{eligible} of {matched} matching events can be restarted"
               + ("" if eligible == matched else f"; {matched - eligible} will be skipped"), err=True)


def _restart_ids(event_ids: list[str], force: bool, dry_run: bool) -> None:
    async def candidates() -> list[WebhookEvent]:
        async with open_ops() as ops:
            return await ops.events_by_id(event_ids)

    found = run(candidates())
    refusals = {e.id: why for e in found if (why := restart_refusal(e, force))}
    _can_restart(len(found) - len(refusals), len(found))
    if dry_run:
        _print_counts(RestartCount(matched=len(found), restarted=len(found) - len(refusals),
                                   skipped=RestartReport(skipped=refusals).skipped_by_reason(), dry_run=True))
        return

    async def go() -> RestartReport:
        async with open_ops() as ops:
            return await ops.restart_ids(event_ids, force)

    report = run(go())
    _print_counts(RestartCount(matched=len(found), restarted=len(report.restarted),
                               skipped=report.skipped_by_reason()))
    if report.skipped and not report.restarted:
        raise click.exceptions.Exit(1)


def _restart_bulk(flt: EventFilter, force: bool, dry_run: bool, yes: bool) -> None:
    async def count() -> RestartCount:
        async with open_ops() as ops:
            return await ops.restart_count(flt, force)

    counted = run(count())
    _can_restart(counted.restarted, counted.matched)
    if dry_run:
        _print_counts(counted.model_copy(update={"dry_run": True}))
        return
    if not counted.restarted:  # nothing to do: no job, no audit entry
        _print_counts(counted.model_copy(update={"dry_run": False}))
        return
    if not yes:
        click.confirm(f"restart {counted.restarted} events?", abort=True, err=True)
    job: list[str] = []
    _print_counts(run_watching(_watch_restart(flt, force, counted.matched, job), job, "restart"))


async def _watch_restart(flt: EventFilter, force: bool, total: int, job: list[str]) -> RestartCount:
    """Restart in bulk, with a progress bar on stderr for more than 200 events (and for every server job)."""
    def started(job_id: str) -> None:
        job.append(job_id)
        click.echo(f"restart job {job_id} started on the server", err=True)

    async with open_ops() as ops:
        if total <= 200 and ops.where == "direct":
            return await ops.restart_bulk(flt, force, total)
        with ExitStack() as stack:
            bars: list[Any] = []  # the bar starts with the first progress, after the job's line

            def progress(processed: int) -> None:
                if not bars:
                    bars.append(stack.enter_context(click.progressbar(length=max(total, 1), label="restarting",
                                                                      file=sys.stderr)))
                bars[0].update(processed - bars[0].pos)

            return await ops.restart_bulk(flt, force, total, progress=progress, started=started)


def _print_counts(counts: RestartCount) -> None:
    skipped = sum(counts.skipped.values())
    if counts.dry_run:
        click.echo(f"dry run: would restart {counts.restarted}, skip {skipped}")
    else:
        click.echo(f"restarted {counts.restarted}, skipped {skipped}")
    for reason, n in sorted(counts.skipped.items()):
        click.echo(f"  skipped {n}: {reason}")


@events.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def job(job_id: str, as_json: bool) -> None:
    """Show a background restart job (a bulk restart through the API): its progress, then its counts.

    \b
    Example:
      hookpost --profile prod events job job_01J9Z…
    """
    async def go() -> Job:
        async with open_ops() as ops:
            return await ops.get_job(job_id)

    found = run(go())
    if as_json:
        echo_json(found.model_dump(mode="json"))
        return
    click.echo(f"{found.id}: {found.status.value}, processed {found.processed} of {found.total}")
    if found.status.value != "running":
        _print_counts(RestartCount(matched=found.total, restarted=found.restarted, skipped=found.skipped))



@events.command("stats")
@click.option("--since", default=None, help="Only events created since (2h, 7d or ISO-8601); default all.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(since: str | None, as_json: bool) -> None:
    """Totals at a glance: counts per status, per event type and per webhook, and the oldest Retrying event.

    \b
    Example:
      hookpost events stats --since 24h
    """
    when = parse_when(since) if since else None

    async def go() -> Stats:
        async with open_ops() as ops:
            return await ops.stats(when)

    data = run(go()).model_dump(mode="json")
    if as_json:
        echo_json(data)
        return
    click.echo(table(["STATUS", "EVENTS"], [[k, v] for k, v in data["by_status"].items()] + [["total", data["total"]]]))
    click.echo()
    click.echo(table(["TYPE", "EVENTS"], list(data["by_type"].items())[:20]))
    click.echo()
    click.echo(table(["WEBHOOK", "EVENTS"], list(data["by_webhook"].items())[:20]))
    click.echo()
    oldest = data["oldest_retrying"]
    click.echo("oldest Retrying: " + (f"{oldest['id']} ({format_age(oldest['age_seconds'])} old)" if oldest
                                      else "none"))


@events.command("reindex")
def reindex() -> None:
    """Write the search fields of events stored by an older Hookpost (needed once after upgrading to 0.2).

    Without it, ``--search`` finds such events by id and type but not by error kind. Safe to run while the
    dispatcher works, and again (it changes only what is missing).

    \b
    Example:
      hookpost events reindex
    """
    require_direct("events reindex")

    async def go() -> tuple[int, int]:
        async with open_admin() as admin:
            return await admin.events.reindex()

    read, changed = run(go())
    click.echo(f"read {read} events, updated {changed}")
