"""Time-sortable ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Events and webhooks carry such ids with a prefix (``evt_``, ``wh_``), so ordering by ``_id`` is ordering by
creation time (and an id tells when it was made: :func:`id_time_ms`).

>>> new_id("evt").startswith("evt_")
True
"""

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit value as two symbols


def new_id(prefix: str, at_ms: int | None = None) -> str:
    """Return ``prefix_`` + a 26-character ULID made at ``at_ms`` (now by default)."""
    ms = int(time.time() * 1000) if at_ms is None else at_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")  # 130 bits, the top two zero
    return prefix + "_" + "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def id_time_ms(ident: str) -> int | None:
    """Return the creation time (epoch ms) encoded in an id, or None if it is not one of ours."""
    _, _, body = ident.partition("_")
    if len(body) != 26:
        return None
    value = 0
    for ch in body[:10].upper():
        idx = _ALPHABET.find(ch)
        if idx < 0:
            return None
        value = value * 32 + idx
    return value
