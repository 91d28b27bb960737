"""The pydantic models of Hookpost, defined once and used on the wire, in the store and in ``--json`` output.

A *change event* is what upstream systems publish ("article A-1001 updated"). A *webhook event* is one change
for one subscribed webhook, with its delivery status. An *attempt* is one HTTP request made for a webhook event.
"""

import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from hookpost.common.matching import validate_pattern, validate_type
from hookpost.common.traceparent import TraceContext


def utcnow() -> datetime:
    """Return the current time, tz-aware UTC, truncated to milliseconds (what MongoDB stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as tz-aware UTC (a naive value is taken to be UTC already)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


def parse_choice(choices: type[E], text: str, what: str) -> E:
    """Return the member of ``choices`` whose value is ``text`` in any case; raise ``ValueError`` naming them.

    >>> parse_choice(EventStatus, " failed", "status")
    <EventStatus.FAILED: 'Failed'>
    """
    for member in choices:
        if member.value.lower() == text.strip().lower():
            return member
    raise ValueError(f"unknown {what} {text!r}: choose from {', '.join(m.value for m in choices)}")

class EventStatus(StrEnum):
    """Where a webhook event stands. Exactly these four words, in the store and in the CLI."""

    NEW = "New"
    RETRYING = "Retrying"
    FAILED = "Failed"
    FINISHED = "Finished"

    @classmethod
    def parse(cls, text: str) -> "EventStatus":
        """Read a status case-insensitively (``failed`` → ``Failed``); raise ``ValueError`` naming the choices."""
        return parse_choice(cls, text, "status")


def now_ms() -> int:
    """Return the current time in epoch milliseconds (how times that are queried or compared are stored)."""
    return int(time.time() * 1000)


def to_ms(value: datetime) -> int:
    """Return ``value`` in epoch milliseconds."""
    return int(value.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Return epoch milliseconds as a tz-aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def due_fields(ms: int | None) -> dict[str, Any]:
    """Return an event's paired next-attempt fields for ``ms`` (None: no attempt due): ``next_attempt_ms`` is
    what is queried and compared, ``next_attempt_at`` what people see; every write sets both from here.

    >>> due_fields(0)
    {'next_attempt_ms': 0, 'next_attempt_at': datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)}
    """
    return {"next_attempt_ms": ms, "next_attempt_at": None if ms is None else from_ms(ms)}


# A datetime read back as UTC. (The local stand-in returns a datetime written by ``$set`` as a naive string;
# times that are queried are therefore also stored as epoch-ms integers, and only displayed from these.)
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]

IN_FLIGHT = (EventStatus.NEW, EventStatus.RETRYING)


class Ordering(StrEnum):
    """How a webhook orders its events: ``none`` (each on its own), or ``entity`` (one lane per entity: at most one
    event of an entity in flight, in the order of its changes)."""

    NONE = "none"
    ENTITY = "entity"


class Coalesce(StrEnum):
    """Whether a webhook folds changes: ``none``, or ``latest`` (a change folds into its entity's newest waiting
    event of the same type; needs ``ordering=entity``)."""

    NONE = "none"
    LATEST = "latest"


MAX_SEQUENCE = 2**63 - 1


class Entity(BaseModel):
    """The thing that changed: a kind (``article``) and that system's id for it (``A-1001``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100)
    id: str = Field(min_length=1, max_length=200)


class ChangeEvent(BaseModel):
    """A change published by an upstream system; the wire format of ``PREFIX.changes``.

    Example body (UTF-8 JSON, ``content_type`` ``application/json``)::

        {"id": "chg-42", "type": "article.updated", "entity": {"kind": "article", "id": "A-1001"},
         "occurred_at": "2026-11-27T12:00:00Z", "data": {"fields": ["price"]}, "source": "erp"}
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    entity: Entity
    occurred_at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] | None = None
    source: str | None = Field(default=None, max_length=200)
    sequence: int | None = Field(default=None, ge=0, le=MAX_SEQUENCE)  # increases per entity (the producer's order)

    @field_validator("type")
    @classmethod
    def _type_is_concrete(cls, value: str) -> str:
        return validate_type(value)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return as_utc(value)
        except OverflowError:  # 9999-12-31T23:59-01:00 and the like: no such time in UTC
            raise ValueError("out of range once converted to UTC") from None


class Webhook(BaseModel):
    """A subscriber: where to POST, which event types it wants, and the secret(s) that sign its requests."""

    id: str
    url: str
    event_types: list[str]
    secret: str = Field(repr=False)
    previous_secret: str | None = Field(default=None, repr=False)
    previous_secret_expires_at: UtcDatetime | None = None
    active: bool = True
    disabled_reason: str | None = None
    description: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    rate_limit: float | None = Field(default=None, gt=0, le=100_000)  # requests per second (None: no limit)
    ordering: Ordering = Ordering.NONE
    coalesce: Coalesce = Coalesce.NONE
    created_at: UtcDatetime = Field(default_factory=utcnow)
    updated_at: UtcDatetime = Field(default_factory=utcnow)

    @field_validator("event_types")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a webhook needs at least one event type")
        return [validate_pattern(v) for v in value]

    @model_validator(mode="after")
    def _coalesce_needs_lanes(self) -> "Webhook":
        check_sync_options(self.ordering, self.coalesce)
        return self

    @property
    def ordered(self) -> bool:
        """Whether this webhook keeps each entity's events in one lane (``ordering=entity``)."""
        return self.ordering == Ordering.ENTITY

    def signing_secrets(self, now: datetime | None = None) -> list[str]:
        """Return the secrets that sign a request made at ``now`` (default: now): the current one, and the
        previous one while its rotation grace period lasts."""
        secrets = [self.secret]
        if not self.previous_secret:
            return secrets
        now = now or utcnow()
        if self.previous_secret_expires_at and as_utc(self.previous_secret_expires_at) > now:
            secrets.append(self.previous_secret)
        return secrets

    def public_dict(self) -> dict[str, Any]:
        """Return the webhook as JSON-ready data without its secrets (for lists, logs and ``--json``)."""
        return self.model_dump(mode="json", exclude={"secret", "previous_secret"})


