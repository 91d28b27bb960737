"""A small client of ``hookpost server``'s API for the CLI's API mode: one request at a time, every failure one
plain line that names the server (never the token), and the exit code the CLI gives it.

400, 413 and 415 are bad input (exit 2, :class:`InvalidInputError`); 401, 403, 404, 429, a 5xx and an
unreachable server exit 1. A 404 or 405 for a route this CLI knows but the server does not means an older server
("server too old for this command").
"""

from __future__ import annotations

import json
import ssl
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiohttp

from hookpost.cli.target import Target
from hookpost.common.errors import HookpostError, InvalidInputError, NotFoundError

PREFIX = "/api/v1"
VERSION_HEADER = "Hookpost-Version"


def client_version() -> str:
    """Return this Hookpost's version."""
    try:
        return version("hookpost")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


def version_tuple(text: str | None) -> tuple[int, ...]:
    """Read ``1.2.3`` (ignoring anything after a number's digits) as a tuple for comparisons."""
    out = []
    for part in (text or "0").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        out.append(int(digits[:9]))
    return tuple(out)


class ApiError(HookpostError):
    """An API request that failed: ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Requests to ``target.api`` + ``/api/v1`` with the target's bearer token."""

    def __init__(self, target: Target, *, timeout: float = 60.0) -> None:
        assert target.api is not None
        self.target = target
        self.base = target.api
        self.server = target.api  # how error lines name the server
        self.timeout = timeout
        self.server_version: str | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self.base!r})"

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.target.ca_file:
            return ssl.create_default_context(cafile=self.target.ca_file)
        return True

    async def __aenter__(self) -> ApiClient:
        if not self.target.token:
            raise InvalidInputError(f"no API token for {self.server}: set HOOKPOST_API_TOKEN, use --token-file, "
                                    "or 'hookpost login'")
        try:
            ssl_arg = self._ssl()
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInputError(f"--ca-file {self.target.ca_file}: {exc}") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_arg), timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Authorization": f"Bearer {self.target.token}",
                     "User-Agent": f"hookpost-cli/{client_version()}"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, params: Any = None, json_body: Any = None,
                      timeout: float | None = None) -> Any:
        """Send one request to ``/api/v1`` + ``path``; return the decoded JSON answer (None for an empty one), or
        raise the error of the answer (:class:`ApiError`, :class:`InvalidInputError`, :class:`NotFoundError`)."""
        assert self._session is not None, "use 'async with ApiClient(...)'"
        url = self.base + PREFIX + path
        kwargs: dict[str, Any] = {"params": params, "allow_redirects": False}  # the token follows no redirect
        if json_body is not None:
            kwargs["json"] = json_body
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._session.request(method, url, **kwargs) as resp:
                self.server_version = resp.headers.get(VERSION_HEADER) or self.server_version
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location", "")
                ctype = resp.content_type or ""
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiError(f"cannot reach {self.server}: TLS certificate not trusted ({_reason(exc)}); "
                           "--ca-file trusts a private CA") from None
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(f"cannot reach {self.server}: {_reason(exc)}") from None
        except TimeoutError:
            raise ApiError(f"cannot reach {self.server}: no answer within {timeout or self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"cannot reach {self.server}: {_reason(exc)}") from None
        data: Any = None
        if body and "json" in ctype:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        if 300 <= status < 400:
            raise ApiError(f"{self.server} redirects to {location[:200] or 'elsewhere'}: give the address it "
                           "should be as --api (the token is not sent on)", status)
        if status < 400:
            if body and data is None:
                raise ApiError(f"{self.server} answered {status} with a body that is not JSON: is --api the "
                               "address of a hookpost server?", status)
            return data
        raise self._error(status, data, retry_after, method, path)

    def _error(self, status: int, data: Any, retry_after: str | None, method: str, path: str) -> Exception:
        detail = ""
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            detail = " ".join(data["detail"].split())[:300]
        where = self.server
        if status in (400, 413, 415):
            return InvalidInputError(f"{where}: {detail or f'HTTP {status}'}")
        if status == 401:
            why = detail.split(":")[0] if detail else "token refused"
            return ApiError(f"{where} refused the token ({why}): is it revoked? check HOOKPOST_API_TOKEN, "
                            "--token-file or the profile", status)
        if status == 403:
            return ApiError(f"{where}: forbidden: {detail or 'this token may not do this'}", status)
        if status in (404, 405) and (not detail or detail in ("Not Found", "Method Not Allowed")):
            # no such route: an id that is not known has a detail naming it
            if version_tuple(self.server_version) < version_tuple(client_version()):
                theirs = self.server_version or "an unknown version"
                return ApiError(f"{where} runs hookpost {theirs}: server too old for this command "
                                f"(this CLI is {client_version()}; {method} {PREFIX}{path} is not there)", status)
            return ApiError(f"{where} has no {method} {PREFIX}{path} (is --api the server's base URL?)", status)
        if status == 404:
            return NotFoundError(f"{where}: {detail}")
        if status == 429:
            wait = f"retry in {retry_after} s" if retry_after else "retry later"
            return ApiError(f"{where}: too many requests ({detail or 'rate limited'}); {wait}", status)
        if status >= 500:
            return ApiError(f"{where}: server error {status}" + (f": {detail}" if detail else ""), status)
        return ApiError(f"{where}: HTTP {status}" + (f": {detail}" if detail else ""), status)


def _reason(exc: BaseException) -> str:
    """One line about a connection failure (never a request's headers)."""
    inner = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None)
    text = getattr(inner, "strerror", None) or str(inner or exc) or type(exc).__name__
    return " ".join(text.split())[:200]

