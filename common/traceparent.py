"""W3C Trace Context (``traceparent`` / ``tracestate``) as plain functions, and the :class:`TraceContext` an event
keeps. No OpenTelemetry here: Hookpost makes and reads these ids itself, so receivers get a valid ``traceparent``
with or without an SDK (:mod:`hookpost.common.tracing` adds the spans).

>>> ctx = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
>>> ctx.trace_id, ctx.parent_span_id, ctx.sampled
('0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331', True)
>>> format_traceparent(ctx.trace_id, "00f067aa0ba902b7", ctx.sampled)
'00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01'
"""

import hashlib
import random
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE = 512  # characters kept of an incoming tracestate (whole list members only)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TIDY = re.compile(r"[^,\s=]+=[^,\s]*(,[^,\s=]+=[^,\s]*)*")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_random = random.Random()  # seeded from os.urandom; ids need to be unique, not secret (as the OTel SDK's)


class TraceContext(BaseModel):
    """Where a webhook event sits in a distributed trace: the trace id and the span its deliveries hang under
    (the ``fan-out`` span of its change), the sampled flag and the caller's ``tracestate``."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    parent_span_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    sampled: bool = True
    tracestate: str | None = Field(default=None, max_length=MAX_TRACESTATE)


def new_trace_id() -> str:
    """Return a random, valid (non-zero) 128-bit trace id as 32 lowercase hex digits."""
    while True:
        value = _random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """Return a random, valid (non-zero) 64-bit span id as 16 lowercase hex digits."""
    while True:
        value = _random.getrandbits(64)
        if value:
            return f"{value:016x}"


def context_for(key: str) -> TraceContext:
    """Return a trace context derived from ``key`` (the same every time): for an event stored without one (before
    tracing), so that all its attempts still share one trace.

    >>> context_for("evt_1") == context_for("evt_1") != context_for("evt_2")
    True
    """
    digest = hashlib.blake2b(key.encode(), digest_size=24).hexdigest()
    return TraceContext.model_construct(trace_id=digest[:32], parent_span_id=digest[32:], sampled=True,
                                        tracestate=None)


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    """Return a version-00 ``traceparent`` header value."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip() if isinstance(value, str) else None


def parse_traceparent(value: Any, tracestate: Any = None) -> TraceContext | None:
    """Read a ``traceparent`` header value (``str`` or ``bytes``); None if it is missing or invalid (as the W3C
    spec says, an invalid one is ignored and a new trace starts). ``tracestate`` rides along when the
    ``traceparent`` is valid.

    >>> parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01") is None
    True
    """
    text = _text(value)
    if not text:
        return None
    m = _TRACEPARENT.fullmatch(text)  # upper-case hex is invalid (W3C)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    # the pattern above checked the ids: no second validation
    return TraceContext.model_construct(trace_id=trace_id, parent_span_id=span_id, sampled=bool(int(flags, 16) & 1),
                                        tracestate=clean_tracestate(tracestate))


def clean_tracestate(value: Any) -> str | None:
    """Return a ``tracestate`` value trimmed to whole list members within :data:`MAX_TRACESTATE` characters
    (None if empty).

    >>> clean_tracestate(" rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE ")
    'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'
    """
    text = _text(value)
    if not text:
        return None
    if len(text) <= MAX_TRACESTATE and text.count(",") < 32 and _TIDY.fullmatch(text):
        return text  # the usual case: already clean
    kept: list[str] = []
    size = 0
    for member in (m.strip() for m in text.split(",")):
        if not member or "=" not in member:
            continue
        if size + len(member) + bool(kept) > MAX_TRACESTATE or len(kept) == 32:
            break
        kept.append(member)
        size += len(member) + (len(kept) > 1)
    return ",".join(kept) or None


def from_headers(headers: Mapping[str, Any] | None) -> TraceContext | None:
    """Read the trace context of an AMQP message's or an HTTP request's headers (None if there is none)."""
    if not headers:
        return None
    return parse_traceparent(headers.get(TRACEPARENT), headers.get(TRACESTATE))


def to_headers(trace_id: str, span_id: str, sampled: bool, tracestate: str | None) -> dict[str, str]:
    """Return the ``traceparent`` (and ``tracestate``, if any) headers for a span."""
    headers = {TRACEPARENT: format_traceparent(trace_id, span_id, sampled)}
    if tracestate:
        headers[TRACESTATE] = tracestate
    return headers
