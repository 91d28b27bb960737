"""Durations written the way operators write them: ``250ms``, ``10s``, ``5m``, ``2h``, ``7d``.

>>> parse_duration("1m30s")
90.0
>>> format_duration(5400)
'1h30m'
"""

import re

from hookpost.common.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | float | int) -> float:
    """Return the number of seconds in ``text`` (``"250ms"``, ``"1h30m"``; a bare number means seconds).

    Raises :class:`ConfigError` with the offending text when it cannot be read.
    """
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"duration must not be negative: {text}")
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    if not s:
        raise ConfigError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 250ms, 10s, 5m, 2h, 7d)")
    return total


def parse_duration_list(text: str) -> tuple[float, ...]:
    """Parse a comma list of durations (``"10s,1m,5m"``) into seconds."""
    parts = [p for p in (x.strip() for x in str(text).split(",")) if p]
    return tuple(parse_duration(p) for p in parts)


def format_duration(seconds: float) -> str:
    """Write ``seconds`` compactly with the largest units that divide it (``250ms``, ``90s`` → ``1m30s``)."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    ms = round(seconds * 1000)
    out = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            n, ms = divmod(ms, size)
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def format_age(seconds: float) -> str:
    """Write an age the way a table shows it: one or two units, no milliseconds (``3m``, ``2h5m``, ``4d``)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    return f"{s // 86400}d"
