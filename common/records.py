"""The records of managing Hookpost, beside the delivery models: API tokens and roles, audit entries, jobs.

Defined once here and used in the store, in ``admin``, on the HTTP API's wire and in the CLI's ``--json``.
"""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hookpost.common.models import (
    Attempt,
    Coalesce,
    Ordering,
    UtcDatetime,
    WebhookEvent,
    now_ms,
    parse_choice,
    utcnow,
)


class Role(StrEnum):
    """What a token may do. ``viewer`` < ``operator`` < ``admin``; ``publisher`` only publishes changes."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    PUBLISHER = "publisher"

    @classmethod
    def parse(cls, text: str) -> "Role":
        """Read a role case-insensitively; raise ``ValueError`` naming the choices."""
        return parse_choice(cls, text, "role")

    def allows(self, needed: "Role") -> bool:
        """Tell whether this role may do what ``needed`` may.

        ``publisher`` is a separate role, not a rank: only ``publisher`` and ``admin`` publish changes.
        """
        if needed == Role.PUBLISHER:
            return self in (Role.PUBLISHER, Role.ADMIN)
        if self == Role.PUBLISHER:
            return False
        ranks = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
        return ranks[self] >= ranks[needed]


class ApiToken(BaseModel):
    """An API token's record. Only the SHA-256 hash of the token is stored; the token is shown once."""

    id: str
    name: str = Field(min_length=1, max_length=100)
    role: Role
    hash: str = Field(repr=False)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    created_by: str = ""
    revoked_at: UtcDatetime | None = None
    revoked_by: str | None = None

    @property
    def revoked(self) -> bool:
        """True once the token was revoked."""
        return self.revoked_at is not None

    def view(self) -> "TokenView":
        """Return the record without its hash."""
        return TokenView(**self.model_dump(exclude={"hash"}), revoked=self.revoked)

    def public_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data without its hash."""
        return self.view().model_dump(mode="json")


class TokenView(BaseModel):
    """An API token as lists show it: never the token or its hash."""

    id: str
    name: str
    role: Role
    created_at: UtcDatetime
    created_by: str = ""
    revoked_at: UtcDatetime | None = None
    revoked_by: str | None = None
    revoked: bool = False


class TokenCreate(BaseModel):
    """What it takes to create a token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: Role


