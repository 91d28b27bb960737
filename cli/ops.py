"""The one interface the CLI's commands call, with two implementations: :class:`~hookpost.cli.ops_direct.DirectOps`
(over :mod:`hookpost.admin`, MongoDB and RabbitMQ from the settings) and :class:`~hookpost.cli.ops_api.ApiOps`
(over a ``hookpost server``'s HTTP API). A command opens one with :func:`open_ops` and never asks which it got.

Changes are audited by who made them: ``cli:<OS user>`` directly, ``token:<name>`` through the API.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Protocol

from hookpost.admin.setaside import SetAsideList
from hookpost.cli.target import current
from hookpost.common.catalog import EventTypeDeclare, EventTypeUpdate, EventTypeView
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


class Operations(Protocol):
    """What the operator commands do, wherever Hookpost is."""

    where: str
    """``direct`` or the server's URL (for messages)."""

    # webhooks
    async def list_webhooks(self) -> tuple[list[WebhookView], list[BrokenWebhook]]:
        """Every webhook, oldest first, and (directly only) the stored documents that do not validate."""
    async def get_webhook(self, webhook_id: str) -> WebhookView:
        """One webhook, without secrets."""
    async def create_webhook(self, spec: WebhookCreate) -> WebhookCreated:
        """Create a webhook; the answer carries its secret and the event-type warnings."""
    async def update_webhook(self, webhook_id: str, spec: WebhookUpdate) -> WebhookSaved:
        """Change the fields given in ``spec``; the answer carries the event-type warnings."""
    async def set_active(self, webhook_id: str, active: bool) -> WebhookView:
        """Enable or disable a webhook."""
    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook."""
    async def reveal_secret(self, webhook_id: str) -> WebhookSecret:
        """A webhook's signing secrets (audited)."""
    async def rotate_secret(self, webhook_id: str, grace: float) -> WebhookSecret:
        """Make a new signing secret; the old one signs for ``grace`` seconds more."""

    async def replay_count(self, webhook_id: str, request: ReplayRequest) -> ReplayCount:
        """What a replay of the changes a webhook missed would do (a dry run)."""
    async def replay_webhook(self, webhook_id: str, request: ReplayRequest,
                             progress: "Callable[[int], None] | None" = None,
                             started: "Callable[[str], None] | None" = None) -> ReplayCount:
        """Replay the changes a webhook missed; ``progress(n)`` reports changes published so far, ``started`` gets
        the server's job id (API mode)."""

    # events
    async def list_events(self, flt: EventFilter, limit: int) -> EventPage:
        """Up to ``limit`` events matching ``flt``, newest first, and the next page's cursor."""
    async def get_event(self, event_id: str) -> EventDetail:
        """One event with its attempts."""
    async def events_by_id(self, event_ids: list[str]) -> list[WebhookEvent]:
        """The events ``event_ids`` (raise :class:`NotFoundError` naming any unknown id)."""
    async def restart_ids(self, event_ids: list[str], force: bool) -> RestartReport:
        """Restart events by id."""
    async def restart_count(self, flt: EventFilter, force: bool) -> RestartCount:
        """What a bulk restart of ``flt`` would do (a dry run)."""
    async def restart_bulk(self, flt: EventFilter, force: bool, total: int,
                           progress: "Callable[[int], None] | None" = None,
                           started: "Callable[[str], None] | None" = None) -> RestartCount:
        """Restart every event matching ``flt``; ``progress(n)`` reports events processed so far, ``started``
        gets the server's job id (API mode)."""
    async def get_job(self, job_id: str) -> Job:
        """A background job (a bulk restart started through the API) and its progress."""
    async def stats(self, since: datetime | None) -> Stats:
        """Counts per status, type and webhook."""

    # the event-type catalog
    async def list_event_types(self) -> list[EventTypeView]:
        """The known event types with their 30-day counts."""
    async def get_event_type(self, name: str) -> EventTypeView:
        """One known event type with its schema."""
    async def declare_event_type(self, spec: EventTypeDeclare) -> EventTypeView:
        """Declare an event type (again: replace the declaration)."""
    async def update_event_type(self, name: str, spec: EventTypeUpdate) -> EventTypeView:
        """Change the fields given in ``spec`` of a declared type."""

    # changes, tokens, audit
    async def publish(self, change: ChangeEvent, timeout: float) -> str:
        """Publish a change event; return its id once the broker confirmed it."""
    async def create_token(self, name: str, role: str) -> TokenCreated:
        """Make an API token (returned this once)."""
    async def list_tokens(self) -> list[TokenView]:
        """Every token record."""
    async def revoke_token(self, token_id: str) -> TokenView:
        """Revoke a token."""
    async def list_audit(self, actor: str | None, action: str | None, since: datetime | None,
                         limit: int) -> list[AuditEntry]:
        """Audit entries, newest first."""

    # set aside
    async def list_invalid(self, limit: int) -> SetAsideList:
        """Change events in ``PREFIX.invalid``."""
    async def replay_invalid(self, ids: list[str], everything: bool, dry_run: bool, force: bool) -> ReplayReport:
        """Publish set-aside change events again."""
    async def list_failed(self, limit: int) -> SetAsideList:
        """Failure notices in ``PREFIX.failed``."""


@asynccontextmanager
async def open_ops(*, publish_timeout: float = 10.0) -> AsyncIterator[Operations]:
    """Open the operations of the chosen target (see :mod:`hookpost.cli.target`) for one command."""
    target = current()
    if target.is_api:
        from hookpost.cli.ops_api import ApiOps

        async with ApiOps.open(target) as api:
            yield api
    else:
        from hookpost.cli.ops_direct import DirectOps

        async with DirectOps.open(publish_timeout=publish_timeout) as direct:
            yield direct
