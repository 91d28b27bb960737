"""The API's routes over RabbitMQ's set-aside queues (``GET /invalid``, ``POST /invalid/replay``,
``GET /failed``), read over the server's broker connection so that an operator needs only a token, and the
``Hookpost-Version`` header every answer carries (a newer CLI tells an older server by it).

The handlers are listed in :data:`hookpost.web.api.ROUTES` like every other route; :func:`setup` adds the
connection and the header to the app.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hookpost.admin import setaside
from hookpost.admin.setaside import SetAsideBroker

VERSION_HEADER = "Hookpost-Version"
BROKER_KEY = web.AppKey("hookpost_setaside_broker", SetAsideBroker)


def server_version() -> str:
    """Return this server's Hookpost version."""
    try:
        return version("hookpost")
    except PackageNotFoundError:
        return "0"


class SetAsideItems(BaseModel):
    """Messages found in a set-aside queue (oldest first, none removed), how many it holds, and whether only its
    head (10,000 messages or 64 MiB) was looked at."""

    items: list[dict[str, Any]]
    total: int
    truncated: bool = False


class InvalidReplayRequest(BaseModel):
    """Which set-aside change events to publish again: ``ids`` (as ``GET /invalid`` names them) or ``all``."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=1000)
    all: bool = False
    dry_run: bool = False
    force: bool = False


class InvalidReplayKept(BaseModel):
    """A chosen change event that stayed, and why."""

    id: str
    reason: str | None = None
    error: str | None = None


class InvalidReplayResult(BaseModel):
    """What a replay did (or, with ``dry_run``, would do)."""

    dry_run: bool
    replayed: list[str]
    still_invalid: list[InvalidReplayKept]
    failed: list[InvalidReplayKept]
    not_found: list[str]
    kept: int
    truncated: bool


async def list_invalid(request: web.Request) -> web.Response:
    """List the change events set aside in PREFIX.invalid."""
    from hookpost.web.api import SETTINGS_KEY, query_limit, reply

    found = await setaside.list_invalid(request.app[SETTINGS_KEY], query_limit(request), request.app[BROKER_KEY])
    return reply(SetAsideItems(**found.as_dict()))


async def list_failed(request: web.Request) -> web.Response:
    """List the failure notices in PREFIX.failed."""
    from hookpost.web.api import SETTINGS_KEY, query_limit, reply

    found = await setaside.list_failed(request.app[SETTINGS_KEY], query_limit(request), request.app[BROKER_KEY])
    return reply(SetAsideItems(**found.as_dict()))


async def replay_invalid(request: web.Request) -> web.Response:
    """Publish set-aside change events again."""
    from hookpost.admin.events import InvalidFieldError
    from hookpost.web.api import SETTINGS_KEY, body_of, reply

    spec: InvalidReplayRequest = await body_of(request, InvalidReplayRequest)
    if bool(spec.ids) == spec.all:
        raise InvalidFieldError("ids", "give ids, or all: true")
    report = await setaside.replay_invalid(request.app[SETTINGS_KEY], ids=spec.ids, everything=spec.all,
                                           dry_run=spec.dry_run, force=spec.force, broker=request.app[BROKER_KEY])
    return reply(InvalidReplayResult.model_validate(report.as_dict()))


async def add_version_header(_request: web.Request, response: web.StreamResponse) -> None:
    """Name this server's version on every answer (``Hookpost-Version``)."""
    response.headers[VERSION_HEADER] = server_version()


def setup(app: web.Application) -> None:
    """Give ``app`` the set-aside routes' broker connection (closed with the app) and the version header."""
    from hookpost.web.api import SETTINGS_KEY

    broker = SetAsideBroker(app[SETTINGS_KEY])
    app[BROKER_KEY] = broker
    app.on_response_prepare.append(add_version_header)

    async def close(_app: web.Application) -> None:
        await broker.close()

    app.on_cleanup.append(close)
