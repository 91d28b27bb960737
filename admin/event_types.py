"""The event-type catalog: list the known types (declared, or seen by fan-out in the last 30 days) with their
counts; declare, change and deprecate types; check a change against its type's enforced contract; warn about
webhook patterns that match no known type. Every change to a declaration is audited."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hookpost.common.catalog import CATALOG_DAYS, EventTypeDeclare, EventTypeUpdate, EventTypeView
from hookpost.common.contracts import DIALECT, ContractCache, Violation, check_schema
from hookpost.common.errors import InvalidInputError, NotFoundError
from hookpost.common.matching import type_matches, validate_type
from hookpost.common.models import ChangeEvent, from_ms, now_ms
from hookpost.common.wire import NOTICE_PREFIX
from hookpost.store.catalog import DAY_MS, DeclaredType, Seen

if TYPE_CHECKING:
    from hookpost.admin.core import Admin


class ContractViolationError(InvalidInputError):
    """A change whose ``data`` breaks its type's enforced contract; ``path`` says where."""

    def __init__(self, event_type: str, found: Violation) -> None:
        super().__init__(f"contract of {event_type}: {found}")
        self.path = found.path


@dataclass(frozen=True)
class TypeChoice:
    """A known type as the webhook form offers it."""

    name: str
    title: str
    deprecated: bool


def _view(name: str, declared: DeclaredType | None, seen: Seen | None) -> EventTypeView:
    return EventTypeView(
        name=name, title=declared.title if declared else "", description=declared.description if declared else "",
        declared=declared is not None, deprecated=bool(declared and declared.deprecated),
        enforce=bool(declared and declared.enforce), schema_=declared.schema if declared else None,
        count=seen.count if seen else 0, first_seen=from_ms(seen.first_ms) if seen else None,
        last_seen=from_ms(seen.last_ms) if seen else None)


def export_document(view: EventTypeView) -> dict[str, Any]:
    """Return a declared type as a standalone JSON Schema document for receivers: the schema of the change's
    ``data`` (which receivers get as the payload's ``data.details``), with the title, the description and
    ``deprecated`` from the declaration."""
    doc: dict[str, Any] = {"$schema": DIALECT, "title": view.title or view.name}
    if view.description:
        doc["description"] = view.description
    if view.deprecated:
        doc["deprecated"] = True
    doc.update(view.schema_ or {})
    doc["$schema"] = DIALECT
    doc["x-hookpost-event-type"] = view.name
    doc["x-hookpost-enforced"] = view.enforce
    return doc


class EventTypeOps:
    """Read and manage the event-type catalog."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.contracts = ContractCache(self.repo.declared_all, admin.settings.webhook_cache_ttl)

    @property
    def repo(self) -> Any:
        """The catalog's store repository."""
        return self.admin.store.catalog

    async def list(self) -> list[EventTypeView]:
        """Return the known types by name: declared ones, and those seen in the last 30 days, with counts."""
        declared = {d.name: d for d in await self.repo.declared_all()}
        seen = await self.repo.seen_since(now_ms() - (CATALOG_DAYS - 1) * DAY_MS)
        return [_view(name, declared.get(name), seen.get(name)) for name in sorted({*declared, *seen})]

    async def get(self, name: str) -> EventTypeView:
        """Return one known type (raise :class:`NotFoundError` if it is neither declared nor seen lately)."""
        declared = await self.repo.get(name)
        seen = (await self.repo.seen_since(now_ms() - (CATALOG_DAYS - 1) * DAY_MS)).get(name)
        if declared is None and seen is None:
            raise NotFoundError(f"no event type {name!r}: it is not declared and was not seen in the last "
                                f"{CATALOG_DAYS} days")
        return _view(name, declared, seen)

    async def declare(self, spec: EventTypeDeclare, *, actor: str) -> EventTypeView:
        """Declare a type (or declare it again, replacing every field); the schema is checked; audited."""
        name = validate_type(spec.name)
        schema = self._checked(name, spec.schema_, spec.enforce)
        await self.repo.save(name, title=spec.title, description=spec.description, schema=schema,
                             enforce=spec.enforce, deprecated=spec.deprecated)
        await self.admin.record(actor, "event_type.declared", name, title=spec.title, enforce=spec.enforce,
                                deprecated=spec.deprecated, schema=schema is not None)
        self.contracts.invalidate()
        return await self.get(name)

    async def update(self, name: str, spec: EventTypeUpdate, *, actor: str) -> EventTypeView:
        """Change the fields given in ``spec`` of a declared type; audited with the changed fields."""
        old = await self.repo.get(name)
        if old is None:
            raise NotFoundError(f"no declared event type {name!r}: declare it first")
        given = spec.model_fields_set
        if not given:
            raise InvalidInputError("nothing to update: give title, description, schema, enforce or deprecated")
        schema = spec.schema_ if "schema_" in given else old.schema
        enforce = spec.enforce if spec.enforce is not None else old.enforce
        fields = {"title": spec.title if spec.title is not None else old.title,
                  "description": spec.description if spec.description is not None else old.description,
                  "schema": self._checked(name, schema, enforce), "enforce": enforce,
                  "deprecated": spec.deprecated if spec.deprecated is not None else old.deprecated}
        await self.repo.save(name, **fields)
        changed = sorted(k.rstrip("_") for k in given)
        await self.admin.record(actor, "event_type.updated", name, changed=changed)
        self.contracts.invalidate()
        return await self.get(name)

    def _checked(self, name: str, schema: dict[str, Any] | None, enforce: bool) -> dict[str, Any] | None:
        if schema is not None:
            check_schema(schema)
        if enforce and schema is None:
            raise InvalidInputError(f"{name}: enforce needs a schema (give one, or leave enforcement off)")
        if enforce and name.startswith(NOTICE_PREFIX):
            raise InvalidInputError(f"{name}: Hookpost's own notices cannot carry an enforced contract")
        return schema

    async def violation(self, change: ChangeEvent) -> None:
        """Raise :class:`ContractViolationError` if ``change`` breaks its type's enforced contract (through the
        same cache as the dispatcher's, so a new contract applies here within the webhook cache TTL)."""
        if change.type.startswith(NOTICE_PREFIX):
            return
        found = await self.contracts.check(change.type, change.data)
        if found is not None:
            raise ContractViolationError(change.type, found)

    async def choices(self) -> list[TypeChoice]:
        """The known types for the webhook form, by name (deprecated ones marked)."""
        return [TypeChoice(v.name, v.title, v.deprecated) for v in await self.list()]

    async def warnings_for(self, patterns: list[str]) -> list[str]:
        """Return one warning per pattern that matches no known type, and per deprecated type named exactly.
        While the catalog knows no type at all (a new installation) there is nothing to compare with: none."""
        known = await self.list()
        if not known:
            return []
        out = []
        deprecated = {v.name for v in known if v.deprecated}
        for pattern in patterns:
            if pattern in deprecated:
                out.append(f"event type {pattern!r} is deprecated (its changes are still delivered)")
            elif not any(type_matches(pattern, v.name) for v in known):
                out.append(f"{pattern!r} matches no known event type (declared, or seen in the last "
                           f"{CATALOG_DAYS} days): check for a typo")
        return out


def schema_from_file(text: str, source: str) -> dict[str, Any]:
    """Read a JSON Schema file's text (raise :class:`InvalidInputError` naming ``source`` if it is not JSON)."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return check_schema(schema)
