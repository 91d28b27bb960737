"""The HTTP sender: one signed POST per attempt, its outcome as an :class:`AttemptResult`, never an exception.

Redirects are not followed, the response body is read only up to the excerpt limit (then the connection is
dropped), and configured headers cannot override the signature headers. Hostile receivers are bounded: the
whole attempt (connect, TLS handshake, request, headers, excerpt) has ``timeout`` seconds; headers are capped by
aiohttp's parser (line and field sizes, header count); a body is never decompressed by the client — requests ask
for ``identity``, and only the excerpt of a gzip or deflate body is inflated, to at most ``excerpt_bytes``, so a
decompression bomb costs no more than a plain body.
"""

import asyncio
import json
import ssl
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from hookpost.common.models import Webhook, utcnow
from hookpost.common.signing import signature_headers
from hookpost.dispatcher.policy import AttemptResult, parse_retry_after
from hookpost.dispatcher.targets import SafeResolver, TargetPolicy, TargetRefusedError
from hookpost.dispatcher.tracing import outgoing_headers

PROTECTED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
                     "host", "user-agent", "transfer-encoding", "accept-encoding", "traceparent", "tracestate"}
_CONNECT_TIMEOUTS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if t is not None)


def encode_body(payload: dict[str, Any]) -> bytes:
    """Return the exact bytes sent (and signed) for ``payload``."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def request_headers(hook: Webhook, event_id: str, body: bytes, timestamp: int, user_agent: str) -> dict[str, str]:
    """Return the headers of one request: the webhook's own, then ours, which win on a clash."""
    headers = {k: v for k, v in hook.headers.items() if k.lower() not in PROTECTED_HEADERS}
    headers["content-type"] = "application/json"
    headers["user-agent"] = user_agent
    headers["accept-encoding"] = "identity"  # the response is not decompressed (see decode_excerpt)
    headers.update(signature_headers(event_id, timestamp, body, hook.signing_secrets()))
    return headers


def decode_excerpt(raw: bytes, content_encoding: str | None, limit: int) -> str | None:
    """Return the text of a response excerpt whose first raw bytes are ``raw``: a gzip or deflate body is
    inflated to at most ``limit`` bytes (never more, whatever it claims to hold), another encoding is named, not
    decoded.

    >>> decode_excerpt(zlib.compress(b"x" * 10**6), "deflate", 5)
    'xxxxx'
    >>> decode_excerpt(bytes(2), "br", 100)
    '(br-encoded body of 2+ bytes; not decoded)'
    """
    if not raw:
        return None
    encoding = (content_encoding or "").strip().lower()
    data: bytes | None = raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        data = None
        for wbits in ((31,) if "gzip" in encoding else (15, -15)):  # deflate: zlib-wrapped, or raw as some send
            try:
                data = zlib.decompressobj(wbits).decompress(raw, limit)
                break
            except zlib.error:
                continue
        if data is None:
            return f"({encoding}-encoded body of {len(raw)}+ bytes; could not be decoded)"
    elif encoding not in ("", "identity"):
        return f"({encoding[:40]}-encoded body of {len(raw)}+ bytes; not decoded)"
    return data[:limit].decode("utf-8", errors="replace")


def error_text(exc: BaseException, timeout: float, connect_timeout: float | None = None) -> str:
    """Name a failed request's error class and message (``"Timeout: …"``, ``"ConnectError: …"``)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, TargetRefusedError):
        return f"TargetRefused: {exc.os_error}"
    if isinstance(exc, TargetRefusedError):
        return f"TargetRefused: {exc}"
    if _CONNECT_TIMEOUTS and isinstance(exc, _CONNECT_TIMEOUTS) and connect_timeout is not None:
        return f"Timeout: no connection within {connect_timeout:g}s (TCP connect or TLS handshake)"
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
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400 and not getattr(exc, "history", None):
        # raised by the response parser: a status line or headers that are not HTTP (or too long, too many)
        return f"ProtocolError: invalid HTTP response: {' '.join(str(exc.message).split())[:300]}"
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTPError: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Sender:
    """Sends webhook requests over one shared ``aiohttp.ClientSession`` that enforces the target policy; each
    carries the ``traceparent`` / ``tracestate`` of its attempt unless ``propagate_trace`` is False."""

    def __init__(self, policy: TargetPolicy, *, timeout: float, connect_timeout: float, excerpt_bytes: int,
                 user_agent: str, max_connections: int = 500, propagate_trace: bool = True) -> None:
        self.policy = policy
        self.propagate_trace = propagate_trace
        self.timeout = timeout
        self.connect_timeout = connect_timeout
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
                                                  auto_decompress=False, skip_auto_headers=("User-Agent",),
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
            if self.propagate_trace and (trace_headers := outgoing_headers()):
                headers.update(trace_headers)
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
            return AttemptResult(error=error_text(exc, self.timeout, self.connect_timeout)[:1000],
                                 duration_ms=_ms(started))

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
        return decode_excerpt(bytes(buf), resp.headers.get("Content-Encoding"), limit), complete


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
