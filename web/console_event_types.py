"""Console page of the event-type catalog (``/event-types``: the known types with their 30-day counts and
schemas), and the event-type picker of the webhook forms (known types grouped by their first word, with titles;
deprecated ones hidden unless the webhook has them; a field note for patterns that match no known type)."""

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hookpost.admin.event_types import TypeChoice
from hookpost.common.catalog import CATALOG_DAYS
from hookpost.common.records import Role
from hookpost.web.console import admin_of, need, render


@dataclass
class TypePicker:
    """What the webhook form shows for event types: the choices by group, which are chosen, the other patterns
    (typed), and the warnings about what is chosen."""

    groups: list[tuple[str, list[TypeChoice]]]
    chosen: set[str]
    other: str
    warnings: list[str] = field(default_factory=list)


def split_types(text: str) -> list[str]:
    """Event types typed one per line or separated by commas or spaces."""
    return [t for t in text.replace(",", " ").split() if t]


async def type_picker(request: web.Request, typed: str, *, warn: bool = False) -> dict[str, Any]:
    """The ``picker`` of the webhook form's template for the event types ``typed`` (one per line): the known
    types as choices, and, with ``warn``, the catalog's warnings about them as field notes."""
    ops = admin_of(request).event_types
    types = split_types(typed)
    choices = await ops.choices()
    names = {c.name for c in choices}
    chosen = {t for t in types if t in names}
    groups: dict[str, list[TypeChoice]] = {}
    for c in choices:
        if c.deprecated and c.name not in chosen:  # hidden from the form, unless the webhook has it
            continue
        groups.setdefault(c.name.split(".", 1)[0], []).append(c)
    other = "\n".join(t for t in types if t not in chosen)
    warnings = await ops.warnings_for(types) if warn and types else []
    return {"picker": TypePicker(sorted(groups.items()), chosen, other, warnings)}


async def event_types_page(request: web.Request) -> web.Response:
    """The catalog: every known type, its title, 30-day count, first and last sighting, and schema."""
    need(request, Role.VIEWER)
    views = await admin_of(request).event_types.list()
    return await render(request, "event_types.html", {
        "types": views, "days": CATALOG_DAYS,
        "pretty": lambda schema: json.dumps(schema, indent=2, ensure_ascii=False)})


def add_routes(app: web.Application) -> None:
    """Register the catalog page."""
    app.router.add_get("/event-types", event_types_page)
