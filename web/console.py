"""The web console of ``hookpost server``, under ``/``: server-rendered HTML over the same :mod:`hookpost.admin`
operations as the API, progressively enhanced by one small vendored script (``static/console.js``).

``setup(app)`` (a plugin of :func:`hookpost.web.app.create_app`) adds the routes, the templates and one
middleware that, for console paths only:

- reads the session cookie (:mod:`hookpost.web.sessions`) and re-checks its token is not revoked;
- sends anyone without a session to ``/sign-in``;
- refuses a POST without the session's CSRF token, or from another origin;
- renders errors as HTML pages (the API keeps its problem+json);
- adds the security headers: a strict Content-Security-Policy (``script-src 'self'``, no inline script),
  ``X-Frame-Options: DENY``, ``nosniff``, ``no-store``.

Each page checks the role it needs (:func:`need`); buttons a role may not use are not shown.
"""

import ipaddress
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup, escape
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from hookpost.admin import Admin
from hookpost.admin.events import InvalidFieldError
from hookpost.admin.insights import InsightOps
from hookpost.common.errors import BrokerUnavailableError, InvalidInputError, NotFoundError, PublishError
from hookpost.common.models import as_utc
from hookpost.common.records import Role
from hookpost.common.settings import Settings
from hookpost.web.api import ADMIN_KEY, SETTINGS_KEY
from hookpost.web.auth import FailureLimiter, client_address
from hookpost.web.problems import Handler
from hookpost.web.sessions import PRESIGN_COOKIE, SESSION_COOKIE, Session, SessionCodec

log = logging.getLogger("hookpost.web.console")

HERE = Path(__file__).parent
JINJA_KEY = web.AppKey("hookpost_console_jinja", jinja2.Environment)
CODEC_KEY = web.AppKey("hookpost_console_codec", SessionCodec)
INSIGHTS_KEY = web.AppKey("hookpost_console_insights", InsightOps)
CONSOLE_LIMITER_KEY = web.AppKey("hookpost_console_limiter", FailureLimiter)
SESSION_KEY = web.RequestKey("hookpost_console_session", Session)

NOT_CONSOLE = ("/api/", "/healthz", "/readyz", "/metrics")
PUBLIC = ("/sign-in", "/static/", "/favicon.ico")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def is_console_path(path: str) -> bool:
    """Tell whether ``path`` belongs to the console (everything but the API and the ops endpoints)."""
    return not any(path == p.rstrip("/") or path.startswith(p) for p in NOT_CONSOLE)


# --- helpers for the pages --------------------------------------------------------------------------------------

def admin_of(request: web.Request) -> Admin:
    """The shared :class:`Admin` of the server."""
    return request.app[ADMIN_KEY]


def insights_of(request: web.Request) -> InsightOps:
    """The console's read-only views."""
    return request.app[INSIGHTS_KEY]


def session_of(request: web.Request) -> Session:
    """The signed-in session of ``request`` (pages behind the middleware always have one)."""
    return request[SESSION_KEY]


def need(request: web.Request, role: Role) -> Session:
    """Return the session, or raise 403 unless its role allows what ``role`` may do (the server's own check
    behind every hidden button)."""
    session = session_of(request)
    if not session.allows(role):
        raise web.HTTPForbidden(text=f"Your role ({session.role.value}) may not do this: it needs {role.value}.")
    return session


def when(value: datetime | None, empty: str = "–") -> Markup:
    """Render a time as ``<time>``: UTC in the page (readable with JavaScript off), converted to the browser's
    zone by the script, with UTC on hover."""
    if value is None:
        return Markup(escape(empty))
    utc = as_utc(value)
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    iso = utc.isoformat().replace("+00:00", "Z")
    return Markup('<time datetime="{0}" title="{1}" data-local>{1}</time>').format(iso, text)


def duration(ms: float | None) -> str:
    """Format milliseconds for people: ``12 ms``, ``1.4 s``."""
    if ms is None:
        return "–"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def url_with(path: str, params: Mapping[str, Any]) -> str:
    """Return ``path`` with the query string of ``params`` (lists repeat; empty values are left out)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and v is not False and v != "":
                pairs.append((key, str(v)))
    return path + ("?" + urlencode(pairs) if pairs else "")


def safe_next(target: str | None, default: str = "/") -> str:
    """Return ``target`` if it is a path on this site (never another origin), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else default


