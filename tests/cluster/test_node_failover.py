"""Losing a RabbitMQ node of a private three-node cluster (quorum queues) loses nothing.

- ``test_deliver_queue_leader_killed_mid_run``: two dispatchers (competing consumers) and a publisher on a node
  that does not lead ``PREFIX.deliver``; once a third of EVENTS change events is confirmed, the leader node of
  ``PREFIX.deliver`` is killed with ``kill -9``. Everything published so far must be delivered while it is down;
  then it is restarted, rejoins, and the last TAIL events are published through it. Ends when every event is
  ``Finished`` and was received at least once (by ``webhook-id``); prints the figures and writes them to
  ``failover-results.json`` in the test's tmp dir (``docs/scaling.md`` quotes them). A dispatcher or publisher
  that dies during the failover fails the test at once.
- ``test_publisher_moves_to_another_node``: the publisher's own node is killed between two windows.
- ``test_dispatcher_outbox_survives_a_leader_election``: a dispatcher's first delivery publish lands while
  ``PREFIX.deliver`` elects a new leader.
"""

import asyncio
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.common.topology import topology_from
from hookpost.dispatcher.worker import Worker
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.events import EventFilter
from tests.cluster.rabbit_cluster import Node, RabbitCluster
from tests.helpers import Receiver, drain_queue, running_worker, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EVENTS = int(os.environ.get("HOOKPOST_FAILOVER_EVENTS", "300"))
BATCH = 25          # change events per confirmed window
PACE = 0.05         # pause between windows: spreads publishing over a few seconds so the kill lands mid-run
DEADLINE = 120.0    # seconds for each phase after the kill
TAIL = 20           # the last events, published through the restarted node


def change(i: int) -> ChangeEvent:
    return ChangeEvent(id=f"fo-{i:05d}", type="article.updated", entity=Entity(kind="article", id=f"A-{i}"))


@dataclass
class ConnectionWatch:
    """Records when a worker loses and regains its broker connection (a test-side observer, polled)."""

    worker: Worker
    transitions: list[tuple[float, bool]] = field(default_factory=list)

    async def run(self) -> None:
        state = self.worker.connected.is_set()
        while True:
            now = self.worker.connected.is_set()
            if now != state:
                self.transitions.append((time.monotonic(), now))
                state = now
            await asyncio.sleep(0.01)


def finished(worker: Worker) -> int:
    return int(worker.metrics.registry.get_sample_value("hookpost_events_finished_total") or 0)


def received_ids(receiver: Receiver) -> set[str]:
    return {r.headers["webhook-id"] for r in receiver.requests}


def resumption(receiver: Receiver, t_kill: float, until: float) -> tuple[float, float]:
    """Return (pause, resumed-after) in seconds: the longest silence at the receiver between the last request
    before the kill and ``until``, and how long after the kill the request ending it arrived."""
    times = sorted(r.at for r in receiver.requests if r.at < until)
    before = [t for t in times if t <= t_kill]
    after = [t for t in times if t > t_kill]
    if not after:
        return float("nan"), float("nan")
    prev = before[-1] if before else t_kill
    best_gap, best_end = after[0] - prev, after[0]
    for a, b in itertools.pairwise(after):
        if b - a > best_gap:
            best_gap, best_end = b - a, b
    return best_gap, best_end - t_kill


class Healthy:
    """A condition guard: fails a wait at once when a dispatcher or the publisher has died."""

    def __init__(self, workers: list[Worker], producer: "asyncio.Task[None] | None" = None) -> None:
        self.workers = workers
        self.producer = producer

    def __call__(self) -> bool:
        for i, w in enumerate(self.workers, 1):
            if w.stopping.is_set():
                raise AssertionError(f"dispatcher {i} stopped during the failover (its run() raised; the error "
                                     "is re-raised below when the test stops it)")
        if self.producer is not None and self.producer.done() and self.producer.exception() is not None:
            raise AssertionError(f"the publisher failed: {self.producer.exception()!r}")
        return True


async def test_deliver_queue_leader_killed_mid_run(rabbit_cluster: RabbitCluster, settings_factory, new_receiver,
                                                   tmp_path: Path) -> None:
    with collect_logs() as logs:
        results = await _failover_run(rabbit_cluster, settings_factory, new_receiver, logs)
    out = tmp_path / "failover-results.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfailover results ({out}):\n{json.dumps(results, indent=2, default=str)}")
    assert results["lost"] == 0, results
    assert results["store_statuses"] == {"Finished": EVENTS}, results["store_statuses"]


