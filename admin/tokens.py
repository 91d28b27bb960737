"""API tokens: create (shown once), list, revoke, and resolve a presented token to its record.

A token is ``hp_`` + 43 random URL-safe characters (256 bits). Only its SHA-256 hash is stored: a fast hash is
enough for a random secret of that length (no dictionary to try), and lets every request find its token with
one indexed lookup. :meth:`TokenOps.resolve` is what the API (and the web console) call on each request;
it returns the record also when revoked, so the caller can say so (``record.revoked``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from hookpost.common.errors import InvalidInputError
from hookpost.common.ids import new_id
from hookpost.common.models import utcnow
from hookpost.common.records import ApiToken, Role, TokenCreated

if TYPE_CHECKING:
    from hookpost.admin.core import Admin

TOKEN_PREFIX = "hp_"


def hash_token(token: str) -> str:
    """Return the stored hash of ``token`` (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    """Tell whether ``token`` has the shape of a Hookpost token (cheap check before a store lookup)."""
    return token.startswith(TOKEN_PREFIX) and 20 <= len(token) <= 100 and token.isascii()


class TokenOps:
    """Create, list, revoke and resolve API tokens."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    async def create(self, name: str, role: Role | str, *, actor: str) -> TokenCreated:
        """Make a token; return it (shown this once) with its record; audited."""
        try:
            role = Role.parse(role) if isinstance(role, str) else role
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidInputError("a token needs a name of 1 to 100 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = ApiToken(id=new_id("tok"), name=name, role=role, hash=hash_token(token), created_by=actor)
        await self.admin.store.tokens.insert(record)
        await self.admin.record(actor, "token.created", record.id, name=name, role=role.value)
        return TokenCreated(token=token, record=record.view())

    async def list(self) -> list[ApiToken]:
        """Return every token record (no secrets: only hashes are stored)."""
        return await self.admin.store.tokens.list()

    async def revoke(self, token_id: str, *, actor: str) -> ApiToken:
        """Revoke a token: it stops working at once on every server; audited."""
        record = await self.admin.store.tokens.get(token_id)
        if not record.revoked:
            now = utcnow()
            await self.admin.store.tokens.set(token_id, revoked_at=now, revoked_by=actor)
            record = record.model_copy(update={"revoked_at": now, "revoked_by": actor})
            await self.admin.record(actor, "token.revoked", token_id, name=record.name)
        return record

    async def resolve(self, token: str) -> ApiToken | None:
        """Return the record of a presented token (revoked ones too: check ``.revoked``), or None if unknown."""
        if not looks_like_token(token):
            return None
        digest = hash_token(token)
        record = await self.admin.store.tokens.by_hash(digest)
        if record is None or not hmac.compare_digest(record.hash, digest):
            return None
        return record

    async def is_revoked(self, token_id: str) -> bool:
        """Tell whether the token ``token_id`` was revoked (or no longer exists): for sessions made from it."""
        try:
            return (await self.admin.store.tokens.get(token_id)).revoked
        except Exception:
            return True
