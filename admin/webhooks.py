"""Webhook operations: list, show, create, update, enable, disable, delete, reveal and rotate the secret, and
send a test event. Every change is audited."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hookpost.common.deliveries import first_delivery
from hookpost.common.endpoints import EndpointHealth, endpoint_key, health_label
from hookpost.common.errors import InvalidInputError
from hookpost.common.ids import new_id
from hookpost.common.matching import validate_pattern
from hookpost.common.models import (
    ChangeEvent,
    Coalesce,
    Entity,
    Ordering,
    Webhook,
    WebhookEvent,
    build_payload,
    check_sync_options,
    to_ms,
    utcnow,
)
from hookpost.common.records import WebhookCreate, WebhookSecret, WebhookUpdate, WebhookView
from hookpost.common.signing import secret_key
from hookpost.common.targets import TargetPolicy
from hookpost.store.webhooks import BrokenWebhook

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

log = logging.getLogger("hookpost.admin")

TEST_EVENT_TYPE = "hookpost.test"
DISABLED_BY_OPERATOR = "disabled by operator"


def success_rate(codes: list[int | None]) -> str:
    """Return the share of 2xx answers among status codes (None for errors): ``"97% of 100"``, or ``-``."""
    if not codes:
        return "-"
    ok = sum(1 for c in codes if c is not None and 200 <= c < 300)
    return f"{round(100 * ok / len(codes))}% of {len(codes)}"


def sync_options(ordering: Ordering, coalesce: Coalesce) -> None:
    """Refuse ``coalesce=latest`` without ``ordering=entity`` (:class:`InvalidInputError`)."""
    try:
        check_sync_options(ordering, coalesce)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Refuse header names or values that cannot go into an HTTP request."""
    for name, value in headers.items():
        if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
            raise InvalidInputError(f"invalid header {name!r}: names are tokens, values one line")
    return headers


