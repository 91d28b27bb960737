"""``hookpost publish``, ``topology``, ``config``, ``dispatcher`` and ``janitor``."""

import asyncio
import json
import logging
import signal
import time
from typing import Any

import click

from hookpost.cli.base import DURATION, echo_json, open_broker, open_store, run, settings, table
from hookpost.cli.ops import open_ops
from hookpost.cli.target import current
from hookpost.common.broker_files import broker_file_descriptors
from hookpost.common.errors import HookpostError, InvalidInputError
from hookpost.common.ids import new_id
from hookpost.common.logs import setup_logging
from hookpost.common.models import ChangeEvent, EventStatus
from hookpost.common.topology import topology_from
from hookpost.common.wire import InvalidChangeError, loads_strict
from hookpost.dispatcher.worker import run_forever
from hookpost.store.cleanup import CleanupReport, RetentionRule, cleanup, retention_rules

log = logging.getLogger("hookpost.janitor")


@click.command("publish")
@click.argument("event_type")
@click.option("--entity-kind", required=True, help="Kind of the thing that changed (article, order, …).")
@click.option("--entity-id", required=True, help="Its id in the upstream system (A-1001).")
@click.option("--data", default=None, help="Optional small JSON object with details.")
@click.option("--id", "change_id", default=None, help="Change id (generated if omitted; reuse it to replay).")
@click.option("--source", default="hookpost-cli", show_default=True, help="Producer name.")
@click.option("--timeout", type=DURATION, default="15s", show_default=True,
              help="How long to wait for the broker's confirm (also while it blocks publishes).")
def publish(event_type: str, entity_kind: str, entity_id: str, data: str | None, change_id: str | None,
            source: str, timeout: float) -> None:
    """Publish one change event (with publisher confirms) and print its change id.

    Exits 1 with one line if the broker does not confirm within --timeout (e.g. while a memory or disk alarm
    blocks publishes).

    \b
    Example:
      hookpost publish article.updated --entity-kind article --entity-id A-1001 --data '{"fields": ["price"]}'
    """
    details: dict[str, Any] | None = None
    if data is not None:
        try:
            details = loads_strict(data)
        except InvalidChangeError as exc:
            why = str(exc)
            raise InvalidInputError(f"--data is {why}" if why.startswith("not JSON") else f"--data: {why}") from None
        if not isinstance(details, dict):
            raise InvalidInputError("--data must be a JSON object")
    change = ChangeEvent(id=change_id or new_id("chg"), type=event_type,
                         entity={"kind": entity_kind, "id": entity_id}, data=details, source=source)

    async def go() -> str:
        async with open_ops(publish_timeout=timeout) as ops:
            return await ops.publish(change, timeout)

    click.echo(run(go()))


@click.group("topology")
def topology() -> None:
    """Declare, show or delete Hookpost's exchanges and queues.

    \b
    Example:
      HOOKPOST_PREFIX=hookpost hookpost topology declare
    """


@topology.command("declare")
def topology_declare() -> None:
    """Declare every exchange, queue and binding (idempotent).

    \b
    Example:
      hookpost topology declare
    """
    s = settings()
    topo = topology_from(s)

    async def go() -> None:
        async with open_broker(s) as conn:
            await (await conn.channel()).declare(topo)

    run(go())
    click.echo(f"declared {len(topo.exchanges)} exchanges and {len(topo.queues)} queues with prefix {s.prefix!r}")


@topology.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def topology_show(as_json: bool) -> None:
    """Show the names and arguments Hookpost declares, each queue's ready messages if reachable, and the broker
    nodes' file descriptors in use against their limit (from the management API, where it answers).

    \b
    Example:
      hookpost topology show
    """
    s = settings()
    topo = topology_from(s)

    async def depths() -> dict[str, int | None]:
        async with open_broker(s) as conn:
            return await conn.queue_depths([spec.name for spec in topo.queues])

    try:
        counts = run(depths())
    except Exception:
        counts = {}
    files = run(broker_file_descriptors(s.rabbitmq_urls)).as_dict()
    rows = [{"queue": q.name, "messages": counts.get(q.name), "arguments": q.arguments} for q in topo.queues]
    if as_json:
        echo_json({"exchanges": [{"name": n, "type": t} for n, t in topo.exchanges], "queues": rows,
                   "broker_files": files})
        return
    click.echo(table(["EXCHANGE", "TYPE"], topo.exchanges))
    click.echo()
    click.echo(table(["QUEUE", "MESSAGES", "ARGUMENTS"],
                     [[r["queue"], "-" if r["messages"] is None else r["messages"],
                       " ".join(f"{k}={v}" for k, v in r["arguments"].items())] for r in rows]))
    click.echo()
    if not files["available"]:
        click.echo(f"Broker file descriptors: unknown: {files['reason']}")
        return
    click.echo(table(["NODE", "FILE DESCRIPTORS", "LIMIT", "USED"],
                     [[n["node"], n["used"], n["limit"], f"{n['ratio']:.0%}" + (" (near the limit)"
                                                                                if n["near_limit"] else "")]
                      for n in files["nodes"]]))


