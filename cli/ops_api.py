"""The CLI's operations over a ``hookpost server``'s HTTP API (API mode): the server audits them under the
token's name, and reads RabbitMQ for the set-aside commands with its own connection."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from hookpost.admin.setaside import SetAsideList, report_from
from hookpost.cli.apiclient import ApiClient, client_version
from hookpost.cli.target import Target
from hookpost.common.catalog import EventTypeDeclare, EventTypeUpdate, EventTypeView
from hookpost.common.errors import HookpostError
from hookpost.common.models import ChangeEvent, WebhookEvent
from hookpost.common.records import (
    AuditEntry,
    EventDetail,
    EventPage,
    Job,
    JobStatus,
    ReplayCount,
    ReplayRequest,
    RestartCount,
    RestartReport,
    Stats,
    TokenCreated,
    TokenView,
    WebhookCreate,
    WebhookCreated,
    WebhookSaved,
    WebhookSecret,
    WebhookUpdate,
    WebhookView,
)
from hookpost.producer.setaside import ReplayReport
from hookpost.store.events import EventFilter
from hookpost.store.webhooks import BrokenWebhook

API_PAGE = 500  # the API's largest page
JOB_POLL = 0.5  # seconds between looks at a restart job


def filter_params(flt: EventFilter) -> list[tuple[str, str]]:
    """Return an :class:`EventFilter` as the API's query parameters (``status`` repeats; times in ISO-8601)."""
    out = [("status", s.value) for s in flt.statuses]
    for name, value in (("type", flt.event_type), ("webhook", flt.webhook_id), ("entity", flt.entity_id),
                        ("since", flt.since.isoformat() if flt.since else None),
                        ("until", flt.until.isoformat() if flt.until else None), ("search", flt.search),
                        ("before", flt.before)):
        if value:
            out.append((name, value))
    return out


def restart_body(flt: EventFilter, force: bool, dry_run: bool) -> dict[str, Any]:
    """Return the body of ``POST /events/restart`` for ``flt``."""
    body: dict[str, Any] = {"force": force, "dry_run": dry_run}
    for name, value in filter_params(flt):
        if name == "status":
            body.setdefault("status", []).append(value)
        else:
            body[name] = value
    return body


