"""Event-type subscriptions: exact names (``order.created``) and ``*`` patterns (``article.*``, ``*``).

``*`` matches one or more whole dot-separated segments at its place, so ``article.*`` matches
``article.updated`` and ``article.price.changed`` but not ``article`` or ``articles.updated``.

>>> type_matches("article.*", "article.updated")
True
>>> type_matches("order.created", "order.cancelled")
False
"""

import re
from collections.abc import Iterable
from functools import lru_cache

from hookpost.common.errors import InvalidInputError

_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_-]+)(\.(\*|[A-Za-z0-9_-]+))*$")
_TYPE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription (dot-separated words or ``*``), else raise."""
    if not _PATTERN.match(pattern or ""):
        raise InvalidInputError(
            f"invalid event type {pattern!r}: use dot-separated words such as 'article.updated' or 'article.*'"
        )
    return pattern


def validate_type(event_type: str) -> str:
    """Return ``event_type`` if it is a concrete event type (no wildcard), else raise."""
    if not _TYPE.match(event_type or ""):
        raise InvalidInputError(f"invalid event type {event_type!r}: use dot-separated words such as 'article.updated'")
    return event_type


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = [r"[^.]+(?:\.[^.]+)*" if p == "*" else re.escape(p) for p in pattern.split(".")]
    return re.compile("^" + r"\.".join(parts) + "$")


def type_matches(pattern: str, event_type: str) -> bool:
    """Tell whether a subscription ``pattern`` covers ``event_type``."""
    if "*" not in pattern:
        return pattern == event_type
    if pattern == "*":
        return True
    if pattern.endswith(".*") and pattern.count("*") == 1:  # the common ``article.*``, without a regex
        return len(event_type) > len(pattern) - 1 and event_type.startswith(pattern[:-1])
    return _compile(pattern).match(event_type) is not None


def any_matches(patterns: Iterable[str], event_type: str) -> bool:
    """Tell whether any of ``patterns`` covers ``event_type``."""
    return any(type_matches(p, event_type) for p in patterns)
