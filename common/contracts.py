"""Event-type contracts: JSON Schemas (draft 2020-12) for a change's ``data``, checked when declared and compiled
once for fan-out and ``POST /changes``.

A schema is refused when it is not valid JSON Schema, names another dialect in ``$schema``, or holds a ``$ref``
(or ``$dynamicRef``) that leaves the document: a contract must never make the dispatcher fetch anything.

>>> check_schema({"type": "object", "required": ["total"]})["required"]
['total']
>>> validator = compile_schema({"type": "object", "properties": {"total": {"type": "number"}}})
>>> violation(validator, {"total": "12"})
Violation(path='$.data.total', rule='type', message="'12' is not of type 'number'")
>>> violation(validator, {"total": 12}) is None
True
"""

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from hookpost.common.errors import InvalidInputError
from hookpost.common.refresh import TtlRefresh

log = logging.getLogger("hookpost.contracts")

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_SCHEMA_BYTES = 64 * 1024
_REF_KEYS = ("$ref", "$dynamicRef")


class SchemaRefusedError(InvalidInputError):
    """A schema that cannot be a contract (not valid JSON Schema, another dialect, or a remote ``$ref``)."""


@dataclass(frozen=True)
class Violation:
    """Why a change's ``data`` breaks its type's contract: where (a JSON path from the change) and which rule."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"at {self.path}: {self.message} (schema rule '{self.rule}')"


def _remote_refs(node: Any, where: str = "$") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REF_KEYS and isinstance(value, str) and not value.startswith("#"):
                found.append(f"{where}.{key} = {value[:100]!r}")
            found += _remote_refs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _remote_refs(value, f"{where}[{i}]")
    return found


def check_schema(schema: Any) -> dict[str, Any]:
    """Return ``schema`` if it can be a contract; raise :class:`SchemaRefusedError` saying why not."""
    if not isinstance(schema, dict):
        raise SchemaRefusedError("a schema must be a JSON object (draft 2020-12)")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise SchemaRefusedError(f"schema over {MAX_SCHEMA_BYTES // 1024} KiB")
    dialect = schema.get("$schema")
    if dialect is not None and str(dialect).rstrip("#") != DIALECT:
        raise SchemaRefusedError(f"$schema must be {DIALECT} (draft 2020-12), not {str(dialect)[:100]!r}")
    remote = _remote_refs(schema)
    if remote:
        raise SchemaRefusedError(f"remote $ref refused (only '#…' references inside the schema): {remote[0]}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path) or " (top level)"
        raise SchemaRefusedError(f"not a valid JSON Schema at schema{where}: {exc.message[:300]}") from None
    return schema


def compile_schema(schema: dict[str, Any]) -> Draft202012Validator:
    """Return a reusable validator for ``schema`` (checked by :func:`check_schema` first)."""
    return Draft202012Validator(check_schema(schema))


def violation(validator: Draft202012Validator, data: Any) -> Violation | None:
    """Return the most relevant way ``data`` (a change's ``data``) breaks the schema, or None if it fits."""
    error: ValidationError | None = best_match(validator.iter_errors(data))
    if error is None:
        return None
    path = "$.data" + error.json_path[1:]
    return Violation(path=path, rule=str(error.validator), message=" ".join(error.message.split())[:300])


class Declaration(Protocol):
    """What the contract cache needs of a declared type."""

    name: str
    schema: dict[str, Any] | None
    enforce: bool


class ContractCache:
    """The declared types and their compiled validators, at most ``ttl`` seconds old.

    Past half the TTL a read starts a reload in the background and answers from what is loaded; a cache never
    loaded, or idle past the TTL, reloads before it answers. A validator is compiled once per schema and kept
    across reloads. A stored schema that does not compile (edited by hand) is logged and not enforced.
    """

    def __init__(self, load: Callable[[], Awaitable[Sequence[Declaration]]], ttl: float) -> None:
        self.load = load
        self.ttl = ttl
        self._declared: dict[str, Declaration] = {}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        self._by_name: dict[str, Draft202012Validator] = {}
        self._refresh = TtlRefresh(ttl, self._reload, what="event-type cache")
        self.reloads = 0

    async def declared(self) -> dict[str, Declaration]:
        """Return the declared types by name."""
        await self._refresh.ensure()
        return self._declared

    async def _reload(self) -> None:
        declared = {d.name: d for d in await self.load()}
        validators: dict[tuple[str, str], Draft202012Validator] = {}
        for d in declared.values():
            if d.schema is None or not d.enforce:
                continue
            key = (d.name, json.dumps(d.schema, sort_keys=True))
            found = self._validators.get(key)
            if found is None:
                try:
                    found = compile_schema(d.schema)
                except SchemaRefusedError as exc:
                    log.warning("stored schema of an event type does not compile; not enforced",
                                extra={"type": d.name, "error": str(exc)[:300]})
                    continue
            validators[key] = found
        self._declared = declared
        self._validators = validators
        self._by_name = {name: v for (name, _), v in validators.items()}
        self._refresh.loaded()
        self.reloads += 1

    async def check(self, event_type: str, data: Any) -> Violation | None:
        """Return how ``data`` breaks the enforced contract of ``event_type``, or None (also when the type has
        no enforced contract)."""
        await self.declared()
        validator = self._by_name.get(event_type)
        return violation(validator, data) if validator is not None else None

    def invalidate(self) -> None:
        """Make the next read reload."""
        self._refresh.invalidate()