class ApiOps:
    """:class:`~hookpost.cli.ops.Operations` as requests to ``/api/v1``."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.where = client.server

    @classmethod
    @asynccontextmanager
    async def open(cls, target: Target) -> AsyncIterator["ApiOps"]:
        """Open an HTTP session to ``target`` for one command."""
        async with ApiClient(target) as client:
            yield cls(client)

    def _read(self, kind: Any, data: Any) -> Any:
        """Read an answer as ``kind`` (a model or a list type); an answer of another shape is one line."""
        try:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                return kind.model_validate(data)
            return TypeAdapter(kind).validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the answer"
            version = self.client.server_version or "unknown"
            raise HookpostError(f"{self.where} answered in a form this CLI does not read ({where}: {first['msg']}; "
                                f"server {version}, CLI {client_version()})") from None

    async def _get(self, path: str, params: Any = None) -> Any:
        return await self.client.request("GET", path, params=params)

    async def _post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return await self.client.request("POST", path, json_body=body, **kwargs)

    async def list_webhooks(self) -> tuple[list[WebhookView], list[BrokenWebhook]]:
        """Every webhook (the server logs the documents that do not validate)."""
        return self._read(list[WebhookView], await self._get("/webhooks")), []

    async def get_webhook(self, webhook_id: str) -> WebhookView:
        """One webhook."""
        return self._read(WebhookView, await self._get(f"/webhooks/{webhook_id}"))

    async def create_webhook(self, spec: WebhookCreate) -> WebhookCreated:
        """Create a webhook."""
        return self._read(WebhookCreated, await self._post("/webhooks", spec.model_dump(mode="json")))

    async def update_webhook(self, webhook_id: str, spec: WebhookUpdate) -> WebhookSaved:
        """Change a webhook."""
        body = spec.model_dump(mode="json", exclude_none=True)
        return self._read(WebhookSaved, await self.client.request("PATCH", f"/webhooks/{webhook_id}",
                                                                    json_body=body))

    async def set_active(self, webhook_id: str, active: bool) -> WebhookView:
        """Enable or disable a webhook."""
        return self._read(WebhookView, await self._post(f"/webhooks/{webhook_id}/"
                                                           + ("enable" if active else "disable")))

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook."""
        await self.client.request("DELETE", f"/webhooks/{webhook_id}")

    async def reveal_secret(self, webhook_id: str) -> WebhookSecret:
        """A webhook's secrets."""
        return self._read(WebhookSecret, await self._get(f"/webhooks/{webhook_id}/secret"))

    async def rotate_secret(self, webhook_id: str, grace: float) -> WebhookSecret:
        """Rotate a webhook's secret."""
        return self._read(WebhookSecret, await self._post(f"/webhooks/{webhook_id}/rotate-secret",
                                                             {"grace": grace}))

    async def replay_count(self, webhook_id: str, request: ReplayRequest) -> ReplayCount:
        """The server's dry run of a replay."""
        body = request.model_copy(update={"dry_run": True}).model_dump(mode="json")
        return self._read(ReplayCount, await self._post(f"/webhooks/{webhook_id}/replay", body))

    async def replay_webhook(self, webhook_id: str, request: ReplayRequest,
                             progress: Callable[[int], None] | None = None,
                             started: Callable[[str], None] | None = None) -> ReplayCount:
        """Start the replay as a job on the server and watch it until it ends."""
        body = request.model_copy(update={"dry_run": False}).model_dump(mode="json")
        begun: ReplayCount = self._read(ReplayCount, await self._post(f"/webhooks/{webhook_id}/replay", body))
        if begun.job is None:
            raise HookpostError(f"{self.where} started no job for the replay")
        if started:
            started(begun.job)
        job = await self._watch(begun.job, progress)
        return begun.model_copy(update={"replayed": job.total})

    async def _watch(self, job_id: str, progress: Callable[[int], None] | None) -> Job:
        """Poll a job until it ends; raise if it failed."""
        while True:
            job = await self.get_job(job_id)
            if progress:
                progress(job.processed)
            if job.status == JobStatus.FAILED:
                raise HookpostError(f"{self.where}: job {job.id} failed: {job.error or 'no reason given'}")
            if job.status != JobStatus.RUNNING:
                return job
            await asyncio.sleep(JOB_POLL)

    async def list_events(self, flt: EventFilter, limit: int) -> EventPage:
        """Up to ``limit`` events, in pages of at most 500."""
        items: list[WebhookEvent] = []
        params = [p for p in filter_params(flt) if p[0] != "before"]
        before = flt.before
        while True:
            want = min(API_PAGE, limit - len(items))
            page = self._read(EventPage, await self._get(
                "/events", [*params, ("limit", str(want))] + ([("before", before)] if before else [])))
            items += page.items
            before = page.next
            if not before or len(items) >= limit:
                return EventPage(items=items, next=before)

    async def get_event(self, event_id: str) -> EventDetail:
        """One event with its attempts."""
        return self._read(EventDetail, await self._get(f"/events/{event_id}"))

    async def events_by_id(self, event_ids: list[str]) -> list[WebhookEvent]:
        """The events ``event_ids``, one request each."""
        from hookpost.common.errors import NotFoundError

        found, missing = [], []
        for event_id in dict.fromkeys(event_ids):
            try:
                found.append(await self.get_event(event_id))
            except NotFoundError:
                missing.append(event_id)
        if missing:
            raise NotFoundError(f"{self.where}: no event {', '.join(sorted(missing))}")
        return found

    async def restart_ids(self, event_ids: list[str], force: bool) -> RestartReport:
        """Restart events by id, one request each."""
        report = RestartReport()
        for event_id in dict.fromkeys(event_ids):
            part = self._read(RestartReport, await self._post(f"/events/{event_id}/restart", {"force": force}))
            report.restarted += part.restarted
            report.skipped.update(part.skipped)
        return report

    async def restart_count(self, flt: EventFilter, force: bool) -> RestartCount:
        """The server's dry run of a bulk restart."""
        return self._read(RestartCount, await self._post("/events/restart", restart_body(flt, force, True)))

    async def restart_bulk(self, flt: EventFilter, force: bool, total: int,
                           progress: Callable[[int], None] | None = None,
                           started: Callable[[str], None] | None = None) -> RestartCount:
        """Start the restart as a job on the server and watch it until it ends."""
        begun = self._read(RestartCount, await self._post("/events/restart", restart_body(flt, force, False)))
        if begun.job is None:
            raise HookpostError(f"{self.where} started no job for the restart")
        if started:
            started(begun.job)
        job = await self._watch(begun.job, progress)
        return RestartCount(matched=job.total, restarted=job.restarted, skipped=job.skipped, job=job.id)

    async def get_job(self, job_id: str) -> Job:
        """A background job."""
        return self._read(Job, await self._get(f"/jobs/{job_id}"))

    async def stats(self, since: datetime | None) -> Stats:
        """Counts of events."""
        return self._read(Stats, await self._get("/stats", {"since": since.isoformat()} if since else None))

    async def publish(self, change: ChangeEvent, timeout: float) -> str:
        """Publish a change through ``POST /changes`` (answered once the broker confirmed it)."""
        data = await self._post("/changes", change.model_dump(mode="json", exclude_none=True), timeout=timeout + 10)
        return str(data["id"])

    async def create_token(self, name: str, role: str) -> TokenCreated:
        """Make a token."""
        return self._read(TokenCreated, await self._post("/tokens", {"name": name, "role": role.lower()}))

    async def list_tokens(self) -> list[TokenView]:
        """Every token."""
        return self._read(list[TokenView], await self._get("/tokens"))

    async def revoke_token(self, token_id: str) -> TokenView:
        """Revoke a token."""
        return self._read(TokenView, await self._post(f"/tokens/{token_id}/revoke"))

    async def list_event_types(self) -> list[EventTypeView]:
        """List the known event types."""
        return self._read(list[EventTypeView], await self._get("/event-types"))

    async def get_event_type(self, name: str) -> EventTypeView:
        """Show an event type."""
        return self._read(EventTypeView, await self._get(f"/event-types/{quote(name, safe='')}"))

    async def declare_event_type(self, spec: EventTypeDeclare) -> EventTypeView:
        """Declare an event type."""
        return self._read(EventTypeView, await self._post("/event-types", spec.model_dump(mode="json")))

    async def update_event_type(self, name: str, spec: EventTypeUpdate) -> EventTypeView:
        """Change a declared event type."""
        body = spec.model_dump(mode="json", include=spec.model_fields_set)
        return self._read(EventTypeView, await self.client.request(
            "PATCH", f"/event-types/{quote(name, safe='')}", json_body=body))

    async def list_audit(self, actor: str | None, action: str | None, since: datetime | None,
                         limit: int) -> list[AuditEntry]:
        """Audit entries (the API gives at most 500)."""
        params = [(k, v) for k, v in (("actor", actor), ("action", action),
                                      ("since", since.isoformat() if since else None), ("limit", str(limit))) if v]
        return self._read(list[AuditEntry], await self._get("/audit", params))

    async def list_invalid(self, limit: int) -> SetAsideList:
        """Change events set aside, read by the server."""
        return SetAsideList(**await self._get("/invalid", {"limit": str(limit)}))

    async def replay_invalid(self, ids: list[str], everything: bool, dry_run: bool, force: bool) -> ReplayReport:
        """Replay set-aside change events through the server."""
        return report_from(await self._post("/invalid/replay", {"ids": ids, "all": everything, "dry_run": dry_run,
                                                                "force": force}, timeout=300))

    async def list_failed(self, limit: int) -> SetAsideList:
        """Failure notices, read by the server."""
        return SetAsideList(**await self._get("/failed", {"limit": str(limit)}))
