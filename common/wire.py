"""Change events on the wire: decode and validate a message body, or encode one for publishing.

Both sides use the same rules, so the producer refuses what the dispatcher would dead-letter as invalid.

>>> decode_change(b'{"id": "c1", "type": "a.b", "entity": {"kind": "a", "id": "1"}}', "application/json").id
'c1'
"""

import json

from pydantic import ValidationError

from hookpost.common.errors import InvalidInputError
from hookpost.common.models import ChangeEvent

JSON_TYPES = {"application/json", "text/json"}
NOTICE_PREFIX = "hookpost."  # event types of Hookpost's own notices; upstream producers may not use them
NOTICE_HEADER = "hookpost-notice"  # set by the dispatcher on the notices it publishes


class InvalidChangeError(InvalidInputError):
    """A change event body that Hookpost cannot accept; the message says why in one line."""


def decode_change(body: bytes, content_type: str | None, *, max_bytes: int = 65536,
                  content_encoding: str | None = None, notice: bool = False) -> ChangeEvent:
    """Validate ``body`` as a change event; raise :class:`InvalidChangeError` with the reason if it is not one.

    A ``hookpost.*`` type is accepted only in a ``notice`` (one the dispatcher published itself).
    """
    if len(body) > max_bytes:
        raise InvalidChangeError(f"too large: {len(body)} bytes (limit {max_bytes})")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype and ctype not in JSON_TYPES:
        raise InvalidChangeError(f"unsupported content type {content_type!r}: use application/json")
    if content_encoding and content_encoding.lower() not in ("utf-8", "utf8", "identity"):
        raise InvalidChangeError(f"unsupported content encoding {content_encoding!r}: send plain UTF-8 JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidChangeError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidChangeError(f"not JSON: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise InvalidChangeError(f"not a JSON object but {type(data).__name__}")
    try:
        change = ChangeEvent.model_validate(data)
    except ValidationError as exc:
        raise InvalidChangeError("; ".join(_describe(e) for e in exc.errors()[:5])) from None
    except RecursionError:
        raise InvalidChangeError("nested too deeply") from None
    if not notice:
        check_not_notice(change.type)
    return change


def check_not_notice(event_type: str) -> None:
    """Refuse a ``hookpost.*`` event type from an upstream producer: those are Hookpost's own notices."""
    if event_type.startswith(NOTICE_PREFIX):
        raise InvalidChangeError(f"type: {event_type!r} is reserved: hookpost.* types are Hookpost's own notices")


def _describe(err: dict[str, object]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))  # type: ignore[union-attr]
    return f"{loc or 'body'}: {err.get('msg')}"


def encode_change(change: ChangeEvent, *, max_bytes: int = 65536) -> bytes:
    """Return the wire body of ``change``; raise :class:`InvalidChangeError` if it is over ``max_bytes``."""
    check_not_notice(change.type)
    body = change.model_dump_json(exclude_none=True).encode()
    if len(body) > max_bytes:
        raise InvalidChangeError(f"too large: {len(body)} bytes (limit {max_bytes})")
    return body
