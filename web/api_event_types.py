"""The ``/api/v1/event-types`` routes (the event-type catalog), appended to :data:`hookpost.web.api.ROUTES`."""

from aiohttp import web

from hookpost.common.catalog import EventTypeDeclare, EventTypeUpdate, EventTypeView
from hookpost.common.records import Role
from hookpost.web.api import Route, actor_of, admin_of, body_of, reply


async def list_event_types(request: web.Request) -> web.Response:
    """List the known event types."""
    return reply(await admin_of(request).event_types.list(), kind=list[EventTypeView])


async def declare_event_type(request: web.Request) -> web.Response:
    """Declare an event type."""
    spec = await body_of(request, EventTypeDeclare)
    return reply(await admin_of(request).event_types.declare(spec, actor=actor_of(request)), 201)


async def get_event_type(request: web.Request) -> web.Response:
    """Show an event type."""
    return reply(await admin_of(request).event_types.get(request.match_info["name"]))


async def update_event_type(request: web.Request) -> web.Response:
    """Change a declared event type."""
    spec = await body_of(request, EventTypeUpdate)
    return reply(await admin_of(request).event_types.update(request.match_info["name"], spec,
                                                            actor=actor_of(request)))


EVENT_TYPE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/event-types", list_event_types, Role.VIEWER,
          "List the known event types (declared, or seen in the last 30 days) with their 30-day counts",
          response=list[EventTypeView]),
    Route("POST", "/event-types", declare_event_type, Role.ADMIN,
          "Declare an event type (title, description, JSON Schema of its data, enforce, deprecated); declaring "
          "it again replaces the declaration", 201, EventTypeView, EventTypeDeclare),
    Route("GET", "/event-types/{name}", get_event_type, Role.VIEWER, "Show an event type with its schema",
          response=EventTypeView),
    Route("PATCH", "/event-types/{name}", update_event_type, Role.ADMIN,
          "Change a declared event type (schema null removes the schema)", response=EventTypeView,
          body=EventTypeUpdate),
)
