"""``hookpost tokens …`` (API tokens) and ``hookpost audit list`` (who changed what)."""

import click

from hookpost.cli.base import echo_json, parse_when, run, table
from hookpost.cli.ops import open_ops
from hookpost.common.records import AuditEntry, TokenCreated, TokenView


@click.group("tokens")
def tokens() -> None:
    """Create, list and revoke API tokens for 'hookpost server'.

    \b
    Roles: viewer (reads), operator (+ restarts events, sends test events),
    admin (+ manages webhooks and secrets, publishes changes, reads the audit log),
    publisher (only POST /api/v1/changes).

    \b
    Example:
      hookpost tokens create --name ci-bot --role viewer
    """


@tokens.command("create")
@click.option("--name", required=True, help="Who or what uses the token (shown in the audit log).")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin", "publisher"],
                                                         case_sensitive=False), help="What the token may do.")
@click.option("--json", "as_json", is_flag=True, help="Print the token and its record as JSON.")
def create(name: str, role: str, as_json: bool) -> None:
    """Create a token and print it (shown this once; only its hash is stored).

    \b
    Example:
      hookpost tokens create --name grafana --role viewer
    """
    async def go() -> TokenCreated:
        async with open_ops() as ops:
            return await ops.create_token(name, role)

    made = run(go())
    if as_json:
        echo_json(made.model_dump(mode="json"))
        return
    click.echo(made.token)
    click.echo(f"token {made.record.id} ({made.record.role.value}) for {name!r}: shown once, keep it now",
               err=True)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_(as_json: bool) -> None:
    """List tokens (never the tokens themselves).

    \b
    Example:
      hookpost tokens list
    """
    async def go() -> list[TokenView]:
        async with open_ops() as ops:
            return await ops.list_tokens()

    found = run(go())
    if as_json:
        echo_json([t.model_dump(mode="json") for t in found])
        return
    if not found:
        click.echo("no tokens yet: create one with 'hookpost tokens create --name NAME --role viewer'", err=True)
        return
    click.echo(table(["ID", "NAME", "ROLE", "CREATED", "REVOKED"],
                     [[t.id, t.name, t.role.value, t.created_at.isoformat(timespec="seconds"),
                       t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else ""] for t in found]))


@tokens.command("revoke")
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke a token: every server refuses it from the next request on.

    \b
    Example:
      hookpost tokens revoke tok_01J9Z…
    """
    async def go() -> TokenView:
        async with open_ops() as ops:
            return await ops.revoke_token(token_id)

    run(go())
    click.echo(f"revoked {token_id}")


@click.group("audit")
def audit() -> None:
    """Read the audit log: who changed what, when.

    \b
    Example:
      hookpost audit list --since 7d
    """


@audit.command("list")
@click.option("--actor", "who", default=None, help="Only this actor (token name, or cli:<user>).")
@click.option("--action", default=None, help="Only this action (webhook.created, events.restarted, …).")
@click.option("--since", default=None, help="Only since: a duration ago (2h, 7d) or ISO-8601.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def audit_list(who: str | None, action: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List audit entries, newest first.

    \b
    Example:
      hookpost audit list --action webhook.secret_revealed --since 30d
    """
    when = parse_when(since) if since else None

    async def go() -> list[AuditEntry]:
        async with open_ops() as ops:
            return await ops.list_audit(who, action, when, limit)

    found = run(go())
    if as_json:
        echo_json([e.model_dump(mode="json") for e in found])
        return
    if not found:
        click.echo("no audit entries match", err=True)
        return
    click.echo(table(["AT", "ACTOR", "ACTION", "TARGET", "DETAILS"],
                     [[e.at.isoformat(timespec="seconds"), e.actor, e.action, e.target or "",
                       ", ".join(f"{k}={v}" for k, v in e.details.items())[:80]] for e in found]))
