"""What every command shares: one-line errors with meaningful exit codes, settings, output helpers.

Exit codes: 0 success, 1 not found or a failed operation, 2 bad usage or bad input, 130 interrupted.
"""

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure, PyMongoError

from hookpost.common.durations import parse_duration
from hookpost.common.errors import ConfigError, HookpostError, InvalidInputError, NotFoundError
from hookpost.common.settings import Settings, load_settings, mask_url
from hookpost.store import Store

if TYPE_CHECKING:
    from hookpost.admin import Admin
    from hookpost.common.amqp import AmqpConnection

T = TypeVar("T")

# a short command reports failures as one line itself: without logging set up (the dispatcher and janitor set it
# up), library warnings would otherwise reach stderr through logging's last-resort handler
logging.getLogger("hookpost").addHandler(logging.NullHandler())


def fail(message: str, code: int = 1) -> "click.exceptions.Exit":
    """Print ``hookpost: error: message`` on stderr and return the exit to raise."""
    click.echo(f"hookpost: error: {message}", err=True)
    return click.exceptions.Exit(code)


class HookpostGroup(click.Group):
    """A click group whose errors are one plain line on stderr, never a traceback."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; turn every expected error into one line and an exit code."""
        code = 0
        try:
            rv = super().main(args, prog_name or "hookpost", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("hookpost: aborted", err=True)
            code = 1
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"hookpost: error: {exc.format_message()}{hint}", err=True)
            code = 2
        except click.ClickException as exc:
            click.echo(f"hookpost: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except (InvalidInputError, ConfigError) as exc:
            click.echo(f"hookpost: error: {exc}", err=True)
            code = 2
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            click.echo(f"hookpost: error: {loc}: {first['msg']}".replace(": : ", ": "), err=True)
            code = 2
        except NotFoundError as exc:
            click.echo(f"hookpost: error: {exc}", err=True)
            code = 1
        except HookpostError as exc:
            click.echo(f"hookpost: error: {exc}", err=True)
            code = 1
        except ConnectionFailure:
            s = load_settings()
            click.echo(f"hookpost: error: cannot reach MongoDB at {mask_url(s.mongodb_url)}", err=True)
            code = 1
        except PyMongoError as exc:
            click.echo(f"hookpost: error: MongoDB: {str(exc)[:300]}", err=True)
            code = 1
        except KeyboardInterrupt:
            click.echo("hookpost: interrupted", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


_settings: dict[str, Settings] = {}


def settings() -> Settings:
    """Return the effective settings (loaded once per process)."""
    if "s" not in _settings:
        _settings["s"] = load_settings()
    return _settings["s"]


def reset_settings() -> None:
    """Forget loaded settings and the chosen target (tests change the environment between invocations)."""
    from hookpost.cli.target import reset

    _settings.clear()
    reset()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion in a new event loop."""
    return asyncio.run(coro)


@asynccontextmanager
async def open_store(s: Settings | None = None) -> AsyncIterator[Store]:
    """Open the store for one command and close it afterwards."""
    s = s or settings()
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_admin(s: Settings | None = None, *, publish_timeout: float = 10.0) -> "AsyncIterator[Admin]":
    """Open the operations (store, and the broker on first use) for one command; close them afterwards."""
    from hookpost.admin import Admin

    async with Admin.open(s or settings(), publish_timeout=publish_timeout) as admin:
        yield admin


def run_watching(coro: Coroutine[Any, Any, T], job: list[str], kind: str) -> T:
    """Run ``coro``, which watches a server job and puts its id in ``job`` once it has started: Ctrl-C then stops
    watching (exit 130) and says the job keeps running."""
    try:
        return run(coro)
    except KeyboardInterrupt:
        if not job:
            raise
        click.echo(f"hookpost: stopped watching; {kind} job {job[0]} keeps running on the server "
                   f"(see it with 'hookpost events job {job[0]}')", err=True)
        raise click.exceptions.Exit(130) from None


def actor() -> str:
    """Return who runs this command, as the audit log names them (``cli:<OS user>``)."""
    from hookpost.admin import os_actor

    return os_actor()


@asynccontextmanager
async def open_broker(s: Settings | None = None) -> "AsyncIterator[AmqpConnection]":
    """Connect to the broker for one command and close the connection afterwards."""
    from hookpost.common.amqp import AmqpConnection  # imported here: most commands never talk to the broker

    s = s or settings()
    conn = await AmqpConnection.connect(s.rabbitmq_urls, name="hookpost-cli")
    try:
        yield conn
    finally:
        await conn.close()


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a plain aligned table (two spaces between columns) like ``kubectl get``."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def shorten(text: str | None, width: int) -> str:
    """Cut ``text`` to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """Read ``--since``/``--until``: a duration ago (``2h``, ``7d``) or an ISO-8601 time (UTC if no zone)."""
    from hookpost.admin.events import parse_when as parse

    return parse(text, now=now)


class DurationType(click.ParamType):
    """A click parameter holding a duration in seconds (``30s``, ``2h``, ``7d``)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Return ``value`` in seconds or fail with a one-line usage error."""
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
