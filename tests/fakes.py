"""In-memory stand-ins for the dispatcher's edges (store, broker channel, incoming messages, HTTP sender), for
fast unit tests of the dispatcher's core — in the spirit of dramatiq's ``StubBroker``: the real
:class:`~hookpost.dispatcher.delivery.DeliveryHandler`, :class:`~hookpost.dispatcher.fanout.FanOut`,
:class:`~hookpost.dispatcher.deferral.Deferrer`, :class:`~hookpost.dispatcher.reconciler.Reconciler`,
:class:`~hookpost.dispatcher.outbox.Outbox`, store guard, cache, limiter and batchers run unchanged on top of them.

Each fake keeps the *semantics* the dispatcher relies on (the guarded updates of ``store/events.py``, the unique
(change, webhook) rule, publisher confirms that fail on a closed channel) and records what happened, so a test
asserts on outcomes: what is in the store, what was published where, how a message was settled.

Example::

    d = await build_dispatcher(FakeSender(500))
    hook = d.store.add_webhook("http://rx.example/hook", ["article.*"])
    event, dm = d.seed_event(hook)
    assert await d.delivery.handle(FakeMessage.of_delivery(dm)) is Verdict.ACK
    assert d.published_to("", d.topology.retry_queue(0))[0].delivery().attempt == 2
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pika
from pymongo.errors import ConnectionFailure

from hookpost.common.amqp import ConnectionLostError
from hookpost.common.deliveries import first_delivery
from hookpost.common.endpoints import BreakerState, EndpointHealth, trouble_since
from hookpost.common.errors import NotFoundError
from hookpost.common.ids import new_id
from hookpost.common.models import (
    IN_FLIGHT,
    Attempt,
    ChangeEvent,
    DeliveryMessage,
    Entity,
    FailedNotice,
    Webhook,
    WebhookEvent,
    due_fields,
    now_ms,
    utcnow,
)
from hookpost.common.settings import load_settings
from hookpost.common.topology import Topology
from hookpost.common.wire import encode_change
from hookpost.dispatcher.breaker import Breaker
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.consumer import FailureCount, settle_after
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.delivery import DeliveryHandler
from hookpost.dispatcher.fanout import FanOut, new_events
from hookpost.dispatcher.limits import EndpointLimiter
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.notices import Notices
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.policy import AttemptResult
from hookpost.dispatcher.reconciler import Reconciler
from hookpost.dispatcher.storeguard import GuardedStore, StoreGuard
from hookpost.dispatcher.tracing import outgoing_headers
from hookpost.dispatcher.worker import consumers
from hookpost.store.docs import from_doc, to_doc
from hookpost.store.webhooks import BrokenWebhook, split_documents

_IN_FLIGHT = [s.value for s in IN_FLIGHT]

# ---- store ------------------------------------------------------------------------------------------------------


@dataclass
class StoreCall:
    """One call a repository method received: ``name`` is ``"events.record_attempts"`` and the like."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class _Fault:
    times: int
    after_write: bool


