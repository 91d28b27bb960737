"""``hookpost event-types …``: list, show, declare, update, deprecate and export the event-type catalog."""

import json
from pathlib import Path
from typing import Any

import click

from hookpost.cli.base import echo_json, run, shorten, table
from hookpost.cli.ops import open_ops
from hookpost.common.catalog import CATALOG_DAYS, EventTypeDeclare, EventTypeUpdate, EventTypeView
from hookpost.common.errors import InvalidInputError
from hookpost.common.matching import validate_type


def read_schema(path: str) -> dict[str, Any]:
    """Read and check a JSON Schema file (one plain error line if it cannot be a contract)."""
    from hookpost.admin.event_types import schema_from_file

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read schema file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return schema_from_file(text, path)


def _when(view: EventTypeView, which: str) -> str:
    value = getattr(view, which)
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _flags(view: EventTypeView) -> str:
    flags = ["declared" if view.declared else "seen"]
    if view.schema_ is not None:
        flags.append("enforced" if view.enforce else "schema")
    if view.deprecated:
        flags.append("deprecated")
    return ",".join(flags)


@click.group("event-types")
def event_types() -> None:
    """The event-type catalog: the types producers publish (seen by fan-out in the last 30 days) and the types
    declared with a title, a description and optionally a JSON Schema.

    \b
    Examples:
      hookpost event-types list
      hookpost event-types declare order.created --title "Order created" --schema order-created.json --enforce
    """


@event_types.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (name, title, count, first and last seen).")
def list_(as_json: bool) -> None:
    """List the known event types: declared, or seen in the last 30 days, with their counts over those days
    (approximate: counts are written in batches).

    \b
    Example:
      hookpost event-types list --json | jq '.[] | select(.count == 0)'
    """
    async def go() -> list[EventTypeView]:
        async with open_ops() as ops:
            return await ops.list_event_types()

    views = run(go())
    if as_json:
        echo_json([{"name": v.name, "title": v.title, "count": v.count,
                    "first_seen": v.first_seen.isoformat() if v.first_seen else None,
                    "last_seen": v.last_seen.isoformat() if v.last_seen else None,
                    "declared": v.declared, "deprecated": v.deprecated, "enforce": v.enforce} for v in views])
        return
    if not views:
        click.echo(f"no event types yet: none declared, none seen in the last {CATALOG_DAYS} days "
                   "('hookpost event-types declare NAME --title …' declares one)", err=True)
        return
    click.echo(table(["NAME", "TITLE", f"{CATALOG_DAYS}D COUNT", "FIRST SEEN", "LAST SEEN", "KIND"],
                     [[v.name, shorten(v.title, 40), v.count, _when(v, "first_seen"), _when(v, "last_seen"),
                       _flags(v)] for v in views]))


@event_types.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the schema).")
def show(name: str, as_json: bool) -> None:
    """Show one event type with its schema.

    \b
    Example:
      hookpost event-types show order.created
    """
    async def go() -> EventTypeView:
        async with open_ops() as ops:
            return await ops.get_event_type(name)

    view = run(go())
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for label, value in (("name", view.name), ("title", view.title), ("description", view.description),
                         ("kind", _flags(view)), (f"count ({CATALOG_DAYS} days)", view.count),
                         ("first seen", _when(view, "first_seen")), ("last seen", _when(view, "last_seen"))):
        if value not in (None, ""):
            click.echo(f"{label + ':':<20}{value}")
    if view.schema_ is not None:
        click.echo("schema:")
        click.echo(json.dumps(view.schema_, indent=2, ensure_ascii=False))


@event_types.command("declare")
@click.argument("name")
@click.option("--title", default="", help="For people: 'Order created'.")
@click.option("--description", default="", help="What the type means and when it is published.")
@click.option("--schema", "schema_file", default=None, metavar="FILE",
              help="JSON Schema (draft 2020-12) of the changes' data; no remote $ref.")
@click.option("--enforce", is_flag=True, help="Set aside changes whose data breaks the schema (PREFIX.invalid).")
@click.option("--deprecated", is_flag=True, help="Mark deprecated: hidden from the console's webhook form.")
def declare(name: str, title: str, description: str, schema_file: str | None, enforce: bool,
            deprecated: bool) -> None:
    """Declare an event type (declaring it again replaces the declaration).

    \b
    Example:
      hookpost event-types declare order.created --title "Order created" --schema order-created.json --enforce
    """
    validate_type(name)
    schema = read_schema(schema_file) if schema_file else None
    spec = EventTypeDeclare(name=name, title=title, description=description, schema=schema, enforce=enforce,
                            deprecated=deprecated)

    async def go() -> EventTypeView:
        async with open_ops() as ops:
            return await ops.declare_event_type(spec)

    view = run(go())
    click.echo(f"declared {view.name}" + (" (schema enforced)" if view.enforce else ""))


@event_types.command("update")
@click.argument("name")
@click.option("--title", default=None, help="New title.")
@click.option("--description", default=None, help="New description.")
@click.option("--schema", "schema_file", default=None, metavar="FILE", help="New JSON Schema file.")
@click.option("--no-schema", is_flag=True, help="Remove the schema (and enforcement).")
@click.option("--enforce/--no-enforce", default=None, help="Set aside changes that break the schema, or stop.")
def update(name: str, title: str | None, description: str | None, schema_file: str | None, no_schema: bool,
           enforce: bool | None) -> None:
    """Change a declared event type.

    \b
    Example:
      hookpost event-types update order.created --schema order-created-v2.json
    """
    if schema_file and no_schema:
        raise click.UsageError("give --schema FILE or --no-schema, not both")
    fields: dict[str, Any] = {k: v for k, v in (("title", title), ("description", description),
                                                 ("enforce", enforce)) if v is not None}
    if schema_file:
        fields["schema"] = read_schema(schema_file)
    if no_schema:
        fields["schema"] = None
        fields.setdefault("enforce", False)
    if not fields:
        raise click.UsageError("nothing to update: give --title, --description, --schema, --no-schema or "
                               "--enforce/--no-enforce")
    spec = EventTypeUpdate.model_validate(fields)

    async def go() -> EventTypeView:
        async with open_ops() as ops:
            return await ops.update_event_type(name, spec)

    view = run(go())
    click.echo(f"updated {view.name}")


@event_types.command("deprecate")
@click.argument("name")
@click.option("--undo", is_flag=True, help="Take the deprecation back.")
def deprecate(name: str, undo: bool) -> None:
    """Mark a declared type deprecated: hidden from the console's webhook form, a warning when a webhook names
    it; its changes are still delivered.

    \b
    Example:
      hookpost event-types deprecate article.archived
    """
    spec = EventTypeUpdate(deprecated=not undo)

    async def go() -> EventTypeView:
        async with open_ops() as ops:
            return await ops.update_event_type(name, spec)

    view = run(go())
    click.echo(f"{'deprecated' if view.deprecated else 'no longer deprecated'}: {view.name}")


@event_types.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
def export(directory: str) -> None:
    """Write each declared type as a JSON Schema file, DIRECTORY/<type>.json, for receivers' developers.

    The schema describes the change's data, which receivers get as the payload's data.details.

    \b
    Example:
      hookpost event-types export ./schemas
    """
    from hookpost.admin.event_types import export_document

    async def go() -> list[EventTypeView]:
        async with open_ops() as ops:
            return [v for v in await ops.list_event_types() if v.declared]

    views = run(go())
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for view in views:
            (out / f"{view.name}.json").write_text(
                json.dumps(export_document(view), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    click.echo(f"wrote {len(views)} schema file(s) to {directory}")
