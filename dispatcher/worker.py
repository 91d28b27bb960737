"""The dispatcher's run loop: one asyncio loop, one AMQP connection at a time, two consumers.

A supervisor connects to the first broker address that answers, declares the topology, consumes
``PREFIX.changes`` (fan-out) and ``PREFIX.deliver`` (attempts), and waits. When the connection or a channel is
lost it logs once, backs off (capped exponential) and starts over; unacked messages go back to the queue.
On :meth:`Worker.stop` it cancels the consumers, starts no more requests (deliveries waiting for an endpoint
slot are given back at once), gives the running ones ``HOOKPOST_SHUTDOWN_GRACE`` to finish (the rest stays unacked
and is redelivered) and closes the connection.

Example::

    worker = Worker(load_settings())
    await worker.run()          # until worker.stop() (the CLI wires SIGTERM/SIGINT to it)
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pika.exceptions

from hookpost.common.amqp import AmqpChannel, AmqpConnection, ConnectionLostError, IncomingMessage
from hookpost.common.broker_files import CachedFileReport
from hookpost.common.errors import BrokerUnavailableError, ConfigError, PublishError
from hookpost.common.settings import Settings, mask_url
from hookpost.common.topology import topology_from
from hookpost.common.tracing import configure as configure_tracing
from hookpost.dispatcher.breaker import Breaker
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.catalog import Catalog
from hookpost.dispatcher.consumer import FailureCount, Stage, settle_after
from hookpost.dispatcher.deferral import Deferrer
from hookpost.dispatcher.delivery import DeliveryHandler
from hookpost.dispatcher.fanout import FanOut
from hookpost.dispatcher.followups import FollowUps
from hookpost.dispatcher.gate import Gate
from hookpost.dispatcher.inline import InlineAttempts
from hookpost.dispatcher.lanes import Lanes
from hookpost.dispatcher.limits import EndpointLimiter
from hookpost.dispatcher.metrics import Metrics, StoreOpCounter
from hookpost.dispatcher.notices import Notices
from hookpost.dispatcher.ops import OpsServer
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.reconciler import Reconciler
from hookpost.dispatcher.recorder import EventInserter, OutcomeRecorder
from hookpost.dispatcher.sender import Sender
from hookpost.dispatcher.storeguard import GuardedStore, StoreGuard
from hookpost.dispatcher.targets import TargetPolicy
from hookpost.store import Store

log = logging.getLogger("hookpost.worker")


def consumers(store: GuardedStore, cache: WebhookCache, outbox: Outbox, sender: Sender, limiter: EndpointLimiter,
              deferrer: Deferrer, metrics: Metrics, breaker: Breaker, notices: Notices, *,
              delays: tuple[float, ...], max_attempts: int, max_change_bytes: int, batch: int,
              lanes: Lanes | None = None, catalog: Catalog | None = None,
              inline: tuple[int, int] | None = None, max_hold: float = 135.0) -> tuple[FanOut, DeliveryHandler]:
    """Wire the consumers of ``PREFIX.changes`` and ``PREFIX.deliver`` to their collaborators (one gate for
    both, one set of lanes for both). ``inline`` (per change, at once): fan-out makes first attempts itself,
    through the delivery consumer's own steps, none waiting for its turn longer than ``max_hold``."""
    gate = Gate(breaker, limiter, deferrer, metrics)
    followups = FollowUps(store, cache, outbox, notices, metrics, delays=delays, lanes=lanes)
    delivery = DeliveryHandler(cache, gate, sender, OutcomeRecorder(store, batch=batch), followups,
                               metrics, delays=delays, max_attempts=max_attempts, lanes=lanes)
    firsts = None if inline is None else InlineAttempts(delivery.first, followups.again, deferrer.publish, metrics,
                                                        per_change=inline[0], at_once=inline[1], max_wait=max_hold)
    fanout = FanOut(cache, gate, EventInserter(store, batch=batch), deferrer, outbox, metrics,
                    max_change_bytes=max_change_bytes, lanes=lanes, catalog=catalog, inline=firsts)
    return fanout, delivery


