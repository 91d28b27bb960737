"""Event operations: parse the filters, list and page, show with attempts, stats, restart one or many.

The filters are the same words for the CLI (``--status failed``) and the API (``?status=failed``):
:func:`parse_filter` reads them once; a bad value raises :class:`InvalidFieldError` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from hookpost.admin.restart import restart_events
from hookpost.admin.restart_rules import refusal_for_status
from hookpost.common.durations import parse_duration
from hookpost.common.errors import ConfigError, InvalidInputError, NotFoundError
from hookpost.common.ids import id_time_ms
from hookpost.common.matching import validate_pattern
from hookpost.common.models import EventStatus, WebhookEvent, utcnow
from hookpost.common.records import EventDetail, EventPage, OldestRetrying, RestartCount, RestartReport, Stats
from hookpost.store.events import ERROR_KIND_NAMES, EventFilter

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

MAX_PAGE = 10000


class InvalidFieldError(InvalidInputError):
    """Input that cannot be accepted, in one named field (``status``, ``since``…)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """Read a time: a duration ago (``2h``, ``7d``) or an ISO-8601 time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    try:
        return now - timedelta(seconds=parse_duration(text))
    except (ConfigError, OverflowError):
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"not a time: {text!r} (use a duration such as 2h or 7d, or an ISO-8601 time)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_statuses(values: Sequence[str]) -> list[EventStatus]:
    """Read statuses case-insensitively (``failed`` → ``Failed``)."""
    try:
        return [EventStatus.parse(v) for v in values]
    except ValueError as exc:
        raise InvalidFieldError("status", str(exc)) from None


def parse_filter(statuses: Sequence[str] = (), event_type: str | None = None, webhook_id: str | None = None,
                 entity_id: str | None = None, since: str | None = None, until: str | None = None,
                 search: str | None = None, before: str | None = None,
                 spell: Callable[[str], str] = lambda name: name) -> EventFilter:
    """Turn filter values as typed by a person into an :class:`EventFilter`.

    ``spell`` names a field in error messages (the CLI passes ``lambda n: "--" + n``).
    """
    flt = EventFilter(statuses=parse_statuses(statuses), webhook_id=webhook_id or None,
                      entity_id=entity_id or None, search=parse_search(search))
    if event_type:
        try:
            flt.event_type = validate_pattern(event_type)
        except InvalidInputError as exc:
            raise InvalidFieldError("type", str(exc)) from None
    for name, value in (("since", since), ("until", until)):
        if value:
            try:
                setattr(flt, name, parse_when(value))
            except InvalidInputError as exc:
                raise InvalidFieldError(name, str(exc)) from None
    if before:
        if id_time_ms(before) is None:
            raise InvalidFieldError("before",
                                    f"invalid {spell('before')} {before!r}: give an event id such as evt_01J…")
        flt.before = before
    return flt


def parse_search(text: str | None) -> str | None:
    """Read a search term: one word, matched exactly, or by prefix with a trailing ``*`` (see
    :func:`hookpost.store.events.search_conditions`); raise :class:`InvalidFieldError` for several words."""
    term = (text or "").strip()
    if not term:
        return None
    if len(term.split()) > 1:
        kinds = ", ".join(ERROR_KIND_NAMES)
        raise InvalidFieldError("search", f"search takes one term, not {term!r}: an id, an id prefix ending in *, "
                                          f"an event type, a status code or an error kind ({kinds})")
    if not term.rstrip("*"):
        raise InvalidFieldError("search", "search needs at least one character before *")
    return term


def has_conditions(flt: EventFilter) -> bool:
    """Tell whether a filter narrows anything (a bulk restart needs at least one condition)."""
    return bool(flt.statuses or flt.event_type or flt.webhook_id or flt.entity_id or flt.since or flt.until
                or flt.search or flt.ids)


class EventOps:
    """Listing, showing, counting and restarting webhook events."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    async def list(self, flt: EventFilter, limit: int = 50) -> EventPage:
        """Return up to ``limit`` events matching ``flt``, newest first, and the cursor of the next page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidFieldError("limit", f"limit must be between 1 and {MAX_PAGE}")
        found = await self.admin.store.events.find(flt, limit=limit + 1)
        if folded := await self.folded_into(flt, limit + 1):
            merged = {e.id: e for e in [*found, *folded]}
            found = sorted(merged.values(), key=lambda e: (e.created_ms, e.id), reverse=True)[:limit + 1]
        more = len(found) > limit
        items = await self.with_heads(found[:limit])
        return EventPage(items=items, next=items[-1].id if more and items else None)

    async def get(self, event_id: str) -> EventDetail:
        """Return one event with its attempts (raise :class:`NotFoundError` if there is none)."""
        ev = (await self.with_heads([await self.admin.store.events.get(event_id)]))[0]
        attempts = await self.admin.store.attempts.for_event(event_id)
        folded = await self.admin.store.lanes.folded_into(event_id) if ev.coalesced else []
        return EventDetail(**ev.model_dump(), waiting_behind=ev.waiting_behind, attempts=attempts,
                           folded_changes=folded)

    async def with_heads(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        """Return ``events`` with ``waiting_behind`` set on those waiting in a lane (one read for all)."""
        lanes = [e.lane for e in events if e.waiting and e.lane]
        if not lanes:
            return events
        heads = await self.admin.store.lanes.heads(list(dict.fromkeys(lanes)))
        return [e.model_copy(update={"waiting_behind": heads.get(e.lane)}) if e.waiting and e.lane
                and heads.get(e.lane) != e.id else e for e in events]

    async def folded_into(self, flt: EventFilter, limit: int) -> list[WebhookEvent]:
        """The events that a searched change id folded into (coalesce=latest: such a change has no event of its
        own), within ``flt``'s other filters."""
        if not flt.search or flt.search.strip().endswith("*") or flt.ids:
            return []
        into = await self.admin.store.lanes.folded_change(flt.search.strip())
        if not into:
            return []
        return await self.admin.store.events.find(replace(flt, search=None, ids=into), limit=limit)

    async def stats(self, since: datetime | None = None) -> Stats:
        """Return counts per status, type and webhook (of events created since ``since``), and the oldest
        Retrying event."""
        store = self.admin.store
        query = EventFilter(since=since).query()
        if since is not None:  # a time range: indexed counts per value (see EventRepo.counts_by)
            by_status = {s.value: await store.events.count({**query, "status": s.value}) for s in EventStatus}
            by_type = await store.events.counts_by("type", query)
            by_webhook = await store.events.counts_by("webhook_id", query)
        else:
            by_status = await store.events.group_counts("status", query)
            by_type = await store.events.group_counts("type", query)
            by_webhook = await store.events.group_counts("webhook_id", query)
        oldest = await store.events.find(EventFilter(statuses=[EventStatus.RETRYING], since=since), limit=1,
                                         newest_first=False)
        return Stats(by_status={s.value: by_status.get(s.value, 0) for s in EventStatus},
                     by_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
                     by_webhook=dict(sorted(by_webhook.items(), key=lambda kv: -kv[1])),
                     total=sum(by_status.values()),
                     oldest_retrying=OldestRetrying(id=oldest[0].id, age_seconds=round(
                         (utcnow() - oldest[0].created_at).total_seconds())) if oldest else None)

    async def reindex(self) -> tuple[int, int]:
        """Write the derived search fields on events stored before they existed; return (read, changed)."""
        return await self.admin.store.events.reindex()

    async def matching(self, flt: EventFilter, cap: int = 1_000_000) -> list[WebhookEvent]:
        """Return every event matching ``flt`` (paged through in thousands), newest first."""
        out: list[WebhookEvent] = []
        page = EventFilter(**{**flt.__dict__})
        while len(out) < cap:
            batch = await self.admin.store.events.find(page, limit=1000)
            out += batch
            if len(batch) < 1000:
                break
            page.before = batch[-1].id
        return out

    async def restart_count(self, flt: EventFilter, force: bool = False) -> RestartCount:
        """Count what a restart of the events matching ``flt`` would do (a dry run; nothing changes)."""
        by_status = await self.admin.store.events.group_counts("status", flt.query())
        count = RestartCount(matched=sum(by_status.values()), restarted=0, dry_run=True)
        for status, n in by_status.items():
            why = refusal_for_status(EventStatus(status), force)
            if why:
                count.skipped[why] = count.skipped.get(why, 0) + n
            else:
                count.restarted += n
        return count

    async def restart_ids(self, event_ids: Sequence[str], *, actor: str, force: bool = False) -> RestartReport:
        """Restart events by id (raise :class:`NotFoundError` naming any unknown id); audited."""
        found = await self.matching(EventFilter(ids=list(event_ids)))
        missing = set(event_ids) - {e.id for e in found}
        if missing:
            raise NotFoundError(f"no event {', '.join(sorted(missing))}")
        return await self.restart(found, actor=actor, force=force, what={"ids": list(event_ids)})

    async def restart(self, events: list[WebhookEvent], *, actor: str, force: bool = False,
                      what: dict[str, object] | None = None,
                      progress: Callable[[int], None] | None = None) -> RestartReport:
        """Restart ``events`` already loaded; audited with ``what`` (the ids or the filter) and the counts."""
        report = await restart_events(self.admin.store, self.admin.deliveries, events, force=force,
                                      progress=progress, lanes=self.admin.lanes)
        await self._audit(actor, what or {"ids": [e.id for e in events]}, force, report)
        return report

    async def restart_matching(self, flt: EventFilter, *, actor: str, force: bool = False,
                               progress: Callable[[int], None] | None = None) -> RestartReport:
        """Restart every event matching ``flt``, a page at a time; audited with the filter and the counts."""
        if not has_conditions(flt):
            raise InvalidInputError("a bulk restart needs at least one filter, such as status=failed")
        report = RestartReport()
        page = EventFilter(**{**flt.__dict__})
        while True:
            batch = await self.admin.store.events.find(page, limit=1000)
            part = await restart_events(self.admin.store, self.admin.deliveries, batch, force=force,
                                        progress=progress, lanes=self.admin.lanes)
            report.restarted += part.restarted
            report.skipped.update(part.skipped)
            if len(batch) < 1000:
                break
            page.before = batch[-1].id
        await self._audit(actor, {"filter": describe_filter(flt)}, force, report)
        return report

    async def _audit(self, actor: str, what: dict[str, object], force: bool, report: RestartReport) -> None:
        await self.admin.record(actor, "events.restarted", None, **what, force=force,
                                restarted=len(report.restarted), skipped=report.skipped_by_reason())


def describe_filter(flt: EventFilter) -> dict[str, object]:
    """Return a filter as JSON-ready data for the audit log (only the conditions that are set)."""
    out: dict[str, object] = {}
    if flt.statuses:
        out["status"] = [s.value for s in flt.statuses]
    for name in ("event_type", "webhook_id", "entity_id", "search", "before"):
        if getattr(flt, name):
            out[name] = getattr(flt, name)
    for name in ("since", "until"):
        value = getattr(flt, name)
        if value:
            out[name] = value.isoformat()
    if flt.ids:
        out["ids"] = list(flt.ids)
    return out