async def _failover_run(cluster: RabbitCluster, settings_factory, new_receiver,
                        logs: list[logging.LogRecord]) -> dict[str, Any]:
    urls = cluster.urls
    # Dispatcher 1 lists the nodes a,b,c and dispatcher 2 b,c,a. Dispatcher 1 declares the topology first, so
    # the quorum queues' leaders start on node a (client-local placement): killing that leader cuts
    # dispatcher 1's connection, while dispatcher 2's consumers sit on a surviving node.
    settings = settings_factory(rabbitmq_url=",".join(urls), queue_type="quorum")
    settings2 = settings.model_copy(update={"rabbitmq_url": ",".join(urls[1:] + urls[:1])})
    topology = topology_from(settings)
    main_run = EVENTS - TAIL

    store = Store.connect(settings.mongodb_url, settings.mongodb_db)
    await store.ensure_indexes()
    receiver: Receiver = await new_receiver([200])
    await store.webhooks.create(receiver.url, ["article.*"])

    published: list[str] = []
    victim = None
    t_start = time.monotonic()
    try:
        async with AsyncExitStack() as stack:
            w1 = await stack.enter_async_context(running_worker(settings))
            w2 = await stack.enter_async_context(running_worker(settings2))
            watches = [ConnectionWatch(w1), ConnectionWatch(w2)]
            watch_tasks = [asyncio.create_task(w.run()) for w in watches]

            info = await asyncio.to_thread(cluster.queue_info, topology.deliver_queue)
            assert info is not None and info["type"] == "quorum" and len(info["members"]) == 3, info
            victim = cluster.node(str(info["leader"]))
            changes_leader = await asyncio.to_thread(cluster.leader_of, topology.changes_queue)
            publish_via = [n for n in cluster.nodes if n is not victim][-1]
            rss_before = {n.name: n.rss_kb() for n in cluster.nodes}

            async def produce(first: int, last: int, via: Node) -> None:
                publisher = Publisher([via.url, *(n.url for n in cluster.nodes if n is not via)],
                                      prefix=settings.prefix, timeout=60.0, name="failover-publisher")
                async with publisher:
                    for start in range(first, last, BATCH):
                        batch = [change(i) for i in range(start, min(start + BATCH, last))]
                        await publisher.publish_many(batch, window=BATCH)
                        published.extend(c.id for c in batch)
                        await asyncio.sleep(PACE)

            producer = asyncio.create_task(produce(0, main_run, publish_via))
            ok = Healthy([w1, w2], producer)
            await wait_until(lambda: ok() and len(published) >= EVENTS // 3 and receiver.requests, 60,
                             message="a third of the change events confirmed and deliveries flowing")

            # ---- kill -9 the leader of PREFIX.deliver, mid-run
            received_before_kill = len(received_ids(receiver))
            finished_before_kill = (finished(w1), finished(w2))
            published_at_kill = len(published)
            t_kill = await asyncio.to_thread(cluster.kill9, victim)
            print(f"\nkill -9 {victim.nodename} (leader of {topology.deliver_queue}) at t+{t_kill - t_start:.2f}s: "
                  f"{published_at_kill} changes published, {received_before_kill} events received")

            await wait_until(lambda: ok() and len(received_ids(receiver)) > received_before_kill
                             and any(r.at > t_kill for r in receiver.requests),
                             DEADLINE, message="deliveries resumed after the kill")
            finished_at_resume = (finished(w1), finished(w2))

            # ---- everything published so far is delivered with the node still down (2 of 3 is a majority)
            await wait_until(lambda: ok() and producer.done(), DEADLINE, message="the change events published")
            await wait_until(lambda: ok() and len(received_ids(receiver)) >= main_run, DEADLINE, interval=0.1,
                             message=f"{main_run} events received while {victim.nodename} is down")
            assert victim.pid() is None
            t_all_down = max(first_arrivals(receiver).values())

            # ---- restart the killed node; it rejoins with its data; the last events go through it
            t_restart = time.monotonic()
            restart_s = await asyncio.to_thread(cluster.start_node, victim)
            await asyncio.to_thread(cluster.wait_clustered, 60)
            rejoined = await _all_members_online(cluster, topology.deliver_queue)
            t_rejoined = time.monotonic()
            print(f"{victim.nodename} restarted in {restart_s:.1f}s; all members of {topology.deliver_queue} "
                  f"online t+{t_rejoined - t_kill:.1f}s after the kill")
            tail = asyncio.create_task(produce(main_run, EVENTS, victim))
            await wait_until(lambda: Healthy([w1, w2], tail)() and len(received_ids(receiver)) >= EVENTS,
                             DEADLINE, interval=0.1, message=f"all {EVENTS} events received")

            async def all_finished() -> bool:
                return ok() and await store.events.count({"status": EventStatus.FINISHED.value}) >= EVENTS
            await wait_until(all_finished, 30, interval=0.2, message="every event Finished in the store")
            # redelivered copies may still be on their way: count duplicates once the deliver queue is empty
            await wait_until(lambda: asyncio.to_thread(_queue_empty, cluster, topology.deliver_queue), 30,
                             interval=0.5, message="deliver queue empty")
            for t in watch_tasks:
                t.cancel()
            finished_end = (finished(w1), finished(w2))

        events = await store.events.find(EventFilter(), limit=EVENTS * 2)
    finally:
        await store.close()
        if victim is not None and victim.pid() is None:  # a failed run: bring it back so cleanup can delete
            await asyncio.to_thread(cluster.start_node, victim)

    per_id = Counter(r.headers["webhook-id"] for r in receiver.requests)
    statuses = Counter(e.status.value for e in events)
    lost_changes = sorted({change(i).id for i in range(EVENTS)} - {e.change_id for e in events})
    not_received = sorted({e.id for e in events} - set(per_id))
    pause, resumed_after = resumption(receiver, t_kill, t_restart)
    t_first_after = min(r.at for r in receiver.requests if r.at > t_kill)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine_cores": os.cpu_count(),
        "rabbitmq_nodes": [n.nodename for n in cluster.nodes],
        "queue_type": "quorum",
        "dispatchers": 2,
        "events": EVENTS,
        "killed_node": victim.nodename,
        "killed_node_led": [topology.deliver_queue, *([topology.changes_queue] if changes_leader is victim else [])],
        "publisher_node": publish_via.nodename,
        "kill_at_s": round(t_kill - t_start, 3),
        "published_before_kill": published_at_kill,
        "received_before_kill": received_before_kill,
        "first_request_after_kill_s": round(t_first_after - t_kill, 3),
        "delivery_pause_s": round(pause, 3),
        "deliveries_resumed_after_s": round(resumed_after, 3),
        "dispatcher_reconnected_after_s": [[round(t - t_kill, 3) for t, up in w.transitions if up] for w in watches],
        f"first_{main_run}_delivered_after_kill_s": round(t_all_down - t_kill, 2),
        "node_restart_s": round(restart_s, 2),
        "node_rejoined_after_kill_s": round(t_rejoined - t_kill, 2),
        "finished_per_dispatcher": {"before_kill": finished_before_kill, "at_resume": finished_at_resume,
                                    "end": finished_end},
        "deliver_queue_after_rejoin": rejoined,
        "rss_kb_before": rss_before,
        "store_statuses": dict(statuses),
        "requests": len(receiver.requests),
        "received_unique": len(per_id),
        "lost": len(lost_changes) + len(not_received),
        "lost_examples": (lost_changes + not_received)[:10],
        "duplicates": sum(n - 1 for n in per_id.values()),
        "duplicate_deliveries_ignored": sum(1 for r in logs if r.getMessage().startswith("duplicate delivery")),
        "warnings": dict(Counter(_describe(r) for r in logs if r.levelno >= logging.WARNING).most_common(10)),
        "total_s": round(time.monotonic() - t_start, 2),
    }