class Worker:
    """A dispatcher process: fan-out, delivery, reconciler and ops server on one event loop."""

    def __init__(self, settings: Settings, *, name: str = "hookpost-dispatcher") -> None:
        self.settings = settings
        self.name = name
        self.topology = topology_from(settings)
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.store = Store.connect(settings.mongodb_url, settings.mongodb_db,
                                   listeners=[StoreOpCounter(self.metrics)])
        self.guard = StoreGuard(self.metrics, self.stopping)
        guarded = GuardedStore(self.store, self.guard)
        self.cache = WebhookCache(guarded.webhooks, settings.webhook_cache_ttl, self.metrics)
        self.outbox = Outbox(self.topology)
        self.catalog = Catalog(guarded.catalog, ttl=settings.webhook_cache_ttl,
                               flush_every=settings.catalog_flush_interval)
        self.sender = Sender(
            TargetPolicy(allow_private=settings.allow_private_targets,
                         allowed_networks=settings.allowed_target_networks, require_https=settings.require_https),
            timeout=settings.http_timeout, connect_timeout=settings.http_connect_timeout,
            excerpt_bytes=settings.response_excerpt_bytes, user_agent=settings.user_agent,
            max_connections=settings.concurrency, propagate_trace=settings.trace_propagate)
        self.limiter = EndpointLimiter(settings.concurrency, settings.endpoint_concurrency, window=settings.prefetch,
                                       hang_after=settings.endpoint_hang_after,
                                       max_hold=max(0.1, settings.reconcile_grace / 2 - settings.http_timeout))
        self.metrics.in_flight.set_function(lambda: self.limiter.in_flight)
        self.deferrer = Deferrer(guarded, self.outbox, self.limiter, self.metrics,
                                 grace=settings.reconcile_grace, request_time=settings.http_timeout)
        self.notices = Notices(guarded, self.outbox, self.metrics, interval=settings.notice_interval)
        self.breaker = Breaker(guarded, self.outbox, self.metrics, self.notices, self.cache,
                               enabled=settings.breaker, threshold=settings.breaker_threshold,
                               probe=settings.breaker_probe, probe_max=settings.breaker_probe_max,
                               disable_after=settings.disable_after, recovery=settings.breaker_recovery,
                               page=settings.prefetch,
                               hold_batch=settings.store_batch,
                               probe_lease=settings.http_timeout + settings.breaker_probe_max)
        self.lanes = Lanes(guarded, self.outbox, self.cache.get, self.metrics, settle=settings.order_settle,
                           batch=settings.store_batch)
        self.fanout, self.delivery = consumers(
            guarded, self.cache, self.outbox, self.sender, self.limiter, self.deferrer, self.metrics, self.breaker,
            self.notices, lanes=self.lanes, delays=settings.retry_delays, max_attempts=settings.max_attempts,
            max_change_bytes=settings.max_change_bytes, batch=settings.store_batch, catalog=self.catalog,
            inline=(settings.inline_per_change, settings.inline_max) if settings.first_attempt == "inline" else None,
            max_hold=self.limiter.max_hold)
        self.reconciler = Reconciler(guarded, self.outbox, self.metrics, grace=settings.reconcile_grace,
                                     lanes=self.lanes)
        self.ops = OpsServer(self.metrics, self.readiness, settings.ops_host, settings.ops_port,
                             broker_files=CachedFileReport(settings.rabbitmq_urls))
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AmqpChannel, str]] = []
        self.reconnects = 0
        self._conn: AmqpConnection | None = None

    def readiness(self) -> dict[str, bool]:
        """Return the readiness checks: broker connected, store reachable, and the broker accepting our publishes
        (false during a memory or disk alarm: work then waits, unacked, until the alarm clears)."""
        conn = self._conn
        return {"broker": self.outbox.ready, "store": self.guard.up,
                "broker_accepts_publishes": conn is None or not conn.blocked.is_set()}

    def stop(self) -> None:
        """Ask the worker to stop gracefully (safe to call from a signal handler)."""
        self.stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; raise :class:`ConfigError` on a problem no retry can fix."""
        background: list[asyncio.Task[None]] = []
        try:
            if self.settings.ops_port is not None:  # first, so /healthz answers while the store is still down
                port = await self.ops.start()
                log.info("ops server listening", extra={"port": port})
            await self._prepare_store()
            background.append(asyncio.create_task(self._watch_store()))
            background.append(asyncio.create_task(self._sample_queues()))
            background.append(asyncio.create_task(
                self.reconciler.run(self.settings.reconcile_interval, self.stopping)))
            background.append(asyncio.create_task(self.breaker.run(self.settings.breaker_poll, self.stopping)))
            background.append(asyncio.create_task(self.catalog.run(self.stopping)))
            await self._supervise()
        finally:
            self.stopping.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.lanes.close()
            await self.catalog.close()  # the event-type counts not yet written (a killed process loses them)
            await self.ops.stop()
            await self.sender.close()
            await self.store.close()

    async def _prepare_store(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.store.ensure_indexes()
                self.guard.mark(True)
                return
            except Exception as exc:  # store not up yet: wait like any other outage
                self.guard.mark(False, str(exc))
                await self._sleep(delay)
                delay = min(delay * 2, 10)

    async def _watch_store(self) -> None:
        while not self.stopping.is_set():
            self.guard.mark(await self.store.ping(), "ping failed")
            await self._sleep(2.0)

    async def _sample_queues(self, interval: float = 15.0) -> None:
        """Every ``interval`` seconds, export queue depths and the oldest Retrying event's age as gauges."""
        t = self.topology
        while not self.stopping.is_set():
            try:
                if self.outbox.ready:
                    for label, queue in (("changes", t.changes_queue), ("deliver", t.deliver_queue),
                                         ("failed", t.failed_queue), ("invalid", t.invalid_queue)):
                        self.metrics.queue_depth.labels(label).set(await self.outbox.queue_depth(queue))
                age = await self.store.events.oldest_retrying_age()
                self.metrics.oldest_retrying.set(age if age is not None else 0)
            except Exception as exc:  # a gauge is not worth a crash; the next sample tries again
                log.debug("sampling queue depths failed", extra={"error": str(exc)[:200]})
            await self._sleep(interval)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _supervise(self) -> None:
        backoff = 0.25
        lost_logged = False
        urls = self.settings.rabbitmq_urls
        while not self.stopping.is_set():
            conn: AmqpConnection | None = None
            try:
                conn = await AmqpConnection.connect(urls, name=self.name)
                self._conn = conn
                channels = await self._open(conn)
            except (BrokerUnavailableError, ConnectionLostError, PublishError, OSError, TimeoutError,
                    pika.exceptions.AMQPError) as exc:
                self._check_fatal(exc)
                if not lost_logged:
                    log.warning("broker unavailable; retrying with backoff", extra={"error": str(exc)[:300]})
                    lost_logged = True
                if conn is not None:
                    await conn.close()
                await self._sleep(backoff)
                backoff = min(backoff * 2, 15.0)
                continue
            if lost_logged or self.reconnects:
                log.info("connected to the broker again", extra={"url": mask_url(conn.url)})
            else:
                log.info("connected to the broker; consuming", extra={"url": mask_url(conn.url)})
            lost_logged = False
            backoff = 0.25
            self.metrics.broker_up.set(1)
            self.connected.set()
            watched = [conn.closed, *(c.closed for c in channels)]
            stop_wait = asyncio.ensure_future(self.stopping.wait())
            done, _ = await asyncio.wait([stop_wait, *watched], return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            self.connected.clear()
            self.metrics.broker_up.set(0)
            if self.stopping.is_set():
                await self._drain(conn, channels)
                return
            reason = next((f.result() for f in done if f is not stop_wait and not f.cancelled()), "unknown")
            log.warning("lost the broker connection; reconnecting", extra={"reason": str(reason)[:300]})
            self.reconnects += 1
            lost_logged = True
            await self.outbox.drop()
            await conn.close()
            await self._sleep(backoff)

    def _check_fatal(self, exc: BaseException) -> None:
        text = str(exc)
        if "PRECONDITION_FAILED" in text or "inequivalent arg" in text:
            raise ConfigError(
                "the broker refused to declare a queue with different arguments (PRECONDITION_FAILED): "
                f"{text[:300]}. A queue's type or TTL cannot change in place; see docs/retries.md") from None
        if "ACCESS_REFUSED" in text:
            raise ConfigError(f"the broker refused our credentials: {text[:300]}") from None

    async def _open(self, conn: AmqpConnection) -> list[AmqpChannel]:
        pub = await self.outbox.open(conn, declare=True)
        changes = await conn.channel(prefetch=self.settings.prefetch)
        deliver = await conn.channel(prefetch=self.settings.prefetch)
        self._consumers = [
            (changes, await changes.consume(self.topology.changes_queue, self._spawn(self.fanout))),
            (deliver, await deliver.consume(self.topology.deliver_queue, self._spawn(self.delivery))),
        ]
        return [pub, changes, deliver]

    def _spawn(self, stage: Stage) -> Callable[[IncomingMessage], None]:
        failures = FailureCount(poison_after=min(self.settings.delivery_limit, 5))

        def on_message(msg: IncomingMessage) -> None:
            task = asyncio.create_task(settle_after(stage, msg, failures=failures, on_nack=self.outbox.drop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return on_message

    async def _drain(self, conn: AmqpConnection, channels: list[AmqpChannel]) -> None:
        for ch, tag in self._consumers:
            try:
                await ch.cancel(tag)
            except (ConnectionLostError, pika.exceptions.AMQPError):
                pass
        # requests already running get the grace; deliveries still waiting for a slot start none (their messages
        # stay unacked), so a stop takes as long as the running requests, not the whole grace
        cancelled = self.limiter.close()
        if cancelled:
            log.info("stopping: gave back deliveries that had not started", extra={"count": cancelled})
        pending = {task for task in self._tasks if not task.done()}
        if pending:
            log.info("stopping: waiting for in-flight work", extra={"in_flight": len(pending),
                                                                   "grace_s": self.settings.shutdown_grace})
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                log.warning("stopping: gave back unfinished work (unacked)", extra={"count": len(late)})
        await self.outbox.drop()
        await conn.close()
        log.info("stopped")


def run_forever(settings: Settings, install_signals: bool = True) -> None:
    """Run a :class:`Worker` in a new event loop until SIGTERM/SIGINT (the ``hookpost dispatcher`` command), with
    tracing as the ``OTEL_*`` variables ask (:func:`~hookpost.common.tracing.configure`)."""
    import signal

    configure_tracing("hookpost-dispatcher")

    async def main() -> None:
        worker = Worker(settings)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())


__all__: list[Any] = ["Worker", "run_forever"]
