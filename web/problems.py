"""Errors as ``application/problem+json`` (RFC 9457): one middleware turns every error into a problem document.

What a client can send never yields a 500: bad input is 400 (naming the field), unknown ids 404, a body too
large 413, the store or broker unreachable 503. A stored document that no longer validates (edited by hand) is
a 500 that says so; a bug is logged and answered 500 without details.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure, PyMongoError

from hookpost.admin.events import InvalidFieldError
from hookpost.common.errors import BrokerUnavailableError, InvalidInputError, NotFoundError, PublishError

log = logging.getLogger("hookpost.web")
PROBLEM_TYPE = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(BaseModel):
    """An error response (RFC 9457): ``title`` is the HTTP reason, ``detail`` one line about this request."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = headers or {}


def problem_response(status: int, detail: str, *, field: str | None = None,
                     headers: dict[str, str] | None = None) -> web.Response:
    """Return a problem+json response with a one-line ``detail``."""
    doc = Problem(title=HTTPStatus(status).phrase, status=status, detail=" ".join(detail.split())[:500],
                  field=field)
    return web.Response(status=status, body=doc.model_dump_json(exclude_none=True).encode(),
                        content_type=PROBLEM_TYPE, headers=headers)


def validation_detail(exc: ValidationError) -> tuple[str, str | None]:
    """Return a one-line description of the first error of a pydantic validation, and the field it names."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return (f"{loc}: {first['msg']}" if loc else str(first["msg"])), (loc or None)


def _from_exception(exc: Exception) -> web.Response | None:
    if isinstance(exc, ProblemError):
        return problem_response(exc.status, exc.detail, field=exc.field, headers=exc.headers)
    if isinstance(exc, InvalidFieldError):
        return problem_response(400, f"{exc.field}: {exc}", field=exc.field)
    if isinstance(exc, NotFoundError):
        return problem_response(404, str(exc))
    if isinstance(exc, ValidationError):  # request bodies are validated in web.api: this is stored data
        detail, _ = validation_detail(exc)
        log.error("a stored document does not validate", extra={"error": detail[:300]})
        return problem_response(500, f"a stored {exc.title} document does not validate ({detail}); fix it in the "
                                     "store")
    if isinstance(exc, InvalidInputError):
        return problem_response(400, str(exc))
    if isinstance(exc, BrokerUnavailableError | PublishError):
        return problem_response(503, f"broker: {exc}")
    if isinstance(exc, ConnectionFailure):
        return problem_response(503, "the store is unreachable")
    if isinstance(exc, PyMongoError):
        log.warning("store error", extra={"error": str(exc)[:300]})
        return problem_response(503, "the store could not answer")
    return None


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn errors (ours, pydantic's, aiohttp's HTTP errors) into problem documents."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return problem_response(exc.status, detail or exc.reason, headers=headers)
    except Exception as exc:
        resp = _from_exception(exc)
        if resp is not None:
            return resp
        log.exception("unexpected error", extra={"path": request.path, "method": request.method})
        return problem_response(500, "internal error (logged)")


async def read_json(request: web.Request) -> Any:
    """Return the parsed JSON body (None when empty); 415 for a non-JSON type, 400 for malformed JSON."""
    ctype = request.content_type
    body = await request.read()
    if not body:
        return None
    if ctype not in ("application/json", "application/octet-stream", "") and not ctype.endswith("+json"):
        raise ProblemError(415, f"unsupported content type {ctype!r}: send application/json")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProblemError(400, f"body is not JSON: {exc}"[:200]) from None