async def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    """Render a page with the layout's context (session, CSRF token, what the role may do)."""
    session = request.get(SESSION_KEY)
    codec = request.app[CODEC_KEY]
    base = {
        "session": session,
        "csrf": codec.csrf(session) if session else "",
        "can_operate": bool(session and session.allows(Role.OPERATOR)),
        "can_admin": bool(session and session.allows(Role.ADMIN)),
        "path": request.path,
        "here": request.path_qs,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status, app_key=JINJA_KEY)


def is_https(request: web.Request) -> bool:
    """Tell whether the browser reached us over HTTPS (directly, or through a trusted proxy that says so)."""
    if request.scheme == "https":
        return True
    if not _behind_trusted_proxy(request):
        return False
    return request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() == "https"


def set_cookie(request: web.Request, resp: web.StreamResponse, name: str, value: str, max_age: int,
               path: str = "/") -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, expiring after ``max_age``."""
    resp.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="Strict",
                    secure=is_https(request))


# --- the middleware ---------------------------------------------------------------------------------------------

async def _session(request: web.Request) -> Session | None:
    session = request.app[CODEC_KEY].read(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if await admin_of(request).tokens.is_revoked(session.token_id):
        log.info("session of a revoked token refused", extra={"token_id": session.token_id})
        return None
    return session


def _behind_trusted_proxy(request: web.Request) -> bool:
    """Tell whether the peer is one of ``HOOKPOST_TRUSTED_PROXIES`` (whose forwarded headers count)."""
    from hookpost.web.app import TRUSTED_KEY

    try:
        peer = ipaddress.ip_address((request.remote or "").strip())
    except ValueError:
        return False
    return any(peer in net for net in request.app[TRUSTED_KEY])


def _same_origin(request: web.Request) -> bool:
    """Tell whether a POST's ``Origin`` is this console (the host the browser used: ``Host``, or a trusted
    proxy's ``X-Forwarded-Host``)."""
    origin = request.headers.get("Origin")
    if origin is None:  # older browsers; the CSRF token still has to match
        return True
    hosts = {request.host}
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded and _behind_trusted_proxy(request):
        hosts.add(forwarded.split(",")[0].strip())
    return urlsplit(origin).netloc in hosts


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    session = await _session(request)
    public = any(request.path == p or request.path.startswith(p) for p in PUBLIC)
    if session is not None:
        request[SESSION_KEY] = session
    elif not public:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(url_with("/sign-in", {"next": request.path_qs}))
        raise web.HTTPForbidden(text="Your session has ended: sign in again.")
    if request.method == "POST" and request.path != "/sign-in":
        form = await request.post()
        presented = form.get("_csrf")
        if not _same_origin(request) or session is None or not request.app[CODEC_KEY].check_csrf(
                session, presented if isinstance(presented, str) else None):
            log.warning("console POST refused: CSRF check failed", extra={"path": request.path})
            raise web.HTTPForbidden(text="This form has expired or did not come from this console: reload the "
                                         "page and try again.")
    return await handler(request)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sessions, CSRF, HTML errors and security headers for console paths (others pass straight through)."""
    if not is_console_path(request.path):
        return await handler(request)
    try:
        resp = await _guarded(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            for name, value in SECURITY_HEADERS.items():
                exc.headers[name] = value
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        resp = await _render_error(request, exc.status, detail)
    except NotFoundError as exc:
        resp = await _render_error(request, 404, str(exc))
    except InvalidFieldError as exc:
        resp = await _render_error(request, 400, f"{exc.field}: {exc}")
    except InvalidInputError as exc:
        resp = await _render_error(request, 400, str(exc))
    except (BrokerUnavailableError, PublishError) as exc:
        resp = await _render_error(request, 503, f"The broker did not answer: {exc}")
    except PyMongoError:
        resp = await _render_error(request, 503, "The store did not answer; try again in a moment.")
    except ValidationError as exc:  # forms are validated by the pages: this is a stored document
        log.error("a stored document does not validate", extra={"path": request.path, "error": str(exc)[:300]})
        resp = await _render_error(request, 500, f"A stored {exc.title} document does not validate; fix it in the "
                                                 "store.")
    except Exception:
        log.exception("console error", extra={"path": request.path})
        resp = await _render_error(request, 500, "An unexpected error happened (it is logged).")
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


async def _render_error(request: web.Request, status: int, detail: str) -> web.Response:
    titles = {400: "That did not work", 403: "Not allowed", 404: "Not found", 405: "Method not allowed",
              413: "Too large", 429: "Too many attempts", 503: "Unavailable", 500: "Something went wrong"}
    return await render(request, "error.html", {"status": status, "title": titles.get(status, "Error"),
                                                "detail": detail}, status=status)


# --- sign-in ----------------------------------------------------------------------------------------------------

async def sign_in_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    """The sign-in form (an API token of any role)."""
    if request.get(SESSION_KEY) is not None and error is None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    codec = request.app[CODEC_KEY]
    cookie, form_token = codec.presign(request.cookies.get(PRESIGN_COOKIE))
    resp = await render(request, "sign_in.html", {"error": error, "presign": form_token,
                                                  "next": safe_next(request.query.get("next"))}, status=status)
    set_cookie(request, resp, PRESIGN_COOKIE, cookie, 3600, path="/sign-in")
    return resp


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Check the token; on success set the session cookie and go where the person wanted to go."""
    form = await request.post()
    codec = request.app[CODEC_KEY]
    if not _same_origin(request) or not codec.check_presign(request.cookies.get(PRESIGN_COOKIE),
                                                            str(form.get("_csrf", ""))):
        return await sign_in_page(request, "The sign-in form expired: please try again.", 403)
    limiter = request.app[CONSOLE_LIMITER_KEY]
    from hookpost.web.app import TRUSTED_KEY

    client = client_address(request, request.app[TRUSTED_KEY])
    if limiter.blocked_for(client) > 0:
        return await sign_in_page(request, "Too many failed sign-ins from this address: wait a minute.", 429)
    token = str(form.get("token", "")).strip()
    record = await admin_of(request).tokens.resolve(token) if token else None
    if record is None or record.revoked:
        limiter.failed(client)
        log.warning("console sign-in failed", extra={"client": client,
                                                     "reason": "revoked" if record else "unknown token"})
        return await sign_in_page(request, "That token is not valid (unknown or revoked).", 401)
    session, cookie = codec.issue(record)
    target = safe_next(str(form.get("next", "")) or None)
    resp = web.HTTPSeeOther(target)
    set_cookie(request, resp, SESSION_COOKIE, cookie, int(codec.ttl))
    resp.del_cookie(PRESIGN_COOKIE, path="/sign-in")
    log.info("console sign-in", extra={"token_id": session.token_id, "role": session.role.value})
    raise resp