def _op(name: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Make a fake repository coroutine record its call, yield to the loop once (as real I/O does) and raise
    ``ConnectionFailure`` when a fault is armed: before it acts (an outage) or after (a lost reply)."""
    def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(self: _Repo, *args: Any, **kwargs: Any) -> Any:
            store = self.store
            store.calls.append(StoreCall(name, args, kwargs))
            await asyncio.sleep(0)
            fault = store._take_fault(name)
            if fault is not None and not fault.after_write:
                raise ConnectionFailure(f"fake store outage in {name}")
            result = await fn(self, *args, **kwargs)
            if fault is not None:
                raise ConnectionFailure(f"fake store: reply of {name} lost (the write was applied)")
            return result
        return wrapper
    return deco


class _Repo:
    def __init__(self, store: FakeStore) -> None:
        self.store = store


class FakeEventRepo(_Repo):
    """The ``events`` methods the dispatcher calls, over dict documents, with the guards of ``EventRepo``."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.docs: dict[str, dict[str, Any]] = {}

    def _model(self, doc: dict[str, Any]) -> WebhookEvent:
        return from_doc(WebhookEvent, doc)

    def _insert(self, events: list[WebhookEvent]) -> list[bool]:
        keys = {(d["change_id"], d["webhook_id"]) for d in self.docs.values()}
        flags = []
        for e in events:
            if e.id in self.docs or (e.change_id, e.webhook_id) in keys:
                # a duplicate carrying one of our own ids is an earlier try of this call whose reply was lost
                flags.append(e.id in self.docs)
                continue
            self.docs[e.id] = to_doc(e)
            keys.add((e.change_id, e.webhook_id))
            flags.append(True)
        return flags

    @_op("events.insert_new")
    async def insert_new(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        """Insert events unless their (change_id, webhook_id) exists; return the new ones (a duplicate that
        carries one of our own ids counts as new: an earlier try of this call whose reply was lost)."""
        return [e for e, new in zip(events, self._insert(events), strict=True) if new]

    @_op("events.insert_flags")
    async def insert_flags(self, events: list[WebhookEvent]) -> list[bool]:
        """Per event, whether it was new (see :meth:`insert_new`)."""
        return self._insert(events)

    @_op("events.get")
    async def get(self, event_id: str) -> WebhookEvent:
        """The event, or :class:`NotFoundError`."""
        doc = self.docs.get(event_id)
        if doc is None:
            raise NotFoundError(f"no event {event_id!r}")
        return self._model(doc)

    @_op("events.find_for_change")
    async def find_for_change(self, change_id: str) -> list[WebhookEvent]:
        """The events fanned out from ``change_id``."""
        return [self._model(d) for d in self.docs.values() if d["change_id"] == change_id]

    @_op("events.record_attempts")
    async def record_attempts(self, updates: list[tuple[str, int, dict[str, Any]]],
                              tokens: list[str] | None = None) -> list[bool]:
        """Apply each ``(event_id, attempt, changes)`` if the event is in flight with ``attempt_count ==
        attempt - 1``; tell which applied by the writer tokens when fewer matched than were sent (as the real
        bulk write does)."""
        now, ms = utcnow(), now_ms()
        tokens = tokens or [new_id("w") for _ in updates]
        matched = 0
        for (event_id, attempt, changes), token in zip(updates, tokens, strict=True):
            doc = self.docs.get(event_id)
            if doc is None or doc["attempt_count"] != attempt - 1 or doc["status"] not in _IN_FLIGHT:
                continue
            doc.update({"attempt_count": attempt, "updated_at": now, "updated_ms": ms, **changes, "writer": token})
            matched += 1
        if matched == len(updates):
            return [True] * len(updates)
        return [self.docs.get(u[0], {}).get("writer") == token for u, token in zip(updates, tokens, strict=True)]

    @_op("events.postpone")
    async def postpone(self, event_id: str, attempt: int, until_ms: int) -> bool:
        """Move the due time of a still-waiting attempt later, never earlier."""
        doc = self.docs.get(event_id)
        if (doc is None or doc["attempt_count"] != attempt - 1 or doc["status"] not in _IN_FLIGHT
                or doc["next_attempt_ms"] is None or not doc["next_attempt_ms"] < until_ms):
            return False
        doc.update(due_fields(until_ms))
        return True

    @_op("events.overdue")
    async def overdue(self, before_ms: int, limit: int) -> list[WebhookEvent]:
        """In-flight events due before ``before_ms``, earliest first."""
        docs = [d for d in self.docs.values() if d["status"] in _IN_FLIGHT and d["next_attempt_ms"] is not None
                and d["next_attempt_ms"] < before_ms and not d.get("held")]
        docs.sort(key=lambda d: d["next_attempt_ms"])
        return [self._model(d) for d in docs[:limit]]

    @_op("events.claim_overdue")
    async def claim_overdue(self, event: WebhookEvent, until_ms: int, token: str) -> bool:
        """Push the due time to ``until_ms`` if attempt count and due time are still as read; else tell whether
        the claim written with ``token`` holds it (a retry after a lost reply)."""
        doc = self.docs.get(event.id)
        if (doc is None or doc["attempt_count"] != event.attempt_count
                or doc["next_attempt_ms"] != event.next_attempt_ms):
            return doc is not None and doc.get("writer") == token
        doc.update({**due_fields(until_ms), "writer": token})
        return True

    @_op("events.hold")
    async def hold(self, items: list[tuple[str, int, str, int]]) -> None:
        """Mark events still waiting for the attempt as held by an endpoint, due at the given time."""
        for event_id, attempt, endpoint, due_ms in items:
            doc = self.docs.get(event_id)
            if doc is not None and doc["attempt_count"] == attempt - 1 and doc["status"] in _IN_FLIGHT:
                doc.update(held=endpoint, **due_fields(due_ms))

    @_op("events.held_by")
    async def held_by(self, endpoint: str, limit: int) -> list[WebhookEvent]:
        """Events held by ``endpoint``."""
        return [self._model(d) for d in self.docs.values() if d.get("held") == endpoint][:limit]

    @_op("events.unhold")
    async def unhold(self, events: list[tuple[str, int | None]], endpoint: str, due_ms: int) -> None:
        """Release held events that are still held as read (by their due time)."""
        for event_id, seen_ms in events:
            doc = self.docs.get(event_id)
            if doc is not None and doc.get("held") == endpoint and doc.get("next_attempt_ms") == seen_ms:
                doc.update(held=None, **due_fields(due_ms))

    @_op("events.oldest_retrying_age")
    async def oldest_retrying_age(self) -> float | None:
        """Age in seconds of the oldest Retrying event."""
        created = [d["created_ms"] for d in self.docs.values() if d["status"] == "Retrying"]
        return None if not created else max(0.0, (now_ms() - min(created)) / 1000)


class FakeAttemptRepo(_Repo):
    """The ``attempts`` methods the dispatcher calls: records keyed by attempt id, the first one kept."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.docs: dict[str, dict[str, Any]] = {}

    @_op("attempts.insert")
    async def insert(self, attempts: list[Attempt]) -> None:
        """Store attempt records; one whose id exists is kept as it is."""
        for a in attempts:
            doc = to_doc(a)
            self.docs.setdefault(doc["_id"], doc)

    @_op("attempts.for_event")
    async def for_event(self, event_id: str) -> list[Attempt]:
        """Every attempt of ``event_id``, in order."""
        return [from_doc(Attempt, d) for k, d in sorted(self.docs.items()) if d["event_id"] == event_id]


class FakeWebhookRepo(_Repo):
    """The ``webhooks`` methods the dispatcher calls (the cache's ``load``, ``get``, ``set_active``), over dict
    documents — a test may break one by hand, as an operator might."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.docs: dict[str, dict[str, Any]] = {}

    @_op("webhooks.list")
    async def list(self, *, active_only: bool = False, limit: int = 1000) -> list[Webhook]:
        """Valid webhooks, oldest first (documents that do not validate are left out)."""
        docs = [d for _, d in sorted(self.docs.items()) if d.get("active") or not active_only]
        return split_documents(docs[:limit])[0]

    @_op("webhooks.load")
    async def load(self, page: int = 1000) -> tuple[list[Webhook], list[BrokenWebhook]]:
        """Every webhook, and apart every document that does not validate, with the reason."""
        return split_documents([d for _, d in sorted(self.docs.items())])

    @_op("webhooks.get")
    async def get(self, webhook_id: str) -> Webhook:
        """The webhook, or :class:`NotFoundError`."""
        doc = self.docs.get(webhook_id)
        if doc is None:
            raise NotFoundError(f"no webhook {webhook_id!r}")
        return from_doc(Webhook, doc)

    @_op("webhooks.set_active")
    async def set_active(self, webhook_id: str, active: bool, reason: str | None = None) -> Webhook:
        """Enable or disable a webhook, with the reason it was disabled."""
        doc = self.docs.get(webhook_id)
        if doc is None:
            raise NotFoundError(f"no webhook {webhook_id!r}")
        doc.update(active=active, disabled_reason=None if active else reason, updated_at=utcnow())
        return from_doc(Webhook, doc)


class FakeEndpointRepo(_Repo):
    """The ``endpoints`` methods the breaker calls, over :class:`EndpointHealth` values, with the same guards."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.docs: dict[str, EndpointHealth] = {}

    def _put(self, key: str, **fields: Any) -> None:
        self.docs[key] = (self.docs.get(key) or EndpointHealth(id=key)).model_copy(
            update={**fields, "updated_ms": now_ms()})

    @_op("endpoints.all")
    async def all(self, limit: int = 100_000) -> list[EndpointHealth]:
        return list(self.docs.values())[:limit]

    @_op("endpoints.get")
    async def get(self, key: str) -> EndpointHealth | None:
        return self.docs.get(key)

    @_op("endpoints.count_failures")
    async def count_failures(self, key: str, n: int, first_ms: int) -> tuple[int, int | None]:
        doc = self.docs.get(key) or EndpointHealth(id=key)
        since = first_ms if doc.run_since_ms is None else min(doc.run_since_ms, first_ms)
        self._put(key, run=doc.run + n, run_since_ms=since)
        return doc.run + n, since

    @_op("endpoints.end_run")
    async def end_run(self, key: str) -> None:
        doc = self.docs.get(key)
        if doc is not None and doc.run > 0:
            self._put(key, run=0, run_since_ms=None)

    @_op("endpoints.mark_failing")
    async def mark_failing(self, key: str, since_ms: int, error: str | None, recovery: float) -> bool:
        doc = self.docs.get(key)
        if doc is not None and doc.state != BreakerState.CLOSED:
            return False
        kept = trouble_since(doc, now_ms(), recovery)
        self._put(key, state=BreakerState.FAILING, failing_since_ms=kept or since_ms, last_error=error,
                  **({"closed_ms": None} if kept is None else {}))
        return True

    @_op("endpoints.open")
    async def open(self, key: str, since_ms: int, probe: float, error: str | None, recovery: float) -> bool:
        doc = self.docs.get(key)
        if doc is not None and doc.state == BreakerState.OPEN:
            return False
        now = now_ms()
        kept = trouble_since(doc, now, recovery)
        self._put(key, state=BreakerState.OPEN, failing_since_ms=kept or since_ms, opened_ms=now,
                  next_probe_ms=now + round(probe * 1000), probe_interval=probe, last_error=error, releasing=False,
                  **({"closed_ms": None} if kept is None else {}))
        return True

    @_op("endpoints.claim_probe")
    async def claim_probe(self, key: str, seen_next_ms: int, lease: float) -> bool:
        doc = self.docs.get(key)
        if doc is None or doc.state != BreakerState.OPEN or doc.next_probe_ms != seen_next_ms:
            return False
        self._put(key, next_probe_ms=now_ms() + round(lease * 1000))
        return True

    @_op("endpoints.probed")
    async def probed(self, key: str, cap: float) -> None:
        doc = self.docs.get(key)
        if doc is not None and doc.state == BreakerState.OPEN:
            self._put(key, next_probe_ms=now_ms() + round(doc.probe_interval * 1000),
                      probe_interval=min(doc.probe_interval * 2, cap))

    @_op("endpoints.close")
    async def close(self, key: str, recovery: float) -> bool:
        doc = self.docs.get(key)
        if doc is None or doc.state != BreakerState.OPEN:
            return False
        keep = recovery > 0
        self._put(key, state=BreakerState.CLOSED, opened_ms=None, next_probe_ms=None, releasing=True, run=0,
                  run_since_ms=None, closed_ms=now_ms() if keep else None,
                  **({} if keep else {"failing_since_ms": None}))
        return True

    @_op("endpoints.recover")
    async def recover(self, key: str) -> bool:
        doc = self.docs.get(key)
        if doc is None or doc.state != BreakerState.FAILING:
            return False
        self._put(key, state=BreakerState.CLOSED, run=0, run_since_ms=None,
                  **({"failing_since_ms": None} if doc.closed_ms is None else {}))
        return True

    @_op("endpoints.settle")
    async def settle(self, key: str, closed_ms: int) -> bool:
        doc = self.docs.get(key)
        if doc is None or doc.state != BreakerState.CLOSED or doc.closed_ms != closed_ms:
            return False
        self._put(key, failing_since_ms=None, closed_ms=None)
        return True

    @_op("endpoints.disable")
    async def disable(self, key: str, opened_ms: int) -> bool:
        doc = self.docs.get(key)
        if doc is None or doc.state != BreakerState.OPEN or doc.opened_ms != opened_ms:
            return False
        self._put(key, state=BreakerState.DISABLED, next_probe_ms=None, releasing=True, run=0, run_since_ms=None)
        return True

    @_op("endpoints.lease_release")
    async def lease_release(self, key: str, owner: str, seconds: float) -> bool:
        doc = self.docs.get(key)
        if doc is None or not doc.releasing or (doc.release_lease_ms >= now_ms() and doc.release_owner != owner):
            return False
        self._put(key, release_lease_ms=now_ms() + round(seconds * 1000), release_owner=owner)
        return True

    @_op("endpoints.mark_releasing")
    async def mark_releasing(self, key: str) -> None:
        doc = self.docs.get(key)
        if doc is not None and doc.state != BreakerState.OPEN:
            self._put(key, releasing=True)

    @_op("endpoints.released")
    async def released(self, key: str) -> None:
        doc = self.docs.get(key)
        if doc is not None and doc.releasing and doc.state != BreakerState.OPEN:
            self._put(key, releasing=False, release_lease_ms=0, release_owner=None)


class FakeNoticeRepo(_Repo):
    """The ``notices`` rate limit."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.until: dict[str, int] = {}

    @_op("notices.take")
    async def take(self, kind: str, webhook_id: str, interval: float) -> bool:
        key, now = f"{kind}:{webhook_id}", now_ms()
        if self.until.get(key, 0) >= now:
            return False
        self.until[key] = now + round(interval * 1000)
        return True


class FakeCatalogRepo(_Repo):
    """The event-type catalog: declared types and per-day sightings, in memory."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store)
        self.declared: dict[str, Any] = {}
        self.days: dict[tuple[str, int], Any] = {}

    @_op("catalog.record_seen")
    async def record_seen(self, counts: dict[tuple[str, int], Any]) -> None:
        from hookpost.store.catalog import Seen

        for key, seen in counts.items():
            self.days.setdefault(key, Seen(0, seen.first_ms, seen.last_ms)).add(seen)

    @_op("catalog.declared_all")
    async def declared_all(self) -> list[Any]:
        return [self.declared[k] for k in sorted(self.declared)]

    async def prune(self, before_ms: int, batch: int = 1000) -> int:
        return 0

    def declare(self, name: str, schema: dict[str, Any] | None, *, enforce: bool = True) -> None:
        """Seed a declared type."""
        from hookpost.store.catalog import DeclaredType

        self.declared[name] = DeclaredType(name=name, title="", description="", schema=schema, enforce=enforce,
                                           deprecated=False, created_at=utcnow(), updated_at=utcnow())


class FakeStore:
    """An in-memory store with ``events``, ``attempts`` and ``webhooks`` repositories — what
    :class:`~hookpost.dispatcher.storeguard.GuardedStore` wraps in production.

    Every repository call is recorded in :attr:`calls`. :meth:`fail_next` arms a store outage: the next ``times``
    calls of a method raise ``pymongo.errors.ConnectionFailure``, either before acting or, with
    ``after_write=True``, after the write was applied (a lost reply). Sync helpers seed and read the data.
    """

    def __init__(self) -> None:
        self.calls: list[StoreCall] = []
        self._faults: dict[str, _Fault] = {}
        self.events = FakeEventRepo(self)
        self.attempts = FakeAttemptRepo(self)
        self.webhooks = FakeWebhookRepo(self)
        self.endpoints = FakeEndpointRepo(self)
        self.notices = FakeNoticeRepo(self)
        self.catalog = FakeCatalogRepo(self)
        self.lanes: Any = None  # ordered webhooks are tested against the real store (tests/e2e/test_ordering.py)

    def fail_next(self, name: str, times: int = 1, *, after_write: bool = False) -> None:
        """Make the next ``times`` calls of ``name`` (``"events.record_attempts"``) raise ``ConnectionFailure``."""
        repo, _, method = name.partition(".")
        if not hasattr(getattr(self, repo, None), method):
            raise ValueError(f"no fake store method {name!r}")
        self._faults[name] = _Fault(times, after_write)

    def _take_fault(self, name: str) -> _Fault | None:
        fault = self._faults.get(name)
        if fault is None or fault.times <= 0:
            return None
        fault.times -= 1
        return fault

    def count(self, name: str) -> int:
        """How many calls ``name`` received (failed ones included)."""
        return sum(1 for c in self.calls if c.name == name)

    # ---- seeding and reading (sync, not recorded) ----

    def add_webhook(self, url: str = "http://rx.example/hook", event_types: list[str] | None = None, *,
                    active: bool = True, **fields: Any) -> Webhook:
        """Store a webhook and return it."""
        hook = Webhook(id=new_id("wh"), url=url, event_types=event_types or ["*"], secret="whsec_test",
                       active=active, **fields)
        self.webhooks.docs[hook.id] = to_doc(hook)
        return hook

    def add_event(self, event: WebhookEvent) -> WebhookEvent:
        """Store an event as it is."""
        self.events.docs[event.id] = to_doc(event)
        return event

    def event(self, event_id: str) -> WebhookEvent:
        """The stored event."""
        return from_doc(WebhookEvent, self.events.docs[event_id])

    def all_events(self) -> list[WebhookEvent]:
        """Every stored event."""
        return [from_doc(WebhookEvent, d) for d in self.events.docs.values()]

    def attempts_of(self, event_id: str) -> list[Attempt]:
        """The stored attempts of ``event_id``, in order: the first from the event's document, as the real store
        keeps it, then the collection's."""
        first = self.events.docs.get(event_id, {}).get("first_attempt")
        rest = [from_doc(Attempt, d) for _, d in sorted(self.attempts.docs.items()) if d["event_id"] == event_id]
        return [Attempt.model_validate(first), *rest] if first is not None else rest

    def webhook(self, webhook_id: str) -> Webhook:
        """The stored webhook."""
        return from_doc(Webhook, self.webhooks.docs[webhook_id])


# ---- broker -------------------------------------------------------------------------------------------------------


@dataclass
class Published:
    """One message published on a :class:`FakeChannel`."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: dict[str, Any]
    properties: pika.BasicProperties

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def delivery(self) -> DeliveryMessage:
        """The body as a delivery message."""
        return DeliveryMessage.model_validate_json(self.body)

    def notice(self) -> FailedNotice:
        """The body as a failure notice."""
        return FailedNotice.model_validate_json(self.body)

    def as_message(self, *, redelivered: bool = False) -> FakeMessage:
        """This message as a consumer would receive it from the queue it was routed to."""
        return FakeMessage(self.body, properties=self.properties, routing_key=self.routing_key,
                           redelivered=redelivered)


class FakeChannel:
    """A confirmed channel as :class:`~hookpost.dispatcher.outbox.Outbox` uses it: every publish is recorded (in
    order, shared with its connection's log) and confirmed at once; on a closed channel publishing raises
    ``ConnectionLostError`` as the real one does. :attr:`depths` holds what :meth:`queue_depth` answers."""

    def __init__(self, log: list[Published], *, confirms: bool) -> None:
        self.log = log
        self.confirms = confirms
        self.is_open = True
        self.published: list[Published] = []
        self.declared: list[Topology] = []
        self.depths: dict[str, int] = {}
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def publish_nowait(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                       headers: dict[str, Any] | None = None, content_type: str = "application/json",
                       mandatory: bool = True, properties: pika.BasicProperties | None = None
                       ) -> asyncio.Future[None]:
        """Record the message; return its (already resolved) confirm."""
        if not self.confirms:
            raise RuntimeError("enable_confirms() first")
        if not self.is_open:
            raise ConnectionLostError("channel is closed")
        props = properties or pika.BasicProperties(delivery_mode=2, content_type=content_type,
                                                   message_id=message_id, headers=headers)
        msg = Published(exchange, routing_key, body, props.message_id, dict(props.headers or {}), props)
        self.published.append(msg)
        self.log.append(msg)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        """Publish one message and 'wait' for its confirm."""
        await self.publish_nowait(exchange, routing_key, body, **kwargs)

    async def queue_depth(self, queue: str) -> int:
        """Ready messages of ``queue``: ``depths[queue]``, 0 if unset."""
        if not self.is_open:
            raise ConnectionLostError("channel is closed")
        return self.depths.get(queue, 0)

    async def declare(self, topology: Topology) -> None:
        """Note the declaration."""
        self.declared.append(topology)

    async def close(self) -> None:
        """Close: later publishes raise ``ConnectionLostError``."""
        self.lose("closed by client")

    def lose(self, reason: str = "connection lost") -> None:
        """The broker went away under this channel (sync, so a test can do it at any point)."""
        self.is_open = False
        if not self.closed.done():
            self.closed.set_result(reason)


class FakeConnection:
    """An AMQP connection that opens :class:`FakeChannel` s; :attr:`published` logs every publish of all of them."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.channels: list[FakeChannel] = []
        self.is_open = True

    async def channel(self, *, confirms: bool = False, prefetch: int | None = None) -> FakeChannel:
        """Open a channel."""
        if not self.is_open:
            raise ConnectionLostError("connection is closed")
        ch = FakeChannel(self.published, confirms=confirms)
        self.channels.append(ch)
        return ch

    async def close(self) -> None:
        """Close the connection and its channels."""
        self.is_open = False
        for ch in self.channels:
            ch.lose("connection closed")


class FakeMessage:
    """A received message with the :class:`~hookpost.common.amqp.IncomingMessage` interface: body, properties
    (``content_type``, ``content_encoding``, ``message_id``, ``headers``), ``routing_key``, ``redelivered``.
    :attr:`settled` records its ack/reject; settling twice is an error (the broker would close the channel)."""

    def __init__(self, body: bytes, *, properties: pika.BasicProperties | None = None,
                 content_type: str | None = "application/json", content_encoding: str | None = None,
                 message_id: str | None = None, headers: dict[str, Any] | None = None, routing_key: str = "",
                 redelivered: bool = False, delivery_tag: int = 1) -> None:
        self.body = body
        self.properties = properties or pika.BasicProperties(
            content_type=content_type, content_encoding=content_encoding, message_id=message_id,
            headers=headers, delivery_mode=2)
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.delivery_tag = delivery_tag
        self.settled: list[tuple[str, bool | None]] = []

    @classmethod
    def of_change(cls, change: ChangeEvent, *, redelivered: bool = False,
                  headers: dict[str, Any] | None = None) -> FakeMessage:
        """A change event as producers publish it (routing key = its type)."""
        return cls(encode_change(change), message_id=change.id, routing_key=change.type, redelivered=redelivered,
                   headers=headers)

    @classmethod
    def of_delivery(cls, dm: DeliveryMessage, *, redelivered: bool = False) -> FakeMessage:
        """A delivery message as the outbox publishes it."""
        return cls(dm.model_dump_json().encode(), message_id=f"{dm.event_id}/{dm.attempt}",
                   headers={"hookpost-attempt": dm.attempt}, routing_key="deliver", redelivered=redelivered)

    def redelivery(self) -> FakeMessage:
        """The same message as the broker hands it out again after it was not settled."""
        return FakeMessage(self.body, properties=self.properties, routing_key=self.routing_key, redelivered=True,
                           delivery_tag=self.delivery_tag + 1)

    @property
    def headers(self) -> dict[str, Any]:
        """The AMQP headers (empty if none)."""
        return self.properties.headers or {}

    def ack(self) -> bool:
        """Record an ack."""
        self._settle("ack", None)
        return True

    def reject(self, *, requeue: bool) -> bool:
        """Record a reject."""
        self._settle("reject", requeue)
        return True

    def _settle(self, how: str, requeue: bool | None) -> None:
        if self.settled:
            raise AssertionError(f"message settled twice: {self.settled[0]} then {(how, requeue)}")
        self.settled.append((how, requeue))


# ---- HTTP ---------------------------------------------------------------------------------------------------------


@dataclass
class Hanging:
    """A scripted answer that comes only once ``release`` is set (a request that hangs until then)."""

    release: asyncio.Event
    then: int | AttemptResult = 200


@dataclass
class SentRequest:
    """One request the :class:`FakeSender` got."""

    webhook_id: str
    url: str
    event_id: str
    payload: dict[str, Any]
    trace_headers: dict[str, str] = field(default_factory=dict)  # the traceparent / tracestate it would carry


class FakeSender:
    """Stands in for :class:`~hookpost.dispatcher.sender.Sender`: answers each request with the next scripted
    result — a status code, an :class:`AttemptResult`, or :class:`Hanging` — and records it in :attr:`requests`.
    Once the script is used up it answers ``default``; without one an unscripted request fails the test."""

    def __init__(self, *script: int | AttemptResult | Hanging, default: int | AttemptResult | None = None
                 ) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[SentRequest] = []
        self.in_flight = 0

    @staticmethod
    def _result(item: int | AttemptResult) -> AttemptResult:
        return item if isinstance(item, AttemptResult) else AttemptResult(status_code=item, duration_ms=1.0)

    async def send(self, hook: Webhook, event_id: str, payload: dict[str, Any]) -> AttemptResult:
        """Answer one request."""
        self.requests.append(SentRequest(hook.id, hook.url, event_id, payload, dict(outgoing_headers() or {})))
        if self.script:
            item = self.script.pop(0)
        elif self.default is not None:
            item = self.default
        else:
            raise AssertionError(f"unscripted request for {event_id} to {hook.url}")
        if isinstance(item, Hanging):
            self.in_flight += 1
            try:
                await item.release.wait()
            finally:
                self.in_flight -= 1
            item = item.then
        return self._result(item)

    async def close(self) -> None:
        """Nothing to close."""


# ---- wiring -------------------------------------------------------------------------------------------------------

FAST_DELAYS = (0.01, 0.02, 0.04)


@dataclass
class FakeDispatcher:
    """The dispatcher's parts wired as :class:`~hookpost.dispatcher.worker.Worker` wires them, over the fakes."""

    store: FakeStore
    sender: FakeSender
    connection: FakeConnection
    channel: FakeChannel
    topology: Topology
    metrics: Metrics
    stopping: asyncio.Event
    guard: StoreGuard
    guarded: GuardedStore
    cache: WebhookCache
    outbox: Outbox
    limiter: EndpointLimiter
    deferrer: Deferrer
    fanout: FanOut
    delivery: DeliveryHandler
    reconciler: Reconciler
    max_attempts: int
    delays: tuple[float, ...] = field(default=FAST_DELAYS)
    poison_after: int = 5
    failures: dict[str, FailureCount] = field(default_factory=dict)

    async def consume(self, stage: FanOut | DeliveryHandler, msg: FakeMessage) -> None:
        """Handle and settle ``msg`` as the worker's consumer of ``stage`` does (one failure count per stage)."""
        counter = self.failures.setdefault(type(stage).__name__, FailureCount(poison_after=self.poison_after))
        await settle_after(stage, msg, failures=counter, on_nack=self.outbox.drop)
    breaker: Breaker | None = None

    @property
    def published(self) -> list[Published]:
        """Every message published since the start, on any outbox channel."""
        return self.connection.published

    def published_to(self, exchange: str, routing_key: str) -> list[Published]:
        """The messages published to ``exchange`` with ``routing_key``."""
        return [p for p in self.published if p.exchange == exchange and p.routing_key == routing_key]

    async def reconnect(self) -> FakeChannel:
        """Open a new outbox channel, as the worker does on a new connection."""
        self.channel = await self.outbox.open(self.connection, declare=True)
        return self.channel

    def seed_event(self, hook: Webhook, change: ChangeEvent | None = None, **fields: Any
                   ) -> tuple[WebhookEvent, DeliveryMessage]:
        """Store an event of ``hook`` as fan-out makes it (``fields`` override: ``attempt_count``, ``status``…);
        return it and the delivery message of its next attempt."""
        change = change or make_change()
        event = new_events(change, [hook.id])[0]
        if fields:
            event = WebhookEvent.model_validate({**event.model_dump(), **fields})
        self.store.add_event(event)
        return event, first_delivery(event)


def make_change(type_: str = "article.updated", change_id: str | None = None, **fields: Any) -> ChangeEvent:
    """A valid change event."""
    return ChangeEvent(id=change_id or new_id("chg"), type=type_, entity=Entity(kind="article", id="A-1"),
                       **fields)


async def build_dispatcher(sender: FakeSender | None = None, *, store: FakeStore | None = None,
                           delays: tuple[float, ...] = FAST_DELAYS, max_attempts: int | None = None,
                           prefix: str = "hptest", grace: float = 1.0, request_time: float = 0.05,
                           per_endpoint: int = 10, hang_after: float = 3.0, defer_delay: float = 0.01,
                           cache_ttl: float = 60.0, batch: int = 500, breaker_on: bool = True,
                           breaker_threshold: int = 20, breaker_disable_after: float = 0.0,
                           breaker_recovery: float = 3600.0, first_attempt: str | None = None,
                           inline_per_change: int = 10, inline_max: int = 100) -> FakeDispatcher:
    """Wire fan-out, delivery, deferrer and reconciler like ``worker.py`` over a :class:`FakeStore`, a
    :class:`FakeConnection` and ``sender``, with a millisecond retry schedule (``max_attempts`` defaults to one
    more than the delays, as the settings require). ``first_attempt`` defaults to the settings' default (and
    ``HOOKPOST_FIRST_ATTEMPT``), so the suite runs in either mode."""
    store = store or FakeStore()
    sender = sender or FakeSender(default=200)
    max_attempts = max_attempts if max_attempts is not None else len(delays) + 1
    topology = Topology(prefix=prefix, retry_delays=delays, defer_delay=defer_delay)
    metrics = Metrics()
    stopping = asyncio.Event()
    guard = StoreGuard(metrics, stopping)
    guarded = GuardedStore(store, guard)
    cache = WebhookCache(guarded.webhooks, cache_ttl, metrics)
    outbox = Outbox(topology)
    connection = FakeConnection()
    channel = await outbox.open(connection, declare=True)
    limiter = EndpointLimiter(100, per_endpoint, window=100, hang_after=hang_after,
                              max_hold=max(0.1, grace / 2 - request_time))
    deferrer = Deferrer(guarded, outbox, limiter, metrics, grace=grace, request_time=request_time)
    notices = Notices(guarded, outbox, metrics, interval=300.0)
    breaker = Breaker(guarded, outbox, metrics, notices, cache, enabled=breaker_on, threshold=breaker_threshold,
                      probe=0.05, probe_max=0.4, disable_after=breaker_disable_after, recovery=breaker_recovery,
                      page=100, hold_batch=batch)
    fanout, delivery = consumers(guarded, cache, outbox, sender, limiter, deferrer, metrics, breaker, notices,
                                 delays=delays, max_attempts=max_attempts, max_change_bytes=65536, batch=batch,
                                 inline=(inline_per_change, inline_max) if (
                                     first_attempt or load_settings().first_attempt) == "inline" else None,
                                 max_hold=limiter.max_hold)
    reconciler = Reconciler(guarded, outbox, metrics, grace=grace)
    return FakeDispatcher(store=store, sender=sender, connection=connection, channel=channel,
                          topology=topology, metrics=metrics, stopping=stopping, guard=guard, guarded=guarded,
                          cache=cache, outbox=outbox, limiter=limiter, deferrer=deferrer, fanout=fanout,
                          delivery=delivery, reconciler=reconciler, max_attempts=max_attempts, delays=delays,
                          breaker=breaker)


class FastSleep:
    """A stand-in for the ``asyncio`` module of a product module whose back-off sleeps would slow a unit test:
    ``sleep`` records the delay asked for (:attr:`slept`) and only yields to the loop; everything else is
    ``asyncio``. Install with ``monkeypatch.setattr(module, "asyncio", FastSleep())``."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        """Record ``delay``; yield once."""
        self.slept.append(delay)
        await asyncio.sleep(0)
        return result