def check_sync_options(ordering: Ordering, coalesce: Coalesce) -> None:
    """Refuse ``coalesce=latest`` without ``ordering=entity`` (folding needs the entity's lane)."""
    if coalesce == Coalesce.LATEST and ordering != Ordering.ENTITY:
        raise ValueError("coalesce=latest needs ordering=entity")


def attempt_id(event_id: str, attempt: int) -> str:
    """Return the id of attempt number ``attempt`` of ``event_id`` (the same for every try of it)."""
    return f"{event_id}.{attempt:03d}"


class Attempt(BaseModel):
    """One HTTP request made for a webhook event, with what came back."""

    id: str
    event_id: str
    webhook_id: str
    attempt: int
    started_at: UtcDatetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None


class WebhookEvent(BaseModel):
    """One change for one webhook, and where its delivery stands.

    ``attempt_count`` counts every attempt ever made; ``budget_start`` is the count when the current budget of
    ``max_attempts`` began (0, or the count at the last restart).
    """

    id: str
    webhook_id: str
    change_id: str
    type: str
    entity: Entity
    payload: dict[str, Any]
    status: EventStatus = EventStatus.NEW
    attempt_count: int = 0
    budget_start: int = 0
    next_attempt_at: UtcDatetime | None = None
    next_attempt_ms: int | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    held: str | None = None  # the endpoint whose open breaker holds this event's next delivery (not queued)
    # for a webhook with ordering=entity: the event's lane (see hookpost.common.lanes); ``waiting`` while it waits
    # in the lane behind its head (New, no message in any queue); ``superseded_by`` when it arrived late and was
    # ended unsent; ``coalesced`` the changes it stands for (coalesce=latest). Absent from other events' documents.
    lane: str | None = Field(default=None, exclude_if=lambda v: v is None)
    waiting: bool = Field(default=False, exclude_if=lambda v: not v)
    superseded_by: str | None = Field(default=None, exclude_if=lambda v: v is None)
    coalesced: int | None = Field(default=None, exclude_if=lambda v: v is None)
    waiting_behind: str | None = Field(default=None, exclude_if=lambda v: v is None)  # shown, never stored

    def lane_note(self) -> str | None:
        """Why an ordered webhook's event is where it is, in a few words (None for other events)."""
        if self.superseded_by is not None:
            return f"superseded by {self.superseded_by or 'a newer change'}"
        if self.waiting:
            return f"waiting behind {self.waiting_behind}" if self.waiting_behind else "waiting in its lane"
        if self.coalesced and self.coalesced > 1:
            return f"stands for {self.coalesced} changes"
        return None
    trace: TraceContext | None = None  # its trace id and parent span (None: stored before tracing)
    # attempt 1, kept in the event's own document (later ones are in ``attempts``); read with the history, so it
    # is left out of lists and JSON (see hookpost.store.attempts)
    first_attempt: Attempt | None = Field(default=None, exclude=True)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    created_ms: int = Field(default_factory=now_ms)
    updated_at: UtcDatetime = Field(default_factory=utcnow)
    updated_ms: int = Field(default_factory=now_ms)
    finished_at: UtcDatetime | None = None


class DeliveryMessage(BaseModel):
    """The body of a message on ``PREFIX.deliver``: one attempt to make.

    It carries everything the attempt needs except the webhook (URL, secrets), which the dispatcher keeps in a
    small cache, so a delivery costs no store read.
    """

    event_id: str
    webhook_id: str
    attempt: int = Field(ge=1)
    budget_start: int = Field(default=0, ge=0)
    deferrals: int = Field(default=0, ge=0)
    payload: dict[str, Any]
    due_ms: int | None = None  # the event's next_attempt_ms on record for this attempt (None: unknown)
    probe: bool = False  # the probe request of an open circuit breaker (goes through while others are held)
    # the event's lane (ordering=entity): checked before the request, moved on after; absent for other webhooks
    lane: str | None = Field(default=None, exclude_if=lambda v: v is None)
    trace: TraceContext | None = None  # the event's trace context, so a retry hours later stays in its trace


class FailedNotice(BaseModel):
    """The body of a message on ``PREFIX.failed``: an event that ran out of attempts (or was refused for good)."""

    event_id: str
    webhook_id: str
    type: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    failed_at: UtcDatetime = Field(default_factory=utcnow)


def build_payload(event_id: str, change: ChangeEvent) -> dict[str, Any]:
    """Return the JSON body a receiver gets for ``change``: just enough to know what changed.

    >>> change = ChangeEvent(id="c1", type="article.updated", entity=Entity(kind="article", id="A-1"))
    >>> sorted(build_payload("evt_1", change)["data"])
    ['change_id', 'entity', 'occurred_at']
    """
    data: dict[str, Any] = {
        "entity": change.entity.model_dump(),
        "change_id": change.id,
        "occurred_at": change.occurred_at.isoformat().replace("+00:00", "Z"),
    }
    if change.source:
        data["source"] = change.source
    if change.sequence is not None:
        data["sequence"] = change.sequence
    if change.data:
        data["details"] = change.data
    return {
        "id": event_id,
        "type": change.type,
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        "data": data,
    }
