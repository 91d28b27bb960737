"""The ``webhooks`` collection: create, read, update, enable/disable, delete, rotate secrets.

A document someone edited by hand may no longer validate (a ``description`` that is a number, a URL that is not
one). Listing never fails for it: :meth:`WebhookRepo.load` returns the valid webhooks and, apart, each broken
document's id with what is wrong, so the dispatcher serves every other webhook and says loudly which one it
cannot serve.

Every write sets ``updated_ms`` (epoch milliseconds, indexed) and a delete leaves a tombstone in
``webhooks_deleted``, so the dispatcher's cache reloads only what changed (:meth:`WebhookRepo.changed_since`,
:meth:`WebhookRepo.deleted_since`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from hookpost.common.errors import NotFoundError
from hookpost.common.ids import new_id
from hookpost.common.models import Coalesce, Ordering, Webhook, now_ms, utcnow
from hookpost.common.signing import generate_secret
from hookpost.store.docs import from_doc, to_doc


@dataclass(frozen=True)
class BrokenWebhook:
    """A stored webhook document that does not validate: its id and what is wrong with it."""

    id: str
    error: str


def describe(exc: ValidationError) -> str:
    """One line naming each invalid field and why (``description: Input should be a valid string``)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors())


class WebhookRepo:
    """Webhook documents, keyed by ``wh_`` ids."""

    TOMBSTONE_DAYS = 7

    def __init__(self, coll: AsyncCollection[dict[str, Any]],
                 deleted: AsyncCollection[dict[str, Any]] | None = None) -> None:
        self.coll = coll
        self.deleted = deleted if deleted is not None else coll.database[coll.name + "_deleted"]

    async def ensure_indexes(self) -> None:
        """Index the active flag, the last change (incremental reloads) and the tombstones' time."""
        await self.coll.create_index([("active", ASCENDING)])
        await self.coll.create_index([("updated_ms", ASCENDING)])
        await self.deleted.create_index([("deleted_ms", ASCENDING)])

    async def create(self, url: str, event_types: list[str], *, description: str = "", secret: str | None = None,
                     headers: dict[str, str] | None = None, active: bool = True,
                     rate_limit: float | None = None, ordering: Ordering = Ordering.NONE,
                     coalesce: Coalesce = Coalesce.NONE) -> Webhook:
        """Store a new webhook and return it (with a generated secret unless ``secret`` is given)."""
        hook = Webhook(id=new_id("wh"), url=url, event_types=event_types, description=description,
                       secret=secret or generate_secret(), headers=headers or {}, active=active,
                       rate_limit=rate_limit, ordering=ordering, coalesce=coalesce)
        await self.coll.insert_one({**to_doc(hook), "updated_ms": now_ms()})
        return hook

    async def get(self, webhook_id: str) -> Webhook:
        """Return the webhook ``webhook_id``; raise :class:`NotFoundError` if there is none."""
        doc = await self.coll.find_one({"_id": webhook_id})
        if doc is None:
            raise NotFoundError(f"no webhook {webhook_id!r}")
        return from_doc(Webhook, doc)

    async def list(self, *, active_only: bool = False, limit: int = 1000) -> list[Webhook]:
        """Return up to ``limit`` valid webhooks, oldest first (documents that do not validate are left out:
        see :meth:`load`)."""
        query: dict[str, Any] = {"active": True} if active_only else {}
        cursor = self.coll.find(query).sort("_id", ASCENDING).limit(limit)
        hooks, _ = split_documents([d async for d in cursor])
        return hooks

    async def load(self, page: int = 1000) -> tuple[list[Webhook], list[BrokenWebhook]]:
        """Return every webhook (no cap on how many), and apart every document that does not validate, with the
        reason.

        Pages go by ``updated_ms`` (an indexed integer; on the stand-in a range on ``_id`` scans the whole
        collection for every page); documents without it (written before 0.2, or by hand) are read apart.
        """
        hooks, broken = await self.changed_since(0, page)
        legacy = await self.coll.find({"updated_ms": None}).batch_size(page).to_list()
        good, bad = split_documents(legacy)
        return sorted(hooks + good, key=lambda h: h.id), broken + bad

    async def update(self, webhook_id: str, **fields: Any) -> Webhook:
        """Set ``fields`` on the webhook (validated through the model) and return it."""
        hook = await self.get(webhook_id)
        merged = Webhook.model_validate({**hook.model_dump(), **fields, "updated_at": utcnow()})
        changes = {k: getattr(merged, k) for k in [*fields, "updated_at"]}
        await self.coll.update_one({"_id": webhook_id}, {"$set": {**changes, "updated_ms": now_ms()}})
        return merged

    async def set_active(self, webhook_id: str, active: bool, reason: str | None = None) -> Webhook:
        """Enable or disable a webhook; ``reason`` says why it was disabled (shown in list/show)."""
        return await self.update(webhook_id, active=active, disabled_reason=None if active else reason)

    async def rotate_secret(self, webhook_id: str, grace: float, new_secret: str | None = None,
                            now: datetime | None = None) -> Webhook:
        """Make a new current secret; the old one keeps signing for ``grace`` seconds."""
        hook = await self.get(webhook_id)
        now = now or utcnow()
        return await self.update(webhook_id, secret=new_secret or generate_secret(), previous_secret=hook.secret,
                                 previous_secret_expires_at=now + timedelta(seconds=grace))

    async def delete(self, webhook_id: str) -> None:
        """Delete a webhook (its events stay until the janitor removes them)."""
        ms = now_ms()
        # the tombstone first: a crash in between leaves a tombstone for a live webhook, which the next change
        # to it (or a full reload) corrects; the other way round a cache could keep serving a deleted webhook
        await self.deleted.update_one({"_id": webhook_id}, {"$set": {"deleted_ms": ms}}, upsert=True)
        res = await self.coll.delete_one({"_id": webhook_id})
        if res.deleted_count == 0:
            await self.deleted.delete_one({"_id": webhook_id})
            raise NotFoundError(f"no webhook {webhook_id!r}")
        old = [d["_id"] async for d in self.deleted.find(
            {"deleted_ms": {"$lt": ms - self.TOMBSTONE_DAYS * 86_400_000}}, {"_id": 1}).limit(1000)]
        if old:
            await self.deleted.delete_many({"_id": {"$in": old}})

    async def changed_since(self, since_ms: int, page: int = 1000) -> tuple[list[Webhook], list[BrokenWebhook]]:
        """Return the webhooks written at or after ``since_ms`` (``updated_ms``), and apart those that do not
        validate, in pages of ``page``."""
        hooks: list[Webhook] = []
        broken: list[BrokenWebhook] = []
        cursor_ms, seen = since_ms, set[str]()
        while True:
            docs = await self.coll.find({"updated_ms": {"$gte": cursor_ms}}).sort("updated_ms", ASCENDING).limit(
                page + len(seen)).to_list()
            fresh = [d for d in docs if d["_id"] not in seen]
            good, bad = split_documents(fresh)
            hooks += good
            broken += bad
            if len(docs) < page + len(seen) or not fresh:
                return hooks, broken
            cursor_ms = docs[-1]["updated_ms"]
            seen = {d["_id"] for d in docs if d["updated_ms"] == cursor_ms}

    async def deleted_since(self, since_ms: int) -> list[str]:
        """Return the ids of webhooks deleted at or after ``since_ms`` (tombstones are kept seven days)."""
        cursor = self.deleted.find({"deleted_ms": {"$gte": since_ms}}, {"_id": 1}).limit(100_000)
        return [str(d["_id"]) async for d in cursor]


def split_documents(docs: list[dict[str, Any]]) -> tuple[list[Webhook], list[BrokenWebhook]]:
    """Validate documents: the webhooks, and the broken ones with what is wrong."""
    hooks, broken = [], []
    for doc in docs:
        try:
            hooks.append(from_doc(Webhook, doc))
        except ValidationError as exc:
            broken.append(BrokenWebhook(str(doc.get("_id")), describe(exc)))
    return hooks, broken