class WebhookOps:
    """Manage webhooks (who gets which event types, where and signed with what)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def check_url(self, url: str) -> str:
        """Validate a receiver URL against the configured target policy (raise :class:`InvalidInputError`)."""
        s = self.admin.settings
        TargetPolicy(allow_private=s.allow_private_targets, allowed_networks=s.allowed_target_networks,
                     require_https=s.require_https).check_url(url)
        return url

    async def view(self, hook: Webhook, endpoints: dict[str, EndpointHealth] | None = None) -> WebhookView:
        """Return a webhook without secrets, with its success rate over the last 100 attempts and the health of
        its endpoint (from ``endpoints`` if given, else read)."""
        codes = await self.admin.store.attempts.recent_outcomes(hook.id, 100)
        key = endpoint_key(hook.url)
        health = endpoints.get(key) if endpoints is not None else await self.admin.store.endpoints.get(key)
        return WebhookView(**hook.public_dict(), recent_success=success_rate(codes),
                           health=health_label(hook.active, hook.disabled_reason, health))

    async def list(self) -> list[WebhookView]:
        """Return every webhook that validates, oldest first (a broken document is logged: see :meth:`load`)."""
        views, broken = await self.load()
        for b in broken:
            log.warning("webhook document does not validate; left out of the list",
                        extra={"webhook_id": b.id, "error": b.error})
        return views

    async def load(self) -> tuple[list[WebhookView], list[BrokenWebhook]]:
        """Return every webhook, oldest first, with its endpoint's health, and apart the stored documents that do
        not validate (edited by hand), with what is wrong with each."""
        hooks, broken = await self.admin.store.webhooks.load()
        endpoints = {h.id: h for h in await self.admin.store.endpoints.all()}
        return [await self.view(h, endpoints) for h in hooks], broken

    async def get(self, webhook_id: str) -> WebhookView:
        """Return one webhook (raise :class:`NotFoundError` if there is none)."""
        return await self.view(await self.admin.store.webhooks.get(webhook_id))

    async def create(self, spec: WebhookCreate, *, actor: str) -> Webhook:
        """Create a webhook (URL checked, patterns validated, secret generated unless given); audited."""
        self.check_url(spec.url)
        patterns = [validate_pattern(e) for e in spec.event_types]
        if spec.secret is not None:
            secret_key(spec.secret)
        sync_options(spec.ordering, spec.coalesce)
        hook = await self.admin.store.webhooks.create(spec.url, patterns, description=spec.description,
                                                      secret=spec.secret, headers=check_headers(spec.headers),
                                                      rate_limit=spec.rate_limit, ordering=spec.ordering,
                                                      coalesce=spec.coalesce)
        await self.admin.record(actor, "webhook.created", hook.id, url=hook.url, event_types=hook.event_types)
        return hook

    async def update(self, webhook_id: str, spec: WebhookUpdate, *, actor: str) -> Webhook:
        """Change the fields given in ``spec``; audited with the changed fields."""
        fields: dict[str, Any] = {}
        if spec.url is not None:
            fields["url"] = self.check_url(spec.url)
        if spec.event_types is not None:
            fields["event_types"] = [validate_pattern(e) for e in spec.event_types]
        if spec.description is not None:
            fields["description"] = spec.description
        if spec.headers is not None:
            fields["headers"] = check_headers(spec.headers)
        if spec.active is not None:
            fields["active"] = spec.active
            fields["disabled_reason"] = None if spec.active else DISABLED_BY_OPERATOR
        if spec.rate_limit is not None:
            fields["rate_limit"] = spec.rate_limit or None  # 0 removes the limit
        if spec.ordering is not None:
            fields["ordering"] = spec.ordering
        if spec.coalesce is not None:
            fields["coalesce"] = spec.coalesce
        if not fields:
            raise InvalidInputError("nothing to update: give url, event_types, description, headers, active, "
                                    "rate_limit, ordering or coalesce")
        before = await self.admin.store.webhooks.get(webhook_id)
        if "ordering" in fields or "coalesce" in fields:
            ordering = fields.get("ordering", before.ordering)
            if ordering == Ordering.NONE and "coalesce" not in fields:
                fields["coalesce"] = Coalesce.NONE  # coalescing needs the lanes: it goes with them
            sync_options(ordering, fields.get("coalesce", before.coalesce))
        hook = await self.admin.store.webhooks.update(webhook_id, **fields)
        await self.admin.record(actor, "webhook.updated", webhook_id,
                                changed={k: v for k, v in fields.items() if k != "disabled_reason"})
        await self.after_change(before, hook)
        return hook

    async def after_change(self, before: Webhook, after: Webhook | None) -> None:
        """Settle an ordered webhook's waiting events after a change: released when its ordering is turned off,
        ``Failed`` when it is disabled or deleted (``after`` None)."""
        if not before.ordered:
            return
        if after is None or not after.active:
            reason = ("webhook deleted" if after is None
                      else f"webhook disabled: {after.disabled_reason or 'by operator'}")
            await self.admin.lanes.fail_webhook(before.id, reason)
        elif not after.ordered:
            await self.admin.lanes.release_webhook(before.id)

    async def set_active(self, webhook_id: str, active: bool, *, actor: str) -> Webhook:
        """Enable or disable a webhook; audited. Disabling an ordered webhook ends its waiting events ``Failed``."""
        before = await self.admin.store.webhooks.get(webhook_id)
        hook = await self.admin.store.webhooks.set_active(webhook_id, active, None if active else DISABLED_BY_OPERATOR)
        await self.admin.record(actor, "webhook.enabled" if active else "webhook.disabled", webhook_id)
        await self.after_change(before, hook)
        return hook

    async def delete(self, webhook_id: str, *, actor: str) -> None:
        """Delete a webhook (its events stay until the janitor deletes them); audited. An ordered webhook's
        waiting events end ``Failed``."""
        before = await self.admin.store.webhooks.get(webhook_id)
        await self.admin.store.webhooks.delete(webhook_id)
        await self.admin.record(actor, "webhook.deleted", webhook_id)
        await self.after_change(before, None)

    async def reveal_secret(self, webhook_id: str, *, actor: str) -> WebhookSecret:
        """Return a webhook's signing secrets; audited (who saw it)."""
        hook = await self.admin.store.webhooks.get(webhook_id)
        await self.admin.record(actor, "webhook.secret_revealed", webhook_id)
        live_previous = hook.previous_secret if len(hook.signing_secrets()) > 1 else None
        return WebhookSecret(id=hook.id, secret=hook.secret, previous_secret=live_previous,
                             previous_secret_expires_at=hook.previous_secret_expires_at if live_previous else None)

    async def rotate_secret(self, webhook_id: str, grace: float, *, actor: str) -> WebhookSecret:
        """Make a new signing secret; the old one keeps signing for ``grace`` seconds; audited."""
        if grace < 0:
            raise InvalidInputError("grace must not be negative")
        hook = await self.admin.store.webhooks.rotate_secret(webhook_id, grace)
        await self.admin.record(actor, "webhook.secret_rotated", webhook_id, grace_seconds=grace)
        return WebhookSecret(id=hook.id, secret=hook.secret, previous_secret=hook.previous_secret,
                             previous_secret_expires_at=hook.previous_secret_expires_at)

    async def send_test(self, webhook_id: str, *, actor: str) -> WebhookEvent:
        """Make a ``hookpost.test`` event for this webhook only (no fan-out) and publish its delivery."""
        hook = await self.admin.store.webhooks.get(webhook_id)
        now = utcnow()
        ms = to_ms(now)
        event_id = new_id("evt", ms)  # an event id encodes its created_ms (paging and id-prefix search rely on it)
        change = ChangeEvent(id=new_id("chg"), type=TEST_EVENT_TYPE, entity=Entity(kind="webhook", id=hook.id),
                             source="hookpost")
        event = WebhookEvent(id=event_id, webhook_id=hook.id, change_id=change.id, type=change.type,
                             entity=change.entity, payload=build_payload(event_id, change), created_at=now,
                             created_ms=ms, updated_at=now, updated_ms=ms)
        await self.admin.store.events.insert_new([event])
        await self.admin.deliveries.deliveries([first_delivery(event)])
        await self.admin.record(actor, "webhook.test_sent", webhook_id, event_id=event_id)
        return event
