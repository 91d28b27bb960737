"""Change events on the wire: decode and validate a message body, or encode one for publishing.

Both sides use the same rules, so the producer refuses what the dispatcher would dead-letter as invalid. What is
refused, each with a one-line reason: an empty body; a body over ``max_bytes``; a content type other than
``application/json`` / ``text/json`` (or none), a charset other than UTF-8, any content encoding; bytes that are
not UTF-8 (or a BOM); anything that is not strict JSON (``NaN``, ``Infinity``, ``-Infinity``, a number out of
double range, a repeated key in one object); integers with more than 19 digits or outside 64 bits (what BSON
stores); strings holding a lone UTF-16 surrogate (``"\\ud800"``); keys holding NUL; nesting deeper than
:data:`MAX_DEPTH`; and everything the :class:`ChangeEvent` schema refuses.

>>> decode_change(b'{"id": "c1", "type": "a.b", "entity": {"kind": "a", "id": "1"}}', "application/json").id
'c1'
>>> try:
...     decode_change(b'{"id": "c1", "id": "c2"}', None)
... except InvalidChangeError as exc:
...     print(exc)
duplicate key 'id'
"""

import json
import math
from typing import Any

from pydantic import ValidationError

from hookpost.common.errors import InvalidInputError
from hookpost.common.models import ChangeEvent

JSON_TYPES = {"application/json", "text/json"}
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays accepted in a change event (the event itself is level 1)."""
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
NOTICE_PREFIX = "hookpost."  # event types of Hookpost's own notices; upstream producers may not use them
NOTICE_HEADER = "hookpost-notice"  # set by the dispatcher on the notices it publishes
REPLAY_HEADER = "hookpost-replay-for"  # a replayed change: fanned out for this webhook id only, at its lanes' tails
REPLAY_RANK_HEADER = "hookpost-replay-rank"  # when the replay began (epoch ms): the lane rank of its changes


class InvalidChangeError(InvalidInputError):
    """A change event body that Hookpost cannot accept; the message says why in one printable line."""

    def __init__(self, reason: str) -> None:
        line = " ".join(str(reason).split())[:1000]
        # the reason travels in an AMQP header: never let a lone surrogate or a control character through
        super().__init__(line.encode("utf-8", "backslashreplace").decode("utf-8") or "invalid change event")


class _Refused(ValueError):
    """Raised by the JSON parser hooks; carries the reason to the caller of ``json.loads``."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON: send a finite number or null")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > 19:
        raise _Refused(f"integer with {digits} digits: at most 64-bit integers are accepted")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused(f"integer {text} is out of range: at most 64-bit integers are accepted")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key[:100]!r}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_float, parse_int=_int,
                            parse_constant=_constant)


def _decode(text: str) -> Any:
    """Parse ``text`` with the door's decoder; raise :class:`InvalidChangeError` with the reason."""
    try:
        return _DECODER.decode(text)
    except _Refused as exc:
        raise InvalidChangeError(str(exc)) from None
    except RecursionError:
        raise InvalidChangeError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidChangeError(f"not JSON: {exc}"[:300]) from None


def loads_strict(text: str) -> Any:
    """Parse ``text`` as strict JSON by the door's rules (no NaN/Infinity, no repeated keys, 64-bit integers, at
    most :data:`MAX_DEPTH` levels); raise :class:`InvalidChangeError` with the reason otherwise."""
    value = _decode(text)
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Raise :class:`InvalidChangeError` if ``value`` (parsed JSON) cannot travel or be stored as it is.

    Checks nesting depth, strings and keys that are not valid Unicode (lone surrogates), keys with NUL, floats
    that are not finite and integers outside 64 bits. Iterative: any depth is safe to check.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidChangeError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise InvalidChangeError(f"key {key!r} is not a string")
                    if "\x00" in key:
                        raise InvalidChangeError(f"key {key[:100]!r} holds a NUL character")
                    _check_text(key)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidChangeError(f"{item} is not JSON: send a finite number or null")
        elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            raise InvalidChangeError("integer out of range: at most 64-bit integers are accepted")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise InvalidChangeError(f"lone surrogate \\u{ord(bad):04x} in a string: not valid Unicode") from None


def _check_headers(content_type: str | None, content_encoding: str | None) -> None:
    ctype, _, params = (content_type or "").partition(";")
    ctype = ctype.strip().lower()
    if ctype and ctype not in JSON_TYPES:
        raise InvalidChangeError(f"unsupported content type {content_type!r}: use application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidChangeError(f"unsupported charset {value.strip()!r}: send UTF-8")
    if content_encoding and content_encoding.lower() not in ("utf-8", "utf8", "identity"):
        raise InvalidChangeError(f"unsupported content encoding {content_encoding!r}: send plain UTF-8 JSON")


def decode_change(body: bytes, content_type: str | None, *, max_bytes: int = 65536,
                  content_encoding: str | None = None, notice: bool = False) -> ChangeEvent:
    """Validate ``body`` as a change event; raise :class:`InvalidChangeError` with the reason if it is not one.

    Never raises anything else for any ``body``: a refusal is deterministic, so the caller sets it aside. A
    ``hookpost.*`` type is accepted only in a ``notice`` (one the dispatcher published itself).
    """
    if not body:
        raise InvalidChangeError("empty body: send a JSON object")
    if len(body) > max_bytes:
        raise InvalidChangeError(f"too large: {len(body)} bytes (limit {max_bytes})")
    _check_headers(content_type, content_encoding)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidChangeError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise InvalidChangeError("not JSON: starts with a byte order mark (BOM); send UTF-8 without one")
    data = _decode(text)
    if not isinstance(data, dict):
        raise InvalidChangeError(f"not a JSON object but {type(data).__name__}")
    # the full walk only when it can find something: deep enough brackets, or \u escapes (surrogates, NUL)
    if text.count("{") + text.count("[") > MAX_DEPTH or "\\u" in text:
        check_value(data)
    change = _validate(data)
    if not notice:
        check_not_notice(change.type)
    return change


def _validate(data: dict[str, Any]) -> ChangeEvent:
    try:
        change = ChangeEvent.model_validate(data)
    except ValidationError as exc:
        raise InvalidChangeError("; ".join(_describe(e) for e in exc.errors()[:5])) from None
    except RecursionError:
        raise InvalidChangeError(f"nested deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # a validator that failed in an unforeseen way is still a refusal, not a crash
        raise InvalidChangeError(f"cannot be validated: {type(exc).__name__}: {exc}") from None
    return change


def check_not_notice(event_type: str) -> None:
    """Refuse a ``hookpost.*`` event type from an upstream producer: those are Hookpost's own notices."""
    if event_type.startswith(NOTICE_PREFIX):
        raise InvalidChangeError(f"type: {event_type!r} is reserved: hookpost.* types are Hookpost's own notices")


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc or 'body'}: {err.get('msg')}"


def encode_change(change: ChangeEvent, *, max_bytes: int = 65536) -> bytes:
    """Return the wire body of ``change``; raise :class:`InvalidChangeError` if the dispatcher would refuse it
    (over ``max_bytes``, a reserved ``hookpost.*`` type, or data that is not strict JSON: see :func:`check_value`)."""
    check_not_notice(change.type)
    check_value(change.model_dump(exclude_none=True, exclude={"occurred_at"}))
    body = change.model_dump_json(exclude_none=True).encode()
    if len(body) > max_bytes:
        raise InvalidChangeError(f"too large: {len(body)} bytes (limit {max_bytes})")
    return body
