"""Logging set-up: plain text on a terminal, one JSON object per line otherwise (``HOOKPOST_LOG_FORMAT``).

Pass structured fields with ``extra``; they become keys of the JSON line and ``key=value`` pairs in text::

    log.info("delivered", extra={"event_id": "evt_…", "attempt": 1, "status": 200})
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from hookpost.common.tracing import log_fields

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, every ``extra`` field, and the
    ``trace_id`` / ``span_id`` of the current span when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **log_fields(),
            **_fields(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Format a record as ``time level logger message key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the text line for ``record``."""
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def setup_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """Configure the root logger once: ``fmt`` is ``text``, ``json`` or ``auto`` (json unless stderr is a tty)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
