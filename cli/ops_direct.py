"""The CLI's operations over :mod:`hookpost.admin`: MongoDB and RabbitMQ reached with the settings, audited as
``cli:<OS user>``."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from hookpost.admin import Admin, os_actor
from hookpost.admin import setaside as setaside_ops
from hookpost.admin.setaside import SetAsideList
from hookpost.cli.base import settings
from hookpost.common.catalog import EventTypeDeclare, EventTypeUpdate, EventTypeView
from hookpost.common.errors import NotFoundError
from hookpost.common.models import ChangeEvent, WebhookEvent
from hookpost.common.records import (
    AuditEntry,
    EventDetail,
    EventPage,
    Job,
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


class DirectOps:
    """:class:`~hookpost.cli.ops.Operations` done in this process over an :class:`Admin`."""

    where = "direct"

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.actor = os_actor()

    @classmethod
    @asynccontextmanager
    async def open(cls, *, publish_timeout: float = 10.0) -> AsyncIterator["DirectOps"]:
        """Open the store (and the broker on first use) for one command."""
        async with Admin.open(settings(), publish_timeout=publish_timeout) as admin:
            yield cls(admin)

    async def list_webhooks(self) -> tuple[list[WebhookView], list[BrokenWebhook]]:
        """Every webhook, and the stored documents that do not validate."""
        return await self.admin.webhooks.load()

    async def get_webhook(self, webhook_id: str) -> WebhookView:
        """One webhook."""
        return await self.admin.webhooks.get(webhook_id)

    async def create_webhook(self, spec: WebhookCreate) -> WebhookCreated:
        """Create a webhook."""
        hook = await self.admin.webhooks.create(spec, actor=self.actor)
        view = await self.admin.webhooks.view(hook)
        warnings = await self.admin.event_types.warnings_for(hook.event_types)
        return WebhookCreated(**view.model_dump(), secret=hook.secret, warnings=warnings)

    async def update_webhook(self, webhook_id: str, spec: WebhookUpdate) -> WebhookSaved:
        """Change a webhook."""
        hook = await self.admin.webhooks.update(webhook_id, spec, actor=self.actor)
        warnings = await self.admin.event_types.warnings_for(hook.event_types) if spec.event_types is not None else []
        return WebhookSaved(**(await self.admin.webhooks.view(hook)).model_dump(), warnings=warnings)

    async def set_active(self, webhook_id: str, active: bool) -> WebhookView:
        """Enable or disable a webhook."""
        hook = await self.admin.webhooks.set_active(webhook_id, active, actor=self.actor)
        return await self.admin.webhooks.view(hook)

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook."""
        await self.admin.webhooks.delete(webhook_id, actor=self.actor)

    async def reveal_secret(self, webhook_id: str) -> WebhookSecret:
        """A webhook's secrets."""
        return await self.admin.webhooks.reveal_secret(webhook_id, actor=self.actor)

    async def rotate_secret(self, webhook_id: str, grace: float) -> WebhookSecret:
        """Rotate a webhook's secret."""
        return await self.admin.webhooks.rotate_secret(webhook_id, grace, actor=self.actor)

    async def replay_count(self, webhook_id: str, request: ReplayRequest) -> ReplayCount:
        """Count a replay."""
        count, _ = await self.admin.replays.plan(webhook_id, request)
        return count.model_copy(update={"dry_run": True})

    async def replay_webhook(self, webhook_id: str, request: ReplayRequest,
                             progress: Callable[[int], None] | None = None,
                             started: Callable[[str], None] | None = None) -> ReplayCount:
        """Replay in this process: plan, then publish through fan-out for this webhook."""
        count, todo = await self.admin.replays.plan(webhook_id, request)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0])

        return await self.admin.replays.publish(count, todo, types=request.types, actor=self.actor, progress=step)

    async def list_events(self, flt: EventFilter, limit: int) -> EventPage:
        """A page of events."""
        return await self.admin.events.list(flt, limit=limit)

    async def get_event(self, event_id: str) -> EventDetail:
        """One event with its attempts."""
        return await self.admin.events.get(event_id)

    async def events_by_id(self, event_ids: list[str]) -> list[WebhookEvent]:
        """The events ``event_ids``."""
        found = await self.admin.events.matching(EventFilter(ids=list(event_ids)))
        missing = set(event_ids) - {e.id for e in found}
        if missing:
            raise NotFoundError(f"no event {', '.join(sorted(missing))}")
        return found

    async def restart_ids(self, event_ids: list[str], force: bool) -> RestartReport:
        """Restart events by id."""
        return await self.admin.events.restart_ids(event_ids, actor=self.actor, force=force)

    async def restart_count(self, flt: EventFilter, force: bool) -> RestartCount:
        """Count a bulk restart."""
        return await self.admin.events.restart_count(flt, force)

    async def restart_bulk(self, flt: EventFilter, force: bool, total: int,
                           progress: Callable[[int], None] | None = None,
                           started: Callable[[str], None] | None = None) -> RestartCount:
        """Restart every event matching ``flt`` in this process, a page at a time."""
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0])

        report = await self.admin.events.restart_matching(flt, actor=self.actor, force=force, progress=step)
        return RestartCount(matched=len(report.restarted) + len(report.skipped), restarted=len(report.restarted),
                            skipped=report.skipped_by_reason())

    async def get_job(self, job_id: str) -> Job:
        """A background job, read from the store."""
        return await self.admin.jobs.get(job_id)

    async def stats(self, since: datetime | None) -> Stats:
        """Counts of events."""
        return await self.admin.events.stats(since)

    async def publish(self, change: ChangeEvent, timeout: float) -> str:
        """Publish a change (the admin was opened with the command's confirm timeout)."""
        return await self.admin.changes.publish(change)

    async def create_token(self, name: str, role: str) -> TokenCreated:
        """Make a token."""
        return await self.admin.tokens.create(name, role, actor=self.actor)

    async def list_tokens(self) -> list[TokenView]:
        """Every token."""
        return [t.view() for t in await self.admin.tokens.list()]

    async def revoke_token(self, token_id: str) -> TokenView:
        """Revoke a token."""
        return (await self.admin.tokens.revoke(token_id, actor=self.actor)).view()

    async def list_event_types(self) -> list[EventTypeView]:
        """The known event types."""
        return await self.admin.event_types.list()

    async def get_event_type(self, name: str) -> EventTypeView:
        """One event type."""
        return await self.admin.event_types.get(name)

    async def declare_event_type(self, spec: EventTypeDeclare) -> EventTypeView:
        """Declare an event type."""
        return await self.admin.event_types.declare(spec, actor=self.actor)

    async def update_event_type(self, name: str, spec: EventTypeUpdate) -> EventTypeView:
        """Change a declared event type."""
        return await self.admin.event_types.update(name, spec, actor=self.actor)

    async def list_audit(self, actor: str | None, action: str | None, since: datetime | None,
                         limit: int) -> list[AuditEntry]:
        """Audit entries."""
        return await self.admin.audit.list(actor=actor, action=action, since=since, limit=limit)

    async def list_invalid(self, limit: int) -> SetAsideList:
        """Change events set aside."""
        return await setaside_ops.list_invalid(settings(), limit)

    async def replay_invalid(self, ids: list[str], everything: bool, dry_run: bool, force: bool) -> ReplayReport:
        """Replay set-aside change events."""
        return await setaside_ops.replay_invalid(settings(), ids=ids, everything=everything, dry_run=dry_run,
                                                 force=force)

    async def list_failed(self, limit: int) -> SetAsideList:
        """Failure notices."""
        return await setaside_ops.list_failed(settings(), limit)