async def test_publisher_moves_to_another_node(rabbit_cluster: RabbitCluster, settings_factory) -> None:
    """A publisher whose node is killed between two windows reconnects to another node; every confirmed change
    is in the changes queue afterwards (confirmed = stored, none lost)."""
    cluster = rabbit_cluster
    settings = settings_factory(rabbitmq_url=",".join(cluster.urls), queue_type="quorum")
    topology = topology_from(settings)
    victim = cluster.nodes[0]          # the publisher connects to the first URL that answers
    publisher = Publisher(cluster.urls, prefix=settings.prefix, topology=topology, declare=True, timeout=60.0,
                          name="failover-publisher")
    try:
        with collect_logs():
            async with publisher:
                confirmed = await publisher.publish_many([change(i) for i in range(50)], window=25)
                leader = await asyncio.to_thread(cluster.leader_of, topology.changes_queue)
                t_kill = await asyncio.to_thread(cluster.kill9, victim)
                confirmed += await publisher.publish_many([change(i) for i in range(50, 100)], window=25)
                republished_s = time.monotonic() - t_kill
    finally:
        if victim.pid() is None:
            await asyncio.to_thread(cluster.start_node, victim)
            await asyncio.to_thread(cluster.wait_clustered, 60)
    queued = Counter(json.loads(body)["id"] for _, body in await drain_queue(settings, topology.changes_queue))
    print(f"\npublisher on {victim.nodename} (changes leader {leader.nodename}) killed: next 50 confirmed "
          f"{republished_s:.2f}s after the kill; queued {sum(queued.values())}, unique {len(queued)}, "
          f"duplicates {sum(queued.values()) - len(queued)}")
    assert set(queued) == set(confirmed), sorted(set(confirmed) - set(queued))[:10]


