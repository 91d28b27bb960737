"""The HTTP sender: one signed POST per attempt, its outcome as an :class:`AttemptResult`, never an exception.

Redirects are not followed, the response body is read only up to the excerpt limit (then the connection is
dropped), and configured headers cannot override the signature headers.
"""

import asyncio
import json
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from hookpost.common.models import Webhook, utcnow
from hookpost.common.signing import signature_headers
from hookpost.dispatcher.policy import AttemptResult, parse_retry_after
from hookpost.dispatcher.targets import SafeResolver, TargetPolicy, TargetRefusedError

PROTECTED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
                     "host", "user-agent", "transfer-encoding"}


def encode_body(payload: dict[str, Any]) -> bytes:
    """Return the exact bytes sent (and signed) for ``payload``."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def request_headers(hook: Webhook, event_id: str, body: bytes, timestamp: int, user_agent: str) -> dict[str, str]:
    """Return the headers of one request: the webhook's own, then ours, which win on a clash."""
    headers = {k: v for k, v in hook.headers.items() if k.lower() not in PROTECTED_HEADERS}
    headers["content-type"] = "application/json"
    headers["user-agent"] = user_agent
    headers.update(signature_headers(event_id, timestamp, body, hook.signing_secrets()))
    return headers


def error_text(exc: BaseException, timeout: float) -> str:
    """Name a failed request's error class and message (``"Timeout: …"``, ``"ConnectError: …"``)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, TargetRefusedError):
        return f"TargetRefused: {exc.os_error}"
    if isinstance(exc, TargetRefusedError):
        return f"TargetRefused: {exc}"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"Timeout: no complete response within {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNSError: {exc.os_error or exc}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return f"TLSError: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"ConnectError: {exc.os_error or exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "ConnectError: server disconnected without a response"
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTPError: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Sender:
    """Sends webhook requests over one shared ``aiohttp.ClientSession`` that enforces the target policy."""

    def __init__(self, policy: TargetPolicy, *, timeout: float, connect_timeout: float, excerpt_bytes: int,
                 user_agent: str, max_connections: int = 500) -> None:
        self.policy = policy
        self.timeout = timeout
        self.excerpt_bytes = excerpt_bytes
        self.user_agent = user_agent
        self._client_timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout,
                                                     sock_connect=connect_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, tuple[URL, str | None]] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use inside the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=SafeResolver(self.policy), limit=self._max_connections,
                                             limit_per_host=0, ttl_dns_cache=10, enable_cleanup_closed=True)
            # no cookie jar: a receiver's Set-Cookie must not ride along on later requests (and saves work)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._client_timeout,
                                                  auto_decompress=True, skip_auto_headers=("User-Agent",),
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()

    async def send(self, hook: Webhook, event_id: str, payload: dict[str, Any]) -> AttemptResult:
        """POST ``payload`` to ``hook`` once and describe what happened."""
        body = encode_body(payload)
        started = time.perf_counter()
        try:
            url = self._target(hook.url)
            headers = request_headers(hook, event_id, body, int(time.time()), self.user_agent)
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                excerpt, complete = await self._read_excerpt(resp)
                if not complete:
                    resp.close()
                code = resp.status
                header = resp.headers.get("Retry-After")
                retry_after = parse_retry_after(header, utcnow()) if header else None
                error = None
                if 300 <= code < 400:
                    error = f"Redirect: {code} to {resp.headers.get('Location', '?')} not followed"
                return AttemptResult(status_code=code, error=error, retry_after=retry_after,
                                     duration_ms=_ms(started), excerpt=excerpt)
        except Exception as exc:  # every failure is an attempt outcome, never a crash
            return AttemptResult(error=error_text(exc, self.timeout)[:1000], duration_ms=_ms(started))

    def _target(self, url: str) -> URL:
        """Return ``url`` parsed, or raise :class:`TargetRefusedError` if its host is a refused literal address
        (a name is checked by :class:`SafeResolver` on what it resolves to). Remembered per URL."""
        known = self._targets.get(url)
        if known is None:
            host = urlsplit(url).hostname or ""
            try:
                why = self.policy.refusal(host)
            except ValueError:
                why = None  # a name
            if len(self._targets) >= 10000:
                self._targets.clear()
            known = self._targets[url] = (URL(url), f"refused target {host}: {why}" if why else None)
        if known[1]:
            raise TargetRefusedError(known[1])
        return known[0]

    async def _read_excerpt(self, resp: aiohttp.ClientResponse) -> tuple[str | None, bool]:
        limit = self.excerpt_bytes
        buf = bytearray()
        while len(buf) < limit:
            chunk = await resp.content.read(limit - len(buf))
            if not chunk:
                break
            buf += chunk
        complete = resp.content.at_eof()
        if not complete and len(buf) >= limit:
            # one more read tells a body of exactly `limit` bytes from a longer one without buffering it
            complete = resp.content.at_eof() or resp.content.is_eof()
        text = buf.decode("utf-8", errors="replace") if buf else None
        return text, complete


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