@topology.command("delete")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def topology_delete(yes: bool) -> None:
    """Delete every queue and exchange of the prefix, with their messages.

    \b
    Example:
      HOOKPOST_PREFIX=hp-test hookpost topology delete --yes
    """
    s = settings()
    if not yes:
        click.confirm(f"delete every queue and exchange of prefix {s.prefix!r}, with their messages?",
                      abort=True, err=True)

    async def go() -> None:
        async with open_broker(s) as conn:
            await (await conn.channel()).delete(topology_from(s))

    run(go())
    click.echo(f"deleted the topology of prefix {s.prefix!r}")


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config(as_json: bool) -> None:
    """Print the mode in use and the effective settings (passwords masked) with the variable each comes from.

    In API mode (--api, --profile or HOOKPOST_API_URL) it shows the server, where its URL and token come from
    (never the token) and the server's version instead: the settings are the server's business.

    \b
    Example:
      HOOKPOST_MAX_ATTEMPTS=5 HOOKPOST_RETRY_DELAYS=1s,5s,30s,1m hookpost config
      hookpost --profile prod config
    """
    target = current()
    if target.is_api:
        _api_config(as_json)
        return
    data = settings().masked()
    click.echo("mode: direct (MongoDB and RabbitMQ from these settings)", err=True)
    if as_json:
        echo_json(data)
        return
    click.echo(table(["VARIABLE", "VALUE"], [[f"HOOKPOST_{k.upper()}", v if not isinstance(v, list) else
                                              ",".join(map(str, v))] for k, v in data.items()]))


def _api_config(as_json: bool) -> None:
    from hookpost.cli.apiclient import ApiClient, ApiError, client_version

    target = current()

    async def server_version() -> str | None:
        async with ApiClient(target, timeout=10) as client:
            try:
                await client.request("GET", "/events", params={"limit": "1"})
            except HookpostError as exc:  # any answer tells the version; an unreachable server does not
                if isinstance(exc, ApiError) and not exc.status:
                    raise
            return client.server_version

    try:
        version: str | None = run(server_version())
        reach = "" if version else "no version header (not a hookpost server?)"
    except (ApiError, InvalidInputError) as exc:
        version, reach = None, str(exc)
    data = {"mode": "api", "server": target.api, "source": target.source, "profile": target.profile,
            "token": target.token_source, "ca_file": target.ca_file, "insecure": target.insecure,
            "server_version": version, "client_version": client_version()}
    if as_json:
        echo_json(data)
        return
    rows = [[k, v] for k, v in data.items() if v not in (None, False)]
    click.echo(table(["SETTING", "VALUE"], rows))
    if reach:
        click.echo(f"hookpost: warning: {reach}", err=True)


@click.command("dispatcher")
def dispatcher() -> None:
    """Run the worker: fan out change events and deliver webhooks, until SIGTERM/SIGINT.

    Scale out by running more copies. Ops endpoints: /healthz, /readyz, /metrics on HOOKPOST_OPS_PORT.

    \b
    Example:
      HOOKPOST_MONGODB_URL=mongodb://db:27017 hookpost dispatcher
    """
    s = settings()
    setup_logging(s.log_format, s.log_level)
    run_forever(s)


@click.command("janitor")
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron or a Kubernetes CronJob).")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--older-than", type=DURATION, default=None,
              help="Override the retention for this run (needs --status).")
@click.option("--status", "statuses", multiple=True, help="With --older-than: the statuses it applies to.")
@click.option("--json", "as_json", is_flag=True, help="Print each pass's report as JSON on stdout.")
def janitor(once: bool, dry_run: bool, older_than: float | None, statuses: tuple[str, ...], as_json: bool) -> None:
    """Delete old webhook events and their attempts, every HOOKPOST_JANITOR_INTERVAL (or once).

    Retention per status: HOOKPOST_RETENTION_FINISHED (7d), HOOKPOST_RETENTION_FAILED (30d); New and Retrying
    events only with HOOKPOST_RETENTION_STUCK. SIGTERM stops it between batches.

    \b
    Examples:
      hookpost janitor --once --dry-run
      hookpost janitor --once --older-than 30d --status failed
    """
    s = settings()
    setup_logging(s.log_format, s.log_level)
    if (older_than is None) != (not statuses):
        raise click.UsageError("--older-than and --status go together")
    if older_than is not None:
        try:
            rules = [RetentionRule(EventStatus.parse(st), older_than) for st in statuses]
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
    else:
        rules = retention_rules(s.retention_finished, s.retention_failed, s.retention_stuck)

    def report(rep: CleanupReport) -> None:
        log.info("janitor pass " + ("(dry run) would delete" if rep.dry_run else "deleted"),
                 extra={"events": rep.events, "attempts": rep.attempts, "seconds": round(rep.seconds, 3),
                        "events_per_s": round(rep.rate, 1), "store_duty": round(rep.duty, 3),
                        "batches": rep.batches, "interrupted": rep.interrupted})
        if as_json:
            click.echo(json.dumps(rep.as_dict()))
        elif once:
            verb = "would delete" if rep.dry_run else "deleted"
            parts = ", ".join(f"{n} {st}" for st, n in rep.events.items()) or "nothing"
            pace = "" if rep.dry_run else (f" ({rep.rate:.0f} events/s in {rep.batches} batches, store busy "
                                           f"{rep.duty:.0%} of the time)")
            click.echo(f"{verb} {parts} ({rep.attempts} attempts) in {rep.seconds:.2f}s{pace}")

    last_progress = [time.monotonic()]

    def progress(rep: CleanupReport) -> None:
        if time.monotonic() - last_progress[0] >= 30:
            last_progress[0] = time.monotonic()
            log.info("janitor pass in progress", extra={"events": rep.events, "events_per_s": round(rep.rate, 1),
                                                        "store_duty": round(rep.duty, 3), "batch": rep.largest_batch})

    async def go() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        async with open_store(s) as store:
            while True:
                rep = await cleanup(store, rules, batch=s.janitor_batch, dry_run=dry_run, stopping=stopping,
                                    duty=s.janitor_duty, progress=progress)
                report(rep)
                if once or stopping.is_set():
                    return
                try:
                    await asyncio.wait_for(stopping.wait(), s.janitor_interval)
                except TimeoutError:
                    continue

    run(go())