async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the session (the cookie is dropped) and go to the sign-in page."""
    resp = web.HTTPSeeOther("/sign-in")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


# --- set-up -----------------------------------------------------------------------------------------------------

def short_url(url: str) -> str:
    """A URL without its ``http://`` / ``https://`` (for narrow table cells; the link keeps the whole URL)."""
    return url.removeprefix("https://").removeprefix("http://")


def _filters() -> dict[str, Any]:
    return {"when": when, "duration": duration, "short_url": short_url}


def setup(app: web.Application) -> None:
    """Add the console to a ``hookpost server`` app (a plugin of :func:`create_app`)."""
    from hookpost.web import console_dashboard, console_event_types, console_events, console_webhooks

    settings: Settings = app[SETTINGS_KEY]
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    app[CODEC_KEY] = SessionCodec(secret, settings.session_ttl)
    app[INSIGHTS_KEY] = InsightOps(app[ADMIN_KEY])
    app[CONSOLE_LIMITER_KEY] = FailureLimiter()
    aiohttp_jinja2.setup(app, app_key=JINJA_KEY, loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=True, undefined=jinja2.StrictUndefined, filters=_filters(),
                         default_helpers=False, trim_blocks=True, lstrip_blocks=True)
    app.router.add_static("/static/", HERE / "static", name="console_static", append_version=False)
    app.router.add_get("/sign-in", sign_in_page)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    console_dashboard.add_routes(app)
    console_events.add_routes(app)
    console_webhooks.add_routes(app)
    console_event_types.add_routes(app)
    app.middlewares.append(console_middleware)


def utc_offset_label(minutes: int | None) -> str:
    """Name a browser's UTC offset (JavaScript's ``getTimezoneOffset()``, minutes *behind* UTC): ``UTC+01:00``."""
    if not minutes:
        return "UTC"
    offset = datetime.now(timezone(timedelta(minutes=-minutes))).strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}"
