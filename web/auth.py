"""Who is calling: bearer tokens, roles, and the failed-auth limit. Reusable by the web console.

- :func:`client_address` — the caller's address (``X-Forwarded-For`` only from ``HOOKPOST_TRUSTED_PROXIES``).
- :class:`FailureLimiter` — after 10 failed authentications from one address within a minute, that address
  gets ``429`` for a minute (per process).
- :func:`authenticate` — resolve the ``Authorization: Bearer …`` header to a token record, or raise 401/429.
- :func:`require` — raise 403 unless the token's role allows an action.
"""

import ipaddress
import logging
import time
from collections import deque

from aiohttp import web

from hookpost.admin import Admin
from hookpost.common.records import ApiToken, Role
from hookpost.web.problems import ProblemError

log = logging.getLogger("hookpost.web.auth")

TOKEN_KEY = web.RequestKey("hookpost_token", ApiToken)


class FailureLimiter:
    """Counts failed authentications per client address; blocks an address for ``block`` seconds once it had
    ``limit`` failures within ``window`` seconds."""

    def __init__(self, limit: int = 10, window: float = 60.0, block: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.block = block
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}

    def reset(self) -> None:
        """Forget every failure and block."""
        self._failures.clear()
        self._blocked.clear()

    def blocked_for(self, client: str, now: float | None = None) -> float:
        """Return how many seconds ``client`` is still blocked (0 if not)."""
        now = time.monotonic() if now is None else now
        until = self._blocked.get(client)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[client]
            return 0.0
        return until - now

    def failed(self, client: str, now: float | None = None) -> None:
        """Record a failed authentication from ``client``."""
        now = time.monotonic() if now is None else now
        times = self._failures.setdefault(client, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._blocked[client] = now + self.block
            times.clear()
        if len(self._failures) > 10000:  # forget quiet addresses so the table stays small
            for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                del self._failures[key]


def client_address(request: web.Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """Return the caller's address: the peer, or, when the peer is a trusted proxy, the last untrusted address
    in ``X-Forwarded-For``."""
    peer = request.remote or "unknown"

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return peer


def bearer(request: web.Request) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, or None if there is no such header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="hookpost"'})


async def authenticate(request: web.Request, admin: Admin, limiter: FailureLimiter, client: str) -> ApiToken:
    """Return the token record of the request; raise 429 for a blocked address, 401 for a missing, malformed,
    unknown or revoked token (logged without the token; counted by ``limiter``)."""
    wait = limiter.blocked_for(client)
    if wait > 0:
        raise ProblemError(429, "too many failed authentications from this address; try again later",
                           headers={"Retry-After": str(int(wait) + 1)})
    token = bearer(request)
    record = await admin.tokens.resolve(token) if token else None
    if record is not None and not record.revoked:
        return record
    reason = ("no Authorization header" if token is None else "malformed Authorization header" if token == ""
              else "unknown token" if record is None else "revoked token")
    limiter.failed(client)
    log.warning("authentication failed", extra={"client": client, "reason": reason, "path": request.path,
                                                "token_id": record.id if record else None})
    raise _unauthorized(f"{reason}: send 'Authorization: Bearer <token>' ('hookpost tokens create')")


def require(token: ApiToken, role: Role) -> None:
    """Raise 403 unless ``token``'s role allows what ``role`` may do."""
    if not token.role.allows(role):
        raise ProblemError(403, f"role {token.role.value} may not do this (needs {role.value})")