class AuditEntry(BaseModel):
    """One change an operator made: who (token name or OS user), when, what, to which object, with details."""

    id: str
    at: UtcDatetime = Field(default_factory=utcnow)
    at_ms: int = Field(default_factory=now_ms)
    actor: str
    action: str
    target: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class JobStatus(StrEnum):
    """Where a background job stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Job(BaseModel):
    """A long operation (a bulk restart) run in the background; its progress and result are stored."""

    id: str
    kind: str
    status: JobStatus = JobStatus.RUNNING
    actor: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    total: int = 0
    processed: int = 0
    restarted: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    finished_at: UtcDatetime | None = None


class RestartReport(BaseModel):
    """Which events a restart took and which it skipped, with the reason (by id and counted by reason)."""

    restarted: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)

    def skipped_by_reason(self) -> dict[str, int]:
        """Return ``{reason: count}`` of skipped events."""
        out: dict[str, int] = {}
        for reason in self.skipped.values():
            out[reason] = out.get(reason, 0) + 1
        return out


class RestartCount(BaseModel):
    """What a bulk restart would do (a dry run) or did (a finished job): counts, and skips by reason."""

    matched: int
    restarted: int
    skipped: dict[str, int] = Field(default_factory=dict)
    dry_run: bool = False
    job: str | None = None


class ReplayRequest(BaseModel):
    """A replay of what a webhook missed: the changes logged within ``since`` … ``until`` (durations back from
    now such as ``2h``, or ISO-8601 times), of ``types`` if given (patterns allowed), that it has no event of."""

    model_config = ConfigDict(extra="forbid")

    since: str = Field(min_length=1, max_length=100)
    until: str | None = Field(default=None, max_length=100)
    types: list[str] = Field(default_factory=list, max_length=100)
    dry_run: bool = False


class ReplayCount(BaseModel):
    """What a replay would do (a dry run) or did: changes logged in the window, those of the webhook's (and the
    asked) types, those it already has an event of, and those replayed (or to replay)."""

    webhook_id: str
    since: UtcDatetime
    until: UtcDatetime | None = None
    logged: int
    matched: int
    already: int
    replayed: int
    dry_run: bool = False
    job: str | None = None


class EventPage(BaseModel):
    """One page of events, newest first; ``next`` is the ``before`` cursor of the next page (None: last page)."""

    items: list[WebhookEvent]
    next: str | None = None


class EventDetail(WebhookEvent):
    """An event with every attempt made for it, in order; for a coalescing webhook, the changes folded into it
    (the newest 100)."""

    attempts: list[Attempt] = Field(default_factory=list)
    folded_changes: list[str] = Field(default_factory=list)


class OldestRetrying(BaseModel):
    """The oldest event still being retried."""

    id: str
    age_seconds: int


class Stats(BaseModel):
    """Counts of events per status, per event type and per webhook, and the oldest Retrying event."""

    by_status: dict[str, int]
    by_type: dict[str, int]
    by_webhook: dict[str, int]
    total: int
    oldest_retrying: OldestRetrying | None = None


class WebhookView(BaseModel):
    """A webhook as lists and the API show it: no secrets, plus the recent success rate."""

    id: str
    url: str
    event_types: list[str]
    previous_secret_expires_at: UtcDatetime | None = None
    active: bool
    disabled_reason: str | None = None
    description: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    rate_limit: float | None = None
    ordering: Ordering = Ordering.NONE
    coalesce: Coalesce = Coalesce.NONE
    created_at: UtcDatetime
    updated_at: UtcDatetime
    recent_success: str = "-"
    health: str = "healthy"  # healthy / failing / breaker open since … / disabled (reason)


class WebhookCreate(BaseModel):
    """What it takes to create a webhook (the secret is generated unless given)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    event_types: list[str] = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=1000)
    secret: str | None = Field(default=None, max_length=200)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    rate_limit: float | None = Field(default=None, gt=0, le=100_000, description="requests per second")
    ordering: Ordering = Field(default=Ordering.NONE, description="entity: one event per entity in flight, in "
                               "the order of its changes")
    coalesce: Coalesce = Field(default=Coalesce.NONE, description="latest: a change folds into its entity's "
                               "newest waiting event of the same type (needs ordering=entity)")


class WebhookUpdate(BaseModel):
    """The fields of a webhook that can change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    headers: dict[str, str] | None = Field(default=None, max_length=50)
    active: bool | None = None
    rate_limit: float | None = Field(default=None, ge=0, le=100_000,
                                     description="requests per second; 0 removes the limit")
    ordering: Ordering | None = None
    coalesce: Coalesce | None = None


class WebhookSecret(BaseModel):
    """A webhook's signing secrets: the current one, and the previous one while its grace period lasts."""

    id: str
    secret: str
    previous_secret: str | None = None
    previous_secret_expires_at: UtcDatetime | None = None


class TokenCreated(BaseModel):
    """A new token's record and the token itself (shown this once)."""

    token: str
    record: TokenView


class WebhookCreated(WebhookView):
    """A new webhook, with its signing secret (shown this once; ``GET /webhooks/{id}/secret`` shows it again)."""

    secret: str


class RotateSecret(BaseModel):
    """How long the old secret keeps signing after a rotation (a duration such as ``24h``, or seconds)."""

    model_config = ConfigDict(extra="forbid")

    grace: str | float = "24h"


class RestartOne(BaseModel):
    """Options of restarting one event."""

    model_config = ConfigDict(extra="forbid")

    force: bool = False


class RestartRequest(BaseModel):
    """A bulk restart: the event filters (as ``GET /events`` takes them), ``force`` and ``dry_run``."""

    model_config = ConfigDict(extra="forbid")

    status: list[str] = Field(default_factory=list, max_length=4)
    type: str | None = Field(default=None, max_length=200)
    webhook: str | None = Field(default=None, max_length=200)
    entity: str | None = Field(default=None, max_length=200)
    since: str | None = Field(default=None, max_length=100)
    until: str | None = Field(default=None, max_length=100)
    search: str | None = Field(default=None, max_length=200)
    force: bool = False
    dry_run: bool = False


class EventCreated(BaseModel):
    """The id of an event that was made (a test event)."""

    event_id: str


class ChangeAccepted(BaseModel):
    """A change event the broker confirmed."""

    id: str

