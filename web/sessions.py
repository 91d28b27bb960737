"""Web console sessions: a signed cookie that names the API token someone signed in with, and CSRF tokens.

The cookie holds ``{token id, name, role, expiry, nonce}`` as base64 JSON plus an HMAC-SHA256 over it, keyed
with ``HOOKPOST_SESSION_SECRET`` (so every server instance can read every other's cookies). It never holds the
API token itself. Each request re-checks that the token is not revoked (:meth:`TokenOps.is_revoked`), so
revoking a token ends its sessions at once.

CSRF: every form carries ``_csrf`` = HMAC(secret, ``"csrf:" + nonce``), compared in constant time; the
sign-in form (no session yet) uses a double-submit cookie. Cookies are ``HttpOnly``, ``SameSite=Strict``,
``Secure`` when the console is served over HTTPS, and expire with the session.
"""

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

from hookpost.common.records import ApiToken, Role

log = logging.getLogger("hookpost.web.console")

SESSION_COOKIE = "hookpost_session"
PRESIGN_COOKIE = "hookpost_signin"


@dataclass(frozen=True)
class Session:
    """A signed-in person: the token they signed in with (id, name, role), when it ends, and its nonce."""

    token_id: str
    name: str
    role: Role
    expires: int
    nonce: str

    def allows(self, role: Role) -> bool:
        """Tell whether this session's role may do what ``role`` may."""
        return self.role.allows(role)

    @property
    def actor(self) -> str:
        """The audit name of this person (the same as through the API: ``token:<name>``)."""
        return f"token:{self.name}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Make and read session cookies and CSRF tokens with one key."""

    def __init__(self, secret: str | None, ttl: float) -> None:
        if not secret:
            log.warning("HOOKPOST_SESSION_SECRET is not set: console sign-ins last until this process stops "
                        "and work on this instance only")
            secret = secrets.token_hex(32)
        self._key = hashlib.sha256(b"hookpost-console:" + secret.encode()).digest()
        self.ttl = ttl

    def _mac(self, purpose: str, data: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{data}".encode(), hashlib.sha256).digest())

    def issue(self, token: ApiToken, now: float | None = None) -> tuple[Session, str]:
        """Return a new session for ``token`` and its cookie value."""
        now = time.time() if now is None else now
        session = Session(token.id, token.name, token.role, int(now + self.ttl), secrets.token_urlsafe(16))
        body = _b64(json.dumps({"t": session.token_id, "n": session.name, "r": session.role.value,
                                "e": session.expires, "x": session.nonce}, separators=(",", ":")).encode())
        return session, f"{body}.{self._mac('session', body)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """Return the session of a cookie value, or None if it is missing, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 4096:
            return None
        body, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            data = json.loads(_unb64(body))
            session = Session(str(data["t"]), str(data["n"]), Role(data["r"]), int(data["e"]), str(data["x"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (time.time() if now is None else now):
            return None
        return session

    def csrf(self, session: Session) -> str:
        """Return the CSRF token of a session (put in every form as ``_csrf``)."""
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, presented: str | None) -> bool:
        """Tell whether ``presented`` is the CSRF token of ``session``."""
        return bool(presented) and hmac.compare_digest(presented or "", self.csrf(session))

    def presign(self, cookie: str | None = None) -> tuple[str, str]:
        """Return ``(cookie value, form value)`` for the sign-in form's double-submit CSRF check (keeping the
        browser's current cookie, so two open sign-in forms both work)."""
        nonce = cookie if cookie and re.fullmatch(r"[A-Za-z0-9_-]{16,64}", cookie) else secrets.token_urlsafe(16)
        return nonce, self._mac("signin", nonce)

    def check_presign(self, cookie: str | None, presented: str | None) -> bool:
        """Tell whether the sign-in form's ``_csrf`` matches its cookie."""
        return bool(cookie and presented) and hmac.compare_digest(presented or "", self._mac("signin", cookie or ""))