async def test_dispatcher_outbox_survives_a_leader_election(rabbit_cluster: RabbitCluster, settings_factory,
                                                            new_receiver) -> None:
    """A dispatcher whose first delivery publish lands while ``PREFIX.deliver`` elects a new leader still
    delivers everything (RabbitMQ 3.10 keeps nacking such a channel: the outbox must not keep using it)."""
    cluster = rabbit_cluster
    a, b, c = cluster.nodes
    settings = settings_factory(rabbitmq_url=",".join([b.url, c.url, a.url]), queue_type="quorum")
    topology = topology_from(settings)
    # PREFIX.changes led by b (untouched by the kill), everything else by a (queues are led where declared)
    changes_spec = next(q for q in topology.queues if q.name == topology.changes_queue)
    await asyncio.to_thread(_declare_queue, b.amqp_port, changes_spec.name, changes_spec.arguments)
    conn = await AmqpConnection.connect([a.url])
    try:
        await (await conn.channel()).declare(topology)
    finally:
        await conn.close()
    assert (await asyncio.to_thread(cluster.leader_of, topology.deliver_queue)) is a

    store = Store.connect(settings.mongodb_url, settings.mongodb_db)
    receiver: Receiver = await new_receiver([200])
    try:
        await store.ensure_indexes()
        await store.webhooks.create(receiver.url, ["article.*"])
        with collect_logs() as logs:
            async with running_worker(settings) as worker, Publisher([c.url], prefix=settings.prefix) as publisher:
                t_kill = await asyncio.to_thread(cluster.kill9, a)
                await publisher.publish_many([change(i) for i in range(20)])
                try:
                    await wait_until(lambda: Healthy([worker])() and len(received_ids(receiver)) >= 20, 30,
                                     message="20 events delivered after the deliver queue's leader was killed")
                except AssertionError:
                    invalid = await drain_queue(settings, topology.invalid_queue)
                    nacks = sum(1 for r in logs if "nack" in _describe(r))
                    statuses = await store.events.group_counts("status", {})
                    raise AssertionError(
                        f"{len(received_ids(receiver))}/20 delivered in 30 s; {nacks} publishes nacked; "
                        f"{len(invalid)} change events dead-lettered to {topology.invalid_queue}; "
                        f"event statuses {statuses}") from None
                print(f"\n20 events delivered {time.monotonic() - t_kill:.2f}s after the kill of the deliver "
                      f"queue's leader")
    finally:
        await store.close()
        if a.pid() is None:
            await asyncio.to_thread(cluster.start_node, a)
            await asyncio.to_thread(cluster.wait_clustered, 60)


def _declare_queue(port: int, name: str, arguments: dict[str, Any]) -> None:
    """Declare one durable queue through the node listening on ``port`` (so that node leads it)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        conn.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        conn.close()


def first_arrivals(receiver: Receiver) -> dict[str, float]:
    """Return, per webhook-id, when the receiver first got it."""
    first: dict[str, float] = {}
    for r in receiver.requests:
        first.setdefault(r.headers["webhook-id"], r.at)
    return first


def _queue_empty(cluster: RabbitCluster, queue: str) -> bool:
    info = cluster.queue_info(queue)
    return info is not None and int(info.get("messages") or 0) == 0


async def _all_members_online(cluster: RabbitCluster, queue: str, timeout: float = 60.0) -> dict[str, Any] | None:
    """Wait until the restarted member of ``queue`` is back online; return the queue's info."""
    deadline = time.monotonic() + timeout
    info = await asyncio.to_thread(cluster.queue_info, queue)
    while info and len(info.get("online", [])) < len(cluster.nodes) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        info = await asyncio.to_thread(cluster.queue_info, queue)
    return info


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextmanager
def collect_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect Hookpost's INFO+ log records in a list (not propagated: hundreds of 'delivered' lines).

    On failure the warnings and errors are printed, with their exceptions.
    """
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("hookpost")
    handler = _Collect(records)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield records
    except BaseException:
        for r in records:
            if r.levelno >= logging.WARNING:
                print(f"{r.levelname} {r.name}: {_describe(r)}")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _describe(record: logging.LogRecord) -> str:
    extra = {k: getattr(record, k) for k in ("error", "reason", "url") if hasattr(record, k)}
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        extra["exception"] = f"{type(exc).__name__}: {exc}"[:300]
    return f"{record.getMessage()} {extra}" if extra else record.getMessage()
