"""The routes of ``/api/v1``: one table (:data:`ROUTES`) that both the router and the OpenAPI document use.

Each route names the role it needs, its query parameters, its request body model and its response model (all
pydantic models from :mod:`hookpost.common`); handlers are a few lines over :mod:`hookpost.admin`.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from hookpost.admin import Admin
from hookpost.admin.event_types import ContractViolationError
from hookpost.admin.events import InvalidFieldError, parse_filter, parse_when
from hookpost.common.durations import parse_duration
from hookpost.common.errors import ConfigError
from hookpost.common.models import ChangeEvent
from hookpost.common.records import (
    AuditEntry,
    ChangeAccepted,
    EventCreated,
    EventDetail,
    EventPage,
    Job,
    ReplayCount,
    ReplayRequest,
    RestartCount,
    RestartOne,
    RestartReport,
    RestartRequest,
    Role,
    RotateSecret,
    Stats,
    TokenCreate,
    TokenCreated,
    TokenView,
    WebhookCreate,
    WebhookCreated,
    WebhookSaved,
    WebhookSecret,
    WebhookUpdate,
    WebhookView,
)
from hookpost.common.settings import Settings
from hookpost.store.events import EventFilter
from hookpost.web.api_broker import (
    InvalidReplayRequest,
    InvalidReplayResult,
    SetAsideItems,
    list_failed,
    list_invalid,
    replay_invalid,
)
from hookpost.web.auth import TOKEN_KEY
from hookpost.web.problems import ProblemError, read_json, validation_detail

PREFIX = "/api/v1"
MAX_LIMIT = 500
ADMIN_KEY = web.AppKey("hookpost_admin", Admin)
SETTINGS_KEY = web.AppKey("hookpost_settings", Settings)


@dataclass(frozen=True)
class Param:
    """A query parameter: name, JSON schema, description, whether it repeats."""

    name: str
    schema: dict[str, Any]
    description: str
    repeat: bool = False


@dataclass(frozen=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    role: Role
    summary: str
    status: int = 200
    response: Any = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: tuple[Param, ...] = field(default_factory=tuple)
    also: tuple[int, ...] = ()  # other success statuses with the same response model
    errors: tuple[tuple[int, str], ...] = ()  # error answers particular to this route

    @property
    def op_id(self) -> str:
        """The OpenAPI operationId (the handler's name)."""
        return self.handler.__name__.lstrip("_")


def admin_of(request: web.Request) -> Admin:
    """Return the :class:`Admin` of the app serving ``request``."""
    return request.app[ADMIN_KEY]


def actor_of(request: web.Request) -> str:
    """Return the audit name of the caller (``token:<name>``)."""
    return f"token:{request[TOKEN_KEY].name}"


def reply(value: Any, status: int = 200, kind: Any = None) -> web.Response:
    """Serialise a model (or a list of models, with ``kind``) as a JSON response."""
    if isinstance(value, BaseModel):
        body = value.model_dump_json().encode()
    else:
        body = TypeAdapter(kind).dump_json(value)
    return web.Response(status=status, body=body, content_type="application/json")


async def body_of(request: web.Request, model: type[BaseModel], required: bool = True) -> Any:
    """Read and validate the JSON body as ``model`` (400 naming the field if it does not fit)."""
    data = await read_json(request)
    if data is None:
        if required:
            raise ProblemError(400, "a JSON body is required")
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail, field = validation_detail(exc)
        raise ProblemError(400, detail, field=field) from None


def query_one(request: web.Request, name: str) -> str | None:
    """Return the single value of query parameter ``name`` (400 if it is given twice)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidFieldError(name, f"{name} may be given once")
    return values[0] if values else None


def query_since(request: web.Request) -> datetime | None:
    """Return the ``since`` parameter (``24h``, ``2d`` or an ISO time) as a time, or None (400 if unreadable)."""
    since = query_one(request, "since")
    try:
        return parse_when(since) if since else None
    except Exception as exc:
        raise InvalidFieldError("since", f"since: {exc}") from None


def query_limit(request: web.Request, default: int = 50) -> int:
    """Return the ``limit`` parameter (1…500)."""
    raw = query_one(request, "limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidFieldError("limit", f"limit must be a whole number, not {raw[:50]!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidFieldError("limit", f"limit must be between 1 and {MAX_LIMIT}")
    return value


def query_filter(request: web.Request) -> EventFilter:
    """Read the event filters from the query string (the same words as the CLI's options)."""
    return parse_filter(request.query.getall("status", []), query_one(request, "type"),
                        query_one(request, "webhook"), query_one(request, "entity"), query_one(request, "since"),
                        query_one(request, "until"), query_one(request, "search"), query_one(request, "before"))


# --- webhooks ------------------------------------------------------------------------------------------------

async def list_webhooks(request: web.Request) -> web.Response:
    """List webhooks."""
    return reply(await admin_of(request).webhooks.list(), kind=list[WebhookView])


async def create_webhook(request: web.Request) -> web.Response:
    """Create a webhook."""
    spec = await body_of(request, WebhookCreate)
    admin = admin_of(request)
    hook = await admin.webhooks.create(spec, actor=actor_of(request))
    view = await admin.webhooks.view(hook)
    warnings = await admin.event_types.warnings_for(hook.event_types)
    return reply(WebhookCreated(**view.model_dump(), secret=hook.secret, warnings=warnings), 201)


async def get_webhook(request: web.Request) -> web.Response:
    """Show a webhook."""
    return reply(await admin_of(request).webhooks.get(request.match_info["id"]))


async def update_webhook(request: web.Request) -> web.Response:
    """Change a webhook."""
    spec = await body_of(request, WebhookUpdate)
    admin = admin_of(request)
    hook = await admin.webhooks.update(request.match_info["id"], spec, actor=actor_of(request))
    warnings = await admin.event_types.warnings_for(hook.event_types) if spec.event_types is not None else []
    return reply(WebhookSaved(**(await admin.webhooks.view(hook)).model_dump(), warnings=warnings))


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete a webhook."""
    await admin_of(request).webhooks.delete(request.match_info["id"], actor=actor_of(request))
    return web.Response(status=204)


async def enable_webhook(request: web.Request) -> web.Response:
    """Enable a webhook."""
    admin = admin_of(request)
    hook = await admin.webhooks.set_active(request.match_info["id"], True, actor=actor_of(request))
    return reply(await admin.webhooks.view(hook))


async def disable_webhook(request: web.Request) -> web.Response:
    """Disable a webhook."""
    admin = admin_of(request)
    hook = await admin.webhooks.set_active(request.match_info["id"], False, actor=actor_of(request))
    return reply(await admin.webhooks.view(hook))


async def get_webhook_secret(request: web.Request) -> web.Response:
    """Reveal a webhook's signing secret(s)."""
    return reply(await admin_of(request).webhooks.reveal_secret(request.match_info["id"], actor=actor_of(request)))


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """Rotate a webhook's signing secret."""
    spec = await body_of(request, RotateSecret, required=False)
    try:
        grace = parse_duration(spec.grace) if isinstance(spec.grace, str) else float(spec.grace)
    except ConfigError as exc:
        raise InvalidFieldError("grace", f"grace: {exc}") from None
    if not 0 <= grace <= 365 * 86400:
        raise InvalidFieldError("grace", "grace must be between 0 and 365 days")
    return reply(await admin_of(request).webhooks.rotate_secret(request.match_info["id"], grace,
                                                                actor=actor_of(request)))


async def test_webhook(request: web.Request) -> web.Response:
    """Send a test event to a webhook."""
    event = await admin_of(request).webhooks.send_test(request.match_info["id"], actor=actor_of(request))
    return reply(EventCreated(event_id=event.id), 202)


async def replay_webhook(request: web.Request) -> web.Response:
    """Replay the changes a webhook missed (a background job), or count them (dry_run)."""
    spec: ReplayRequest = await body_of(request, ReplayRequest)
    admin = admin_of(request)
    if spec.dry_run:
        return reply(await admin.replays.run(request.match_info["id"], spec, actor=actor_of(request)))
    return reply(await admin.jobs.start_replay(request.match_info["id"], spec, actor=actor_of(request)), 202)


# --- events --------------------------------------------------------------------------------------------------

async def list_events(request: web.Request) -> web.Response:
    """List events."""
    flt = query_filter(request)
    return reply(await admin_of(request).events.list(flt, limit=query_limit(request)))


async def get_event(request: web.Request) -> web.Response:
    """Show an event with its attempts."""
    return reply(await admin_of(request).events.get(request.match_info["id"]))


async def restart_event(request: web.Request) -> web.Response:
    """Restart one event."""
    spec = await body_of(request, RestartOne, required=False)
    return reply(await admin_of(request).events.restart_ids([request.match_info["id"]], actor=actor_of(request),
                                                            force=spec.force))


async def restart_events(request: web.Request) -> web.Response:
    """Restart events by filter (a background job), or count them (dry_run)."""
    spec: RestartRequest = await body_of(request, RestartRequest)
    flt = parse_filter(spec.status, spec.type, spec.webhook, spec.entity, spec.since, spec.until, spec.search)
    admin = admin_of(request)
    if spec.dry_run:
        return reply(await admin.events.restart_count(flt, spec.force))
    job = await admin.jobs.start_restart(flt, actor=actor_of(request), force=spec.force)
    return reply(RestartCount(matched=job.total, restarted=0, job=job.id), 202)


async def get_job(request: web.Request) -> web.Response:
    """Show a background job."""
    return reply(await admin_of(request).jobs.get(request.match_info["id"]))


async def get_stats(request: web.Request) -> web.Response:
    """Counts of events."""
    return reply(await admin_of(request).events.stats(query_since(request)))


# --- changes, tokens, audit ----------------------------------------------------------------------------------

async def publish_change(request: web.Request) -> web.Response:
    """Publish a change event."""
    limit = request.app[SETTINGS_KEY].max_change_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ProblemError(413, f"change event over {limit} bytes (HOOKPOST_MAX_CHANGE_BYTES)")
    body = await request.read()
    if len(body) > limit:
        raise ProblemError(413, f"change event over {limit} bytes (HOOKPOST_MAX_CHANGE_BYTES)")
    admin = admin_of(request)
    change = admin.changes.decode(body, request.headers.get("Content-Type"))
    try:
        change_id = await admin.changes.publish(change)
    except ContractViolationError as exc:
        raise ProblemError(422, str(exc), field=exc.path) from None
    return reply(ChangeAccepted(id=change_id), 202)


async def list_tokens(request: web.Request) -> web.Response:
    """List API tokens."""
    return reply([t.view() for t in await admin_of(request).tokens.list()], kind=list[TokenView])


async def create_token(request: web.Request) -> web.Response:
    """Create an API token."""
    spec = await body_of(request, TokenCreate)
    return reply(await admin_of(request).tokens.create(spec.name, spec.role, actor=actor_of(request)), 201)


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke an API token."""
    record = await admin_of(request).tokens.revoke(request.match_info["id"], actor=actor_of(request))
    return reply(record.view())


async def list_audit(request: web.Request) -> web.Response:
    """List audit entries."""
    found = await admin_of(request).audit.list(actor=query_one(request, "actor"), action=query_one(request, "action"),
                                               since=query_since(request), limit=query_limit(request))
    return reply(found, kind=list[AuditEntry])


# --- the table -----------------------------------------------------------------------------------------------

_STR = {"type": "string", "maxLength": 100}
FILTER_PARAMS = (
    Param("status", {"type": "string", "maxLength": 20},
          "New, Retrying, Failed or Finished (any case; repeat for several)", repeat=True),
    Param("type", _STR, "event type, exact or a pattern like article.*"),
    Param("webhook", _STR, "webhook id"),
    Param("entity", _STR, "entity id (A-1001)"),
    Param("since", {"type": "string", "maxLength": 100}, "created at or after: a duration ago (2h, 7d) or ISO-8601"),
    Param("until", {"type": "string", "maxLength": 100}, "created before: a duration ago or ISO-8601"),
    Param("search", _STR, "one term: an event, change or entity id or an event type (exact, or a prefix ending in "
          "*), a status code (503) or an error kind (timeout, refused, dns, tls, http…)"),
)
LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "at most this many")
BEFORE = Param("before", {"type": "string", "maxLength": 100}, "the next page: the `next` of the previous page")
SINCE = Param("since", {"type": "string", "maxLength": 100}, "since: a duration ago (2h, 7d) or ISO-8601")

VIEWER, OPERATOR, ADMIN, PUBLISHER = Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.PUBLISHER
ROUTES: tuple[Route, ...] = (
    Route("GET", "/webhooks", list_webhooks, VIEWER, "List webhooks", response=list[WebhookView]),
    Route("POST", "/webhooks", create_webhook, ADMIN, "Create a webhook", 201, WebhookCreated, WebhookCreate),
    Route("GET", "/webhooks/{id}", get_webhook, VIEWER, "Show a webhook", response=WebhookView),
    Route("PATCH", "/webhooks/{id}", update_webhook, ADMIN, "Change a webhook", response=WebhookSaved,
          body=WebhookUpdate),
    Route("DELETE", "/webhooks/{id}", delete_webhook, ADMIN, "Delete a webhook", 204),
    Route("POST", "/webhooks/{id}/enable", enable_webhook, ADMIN, "Enable a webhook", response=WebhookView),
    Route("POST", "/webhooks/{id}/disable", disable_webhook, ADMIN, "Disable a webhook", response=WebhookView),
    Route("GET", "/webhooks/{id}/secret", get_webhook_secret, ADMIN, "Reveal a webhook's signing secret (audited)",
          response=WebhookSecret),
    Route("POST", "/webhooks/{id}/rotate-secret", rotate_webhook_secret, ADMIN,
          "Make a new signing secret; the old one also signs during the grace period", response=WebhookSecret,
          body=RotateSecret, body_required=False),
    Route("POST", "/webhooks/{id}/test", test_webhook, OPERATOR,
          "Send a hookpost.test event to this webhook only", 202, EventCreated),
    Route("POST", "/webhooks/{id}/replay", replay_webhook, ADMIN,
          "Replay the logged changes of a window that this webhook has no event of, as a background job (202), or "
          "count them (dry_run, 200)", 202, ReplayCount, ReplayRequest, also=(200,)),
    Route("GET", "/events", list_events, VIEWER, "List events, newest first; filters combine", response=EventPage,
          query=(*FILTER_PARAMS, LIMIT, BEFORE)),
    Route("GET", "/events/{id}", get_event, VIEWER, "Show an event with its attempts", response=EventDetail),
    Route("POST", "/events/{id}/restart", restart_event, OPERATOR, "Restart one event", response=RestartReport,
          body=RestartOne, body_required=False),
    Route("POST", "/events/restart", restart_events, OPERATOR,
          "Restart the events matching the filters as a background job (202), or count them (dry_run, 200)", 202,
          RestartCount, RestartRequest, also=(200,)),
    Route("GET", "/jobs/{id}", get_job, OPERATOR, "Show a background job's progress and result", response=Job),
    Route("GET", "/stats", get_stats, VIEWER, "Counts of events per status, type and webhook", response=Stats,
          query=(SINCE,)),
    Route("POST", "/changes", publish_change, PUBLISHER,
          "Publish a change event (202 once the broker confirmed it; idempotent on its id)", 202, ChangeAccepted,
          ChangeEvent, errors=((422, "the change's data breaks its event type's enforced schema (the detail and "
                                     "field name the JSON path)"),)),
    Route("GET", "/tokens", list_tokens, ADMIN, "List API tokens (never the tokens)", response=list[TokenView]),
    Route("POST", "/tokens", create_token, ADMIN, "Create an API token (shown once)", 201, TokenCreated, TokenCreate),
    Route("POST", "/tokens/{id}/revoke", revoke_token, ADMIN, "Revoke an API token", response=TokenView),
    Route("GET", "/audit", list_audit, VIEWER, "List audit entries, newest first", response=list[AuditEntry],
          query=(Param("actor", _STR, "only this actor (token:NAME or cli:USER)"),
                 Param("action", _STR, "only this action (webhook.created, events.restarted, …)"), SINCE, LIMIT)),
    # the broker's set-aside queues, read with the server's connection settings (hookpost.web.api_broker)
    Route("GET", "/invalid", list_invalid, OPERATOR, "List the change events set aside in PREFIX.invalid (none "
          "removed)", response=SetAsideItems, query=(LIMIT,)),
    Route("POST", "/invalid/replay", replay_invalid, ADMIN, "Publish set-aside change events again (by id, or all)",
          response=InvalidReplayResult, body=InvalidReplayRequest),
    Route("GET", "/failed", list_failed, OPERATOR, "List the failure notices in PREFIX.failed (none removed)",
          response=SetAsideItems, query=(LIMIT,)),
)


# the event-type catalog's routes live in their own module, which imports the helpers above
from hookpost.web.api_event_types import EVENT_TYPE_ROUTES  # noqa: E402

ROUTES = (*ROUTES, *EVENT_TYPE_ROUTES)
