"""Console pages about webhook events: the events overview (filters in the URL, counts per status, keyset
paging, live refresh, restart selected / all matching) and the event detail (attempts, payload, headers)."""

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from hookpost.admin.events import InvalidFieldError, has_conditions, parse_filter
from hookpost.common.errors import NotFoundError
from hookpost.common.models import EventStatus
from hookpost.common.records import EventDetail, Role, WebhookView
from hookpost.store.events import EventFilter
from hookpost.web.console import admin_of, insights_of, need, render, safe_next, url_with, utc_offset_label

PAGE_SIZE = 50
LIVE_SECONDS = 5
STATUSES = [s.value for s in EventStatus]
LOCAL_INPUT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
FILTER_KEYS = ("status", "type", "webhook", "entity", "since", "until", "tz", "q")


@dataclass
class Filters:
    """The events overview's filter values as typed (what the form and the URL carry)."""

    status: list[str] = field(default_factory=list)
    type: str = ""
    webhook: str = ""
    entity: str = ""
    since: str = ""
    until: str = ""
    tz: int | None = None
    q: str = ""

    @classmethod
    def from_query(cls, query: MultiDictProxy[str] | Any) -> "Filters":
        """Read the filters from a query string or a form."""
        def one(name: str) -> str:
            value = query.get(name, "")
            return value.strip()[:200] if isinstance(value, str) else ""

        statuses = [s for s in query.getall("status", []) if isinstance(s, str)]
        tz_text = one("tz")
        tz = int(tz_text) if re.fullmatch(r"-?\d{1,4}", tz_text) and abs(int(tz_text)) <= 1440 else None
        return cls(status=[s.strip() for s in statuses][:4], type=one("type"), webhook=one("webhook"),
                   entity=one("entity"), since=one("since"), until=one("until"), tz=tz, q=one("q"))

    def params(self) -> dict[str, Any]:
        """The filters as query parameters (for links that keep them)."""
        return {"status": self.status, "type": self.type, "webhook": self.webhook, "entity": self.entity,
                "since": self.since, "until": self.until, "tz": self.tz if self.tz is not None else "",
                "q": self.q}

    def as_utc_text(self, value: str) -> str:
        """Return a time typed into a ``datetime-local`` field (in the zone of ``tz``; UTC without it) as
        ISO-8601 UTC; anything else (``2h``, a full ISO time) passes on unchanged."""
        if not LOCAL_INPUT.match(value):
            return value
        local = datetime.fromisoformat(value)
        return (local + timedelta(minutes=self.tz or 0)).replace(tzinfo=UTC).isoformat()

    def to_filter(self, before: str | None = None) -> EventFilter:
        """Parse into the admin's :class:`EventFilter` (raise :class:`InvalidFieldError` naming the field)."""
        times: dict[str, str | None] = {}
        for name in ("since", "until"):
            try:
                times[name] = self.as_utc_text(getattr(self, name)) or None
            except ValueError:
                raise InvalidFieldError(name, f"not a time: {getattr(self, name)!r}") from None
        return parse_filter(self.status, self.type or None, self.webhook or None, self.entity or None,
                            times["since"], times["until"], self.q or None, before or None)

    def any_set(self) -> bool:
        """Tell whether any filter is set (the browser's UTC offset alone is none)."""
        return bool(self.status or self.type or self.webhook or self.entity or self.since or self.until or self.q)


def result_text(code: int | None, error: str | None) -> str:
    """One short line for an attempt's outcome: ``200``, ``503``, ``Timeout: …``."""
    if error:
        return error if code is None else f"{code} · {error}"
    return "–" if code is None else str(code)


async def events_page(request: web.Request) -> web.Response:
    """The Webhook events overview."""
    session = need(request, Role.VIEWER)
    filters = Filters.from_query(request.query)
    before = request.query.get("before", "").strip()[:100] or None
    live = request.query.get("live") == "1" and not before
    errors: dict[str, str] = {}
    events: list[Any] = []
    next_cursor = None
    counts = dict.fromkeys(STATUSES, 0)
    counted = False
    flt: EventFilter | None = None
    try:
        flt = filters.to_filter(before)
    except InvalidFieldError as exc:
        errors[exc.field] = str(exc)
    if flt is not None:
        page = await admin_of(request).events.list(flt, limit=PAGE_SIZE)
        events, next_cursor = page.items, page.next
        if not flt.search:  # a text search scans every event: counting it too would double that (see docs)
            counts = await insights_of(request).status_counts(flt)
            counted = True
    hook_urls = await insights_of(request).webhook_names()
    selected = {EventStatus.parse(s).value for s in filters.status if s.lower() in (x.lower() for x in STATUSES)}
    matching = sum(n for s, n in counts.items() if not selected or s in selected)
    base = filters.params()
    status_links = {s: url_with("/events", {**base, "status": [s]}) for s in STATUSES}
    context = {
        "filters": filters, "errors": errors, "events": events, "counts": counts, "counted": counted,
        "selected": selected, "matching": matching, "statuses": STATUSES, "status_links": status_links,
        "hook_urls": hook_urls, "before": before, "live": live, "live_seconds": LIVE_SECONDS,
        "older": url_with("/events", {**base, "before": next_cursor}) if next_cursor else None,
        "newest": url_with("/events", base),
        "live_on": url_with("/events", {**base, "live": "1"}), "live_off": url_with("/events", base),
        "clear": "/events", "tz_label": utc_offset_label(filters.tz),
        "can_restart_all": bool(flt is not None and has_conditions(flt) and (matching or not counted) and
                                session.allows(Role.OPERATOR)),
        "filter_hidden": [(k, v) for k, vs in base.items() for v in (vs if isinstance(vs, list) else [vs])
                          if v not in (None, "")],
        "result_text": result_text, "filtered": filters.any_set() or bool(before),
    }
    return await render(request, "events.html", context)


