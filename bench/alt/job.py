"""The webhook job of both baselines, in plain synchronous Python: pymongo for the store, ``requests`` for the POST.

One call of :func:`deliver` is one attempt at one change for one webhook:

1. on the first attempt, insert the event document (status ``New``, with its payload) into ``events``;
2. POST the JSON payload, signed as Standard Webhooks do (``webhook-id``, ``webhook-timestamp``,
   ``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``);
3. insert the attempt document into ``attempts``;
4. update the event: ``Finished`` on a 2xx, else ``Retrying`` and raise :class:`DeliveryFailed` so that the task
   library retries it with its backoff (``Failed`` after the last attempt).

The payload has the shape and size of Hookpost's (``id``, ``type``, ``timestamp``, ``data`` with the entity, the
change id, ``occurred_at`` and the change's details). Configuration comes from the environment, read when first
needed: ``ALT_MONGODB_URL`` and ``ALT_MONGODB_DB``. The MongoDB client is made once per process (after a fork),
the HTTP session once per thread, and a webhook is read from the store at most once a minute per process.
"""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

MAX_ATTEMPTS = 10
MIN_BACKOFF_S = 10.0          # Hookpost's first retry delay
MAX_BACKOFF_S = 8 * 3600.0    # and its last
HTTP_TIMEOUT = (5.0, 15.0)    # connect, read: Hookpost's defaults
EXCERPT_CHARS = 4096
WEBHOOK_TTL_S = 60.0

_client: MongoClient[dict[str, Any]] | None = None
_client_pid = 0
_local = threading.local()
_webhooks: dict[str, tuple[float, dict[str, Any]]] = {}


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx (or could not be reached): the task library should retry."""


def db() -> Database[dict[str, Any]]:
    """The job's database (one client per process, made after any fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = MongoClient(os.environ["ALT_MONGODB_URL"])
        _client_pid = os.getpid()
    return _client[os.environ["ALT_MONGODB_DB"]]


def ensure_indexes(database: Database[dict[str, Any]]) -> None:
    """The indexes a team would add: events by webhook and time and by status and due time, attempts by event."""
    database.events.create_index([("webhook_id", ASCENDING), ("created_at", ASCENDING)])
    database.events.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
    database.attempts.create_index([("event_id", ASCENDING)])


def session() -> requests.Session:
    """This thread's HTTP session (keeps its connections alive)."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


def webhook(webhook_id: str) -> dict[str, Any]:
    """The webhook document, cached in the process for a minute."""
    cached = _webhooks.get(webhook_id)
    if cached is not None and time.monotonic() - cached[0] < WEBHOOK_TTL_S:
        return cached[1]
    doc = db().webhooks.find_one({"_id": webhook_id})
    if doc is None:
        raise LookupError(f"no webhook {webhook_id}")
    _webhooks[webhook_id] = (time.monotonic(), doc)
    return doc


def event_id(webhook_id: str, change_id: str) -> str:
    """The event's id, the same on every attempt: ``evt_`` + 26 characters (the length of Hookpost's ids)."""
    return "evt_" + hashlib.sha256(f"{webhook_id}:{change_id}".encode()).hexdigest()[:26].upper()


def build_payload(evt_id: str, change: dict[str, Any]) -> dict[str, Any]:
    """The JSON body the receiver gets: the same fields as Hookpost's."""
    data: dict[str, Any] = {"entity": change["entity"], "change_id": change["id"],
                            "occurred_at": change["occurred_at"]}
    if change.get("source"):
        data["source"] = change["source"]
    if change.get("data"):
        data["details"] = change["data"]
    return {"id": evt_id, "type": change["type"],
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "data": data}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` header for a ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def deliver(webhook_id: str, change: dict[str, Any], attempt: int) -> None:
    """Make attempt number ``attempt`` (1-based) of delivering ``change`` to the webhook; raise
    :class:`DeliveryFailed` when it failed and attempts remain."""
    hook = webhook(webhook_id)
    database = db()
    evt_id = event_id(webhook_id, change["id"])
    payload = build_payload(evt_id, change)
    now = datetime.now(UTC)
    if attempt == 1:
        try:
            database.events.insert_one({
                "_id": evt_id, "webhook_id": webhook_id, "change_id": change["id"], "type": change["type"],
                "entity": change["entity"], "payload": payload, "status": "New", "attempt_count": 0,
                "created_at": now, "updated_at": now})
        except DuplicateKeyError:
            pass  # a redelivered message: the event is there already

    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": evt_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(hook["secret"], evt_id, timestamp, body)}
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    status: int | None = None
    error: str | None = None
    excerpt: str | None = None
    try:
        resp = session().post(hook["url"], data=body, headers=headers, timeout=HTTP_TIMEOUT)
        status, excerpt = resp.status_code, resp.text[:EXCERPT_CHARS]
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration_ms = (time.perf_counter() - t0) * 1000

    database.attempts.insert_one({
        "_id": f"{evt_id}.{attempt:03d}", "event_id": evt_id, "webhook_id": webhook_id, "attempt": attempt,
        "started_at": started, "duration_ms": duration_ms, "status_code": status, "error": error,
        "response_excerpt": excerpt})

    done = datetime.now(UTC)
    update: dict[str, Any] = {"attempt_count": attempt, "last_status_code": status, "last_error": error,
                              "updated_at": done}
    if status is not None and 200 <= status < 300:
        database.events.update_one({"_id": evt_id}, {"$set": {**update, "status": "Finished", "finished_at": done}})
        return
    if attempt >= MAX_ATTEMPTS:
        database.events.update_one({"_id": evt_id}, {"$set": {**update, "status": "Failed", "finished_at": done}})
        return
    delay = min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2 ** (attempt - 1))  # roughly when the library will retry
    database.events.update_one({"_id": evt_id}, {"$set": {**update, "status": "Retrying",
                                                          "next_attempt_at": done + timedelta(seconds=delay)}})
    raise DeliveryFailed(f"attempt {attempt}: {status or error}")