async def restart_selected(request: web.Request) -> web.Response:
    """Restart the events ticked in the overview; show what was restarted and what was skipped, and why."""
    session = need(request, Role.OPERATOR)
    form = await request.post()
    ids = [i for i in form.getall("id", []) if isinstance(i, str) and i.startswith("evt_")][:500]
    back = safe_next(str(form.get("back", "")) or None, "/events")
    if not ids:
        return await render(request, "restart_result.html", {"report": None, "back": back,
                                                             "message": "No events were selected."}, status=400)
    report = await admin_of(request).events.restart_ids(ids, actor=session.actor)
    return await render(request, "restart_result.html", {"report": report, "back": back, "message": None})


async def restart_all(request: web.Request) -> web.Response:
    """Restart every event matching the filters: first show the dry run's count and ask; on confirmation
    start the restart as a background job and show its page."""
    session = need(request, Role.OPERATOR)
    form = await request.post()
    filters = Filters.from_query(form)
    flt = filters.to_filter()
    admin = admin_of(request)
    back = url_with("/events", filters.params())
    if form.get("confirm") == "yes":
        job = await admin.jobs.start_restart(flt, actor=session.actor)
        raise web.HTTPSeeOther(url_with(f"/jobs/{job.id}", {"back": back}))
    count = await admin.events.restart_count(flt)
    hidden = [(k, v) for k, vs in filters.params().items() for v in (vs if isinstance(vs, list) else [vs])
              if v not in (None, "")]
    return await render(request, "restart_confirm.html", {"count": count, "filters": filters, "hidden": hidden,
                                                          "back": back})


async def job_page(request: web.Request) -> web.Response:
    """A bulk restart's progress, then its result (refreshes itself while it runs)."""
    need(request, Role.OPERATOR)
    job = await admin_of(request).jobs.get(request.match_info["id"])
    back = safe_next(request.query.get("back"), "/events")
    return await render(request, "job.html", {"job": job, "back": back, "running": job.status.value == "running"})


async def event_page(request: web.Request) -> web.Response:
    """One event: its status, every attempt, the payload, the headers sent, restart."""
    need(request, Role.VIEWER)
    admin = admin_of(request)
    event = await admin.events.get(request.match_info["id"])
    try:
        hook: WebhookView | None = await admin.webhooks.get(event.webhook_id)
    except NotFoundError:
        hook = None
    in_flight = event.status in (EventStatus.NEW, EventStatus.RETRYING)
    siblings = [e for e in await insights_of(request).events_of_change(event.change_id) if e.id != event.id]
    hook_urls = await insights_of(request).webhook_names() if siblings else {}
    notice = {"restarted": "Restarted: the event has a fresh budget of attempts and is on its way again.",
              "skipped": "Not restarted: " + request.query.get("why", "")[:200]}.get(request.query.get("notice", ""))
    return await render(request, "event.html", {
        "event": event, "hook": hook, "in_flight": in_flight, "notice": notice,
        "payload": json.dumps(event.payload, indent=2, ensure_ascii=False, sort_keys=False),
        "user_agent": admin.settings.user_agent, "result_text": result_text,
        "same_change": url_with("/events", {"q": event.change_id}),
        "same_entity": url_with("/events", {"entity": event.entity.id}),
        "same_webhook": url_with("/events", {"webhook": event.webhook_id}),
        "attempts": list(reversed(event.attempts)), "siblings": siblings, "hook_urls": hook_urls,
        "trace_link": trace_link(admin.settings.trace_url, event), "trace_sent": admin.settings.trace_propagate,
    })


def trace_link(template: str | None, event: EventDetail) -> str | None:
    """The link to ``event``'s trace in the tracing UI (``HOOKPOST_TRACE_URL`` with ``{trace_id}``), if set."""
    if template is None or event.trace is None:
        return None
    return template.replace("{trace_id}", event.trace.trace_id)


async def restart_one(request: web.Request) -> web.StreamResponse:
    """Restart one event (``force`` for a Finished one) and go back to its page."""
    session = need(request, Role.OPERATOR)
    form = await request.post()
    event_id = request.match_info["id"]
    report = await admin_of(request).events.restart_ids([event_id], actor=session.actor,
                                                        force=form.get("force") == "1")
    if event_id in report.restarted:
        raise web.HTTPSeeOther(url_with(f"/events/{event_id}", {"notice": "restarted"}))
    raise web.HTTPSeeOther(url_with(f"/events/{event_id}", {"notice": "skipped",
                                                            "why": report.skipped.get(event_id, "")}))


def add_routes(app: web.Application) -> None:
    """Register the event pages."""
    app.router.add_get("/events", events_page)
    app.router.add_post("/events/restart", restart_selected)
    app.router.add_post("/events/restart-all", restart_all)
    app.router.add_get("/events/{id}", event_page)
    app.router.add_post("/events/{id}/restart", restart_one)
    app.router.add_get("/jobs/{id}", job_page)
