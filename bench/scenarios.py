"""The benchmark's measurements: throughput, latency, memory, isolation, bare limits, the CLI and the janitor.

Each ``run_*`` method of :class:`Bench` makes one run on a fresh topology prefix and database, removes them
afterwards and returns plain JSON-ready data; :mod:`bench.run` repeats runs and summarizes them.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.procs import (
    CpuMeter,
    CpuUsage,
    Dispatcher,
    Receivers,
    RssSampler,
    base_env,
    venv_script,
)
from bench.profile import Profiler
from hookpost.common.amqp import AmqpConnection
from hookpost.common.errors import BrokerUnavailableError
from hookpost.common.models import Attempt, ChangeEvent, Entity, EventStatus, attempt_id
from hookpost.common.settings import load_settings, settings_env
from hookpost.common.topology import Topology, topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo
from tests.metrics_text import Samples, metric_by_label, metric_sum
from tests.seed import make_events

EVENT_TYPE = "article.updated"


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return median, min and max of ``values`` (empty dict if there are none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": len(vals)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0–100) of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[idx])


def cpu_report(usage: CpuUsage, deliveries: int) -> dict[str, Any]:
    """CPU seconds per 1,000 deliveries per process, and each process's share of the machine."""
    per_k = {k: v / deliveries * 1000 for k, v in usage.seconds.items()} if deliveries else {}
    return {"seconds": usage.seconds, "per_1000": per_k, "share": usage.share(), "wall": usage.wall,
            "others_s": usage.others}


def label_delta(after: Samples, before: Samples, name: str) -> dict[str, float]:
    """The increase of each labelled sample of the counter ``name`` from ``before`` to ``after``."""
    start = metric_by_label(before, name)
    return {label: v - start.get(label, 0.0) for label, v in metric_by_label(after, name).items()}


def changes(tag: str, n: int, start: int = 0, data: dict[str, Any] | None = None) -> list[ChangeEvent]:
    """Return ``n`` change events of type ``article.updated`` with ids unique to ``tag``."""
    return [ChangeEvent(id=f"{tag}-{i}", type=EVENT_TYPE, entity=Entity(kind="article", id=f"A-{i}"),
                        data=data if data is not None else {"n": i}) for i in range(start, start + n)]


@dataclass
class Trial:
    """One run's prefix, database and settings."""

    tag: str
    settings: dict[str, str]
    topology: Topology
    store: Store
    webhook_ids: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """The topology prefix of this run."""
        return self.settings["prefix"]


class Bench:
    """Shared infrastructure of a benchmark run: the store server, the receivers, the broker, a work folder."""

    def __init__(self, workdir: Path, mongo: LocalMongo, receivers: Receivers, rabbit_url: str,
                 broker: int | None) -> None:
        self.workdir = workdir
        self.mongo = mongo
        self.receivers = receivers
        self.rabbit_url = rabbit_url
        self.broker = broker

    # ---- set-up and tear-down -------------------------------------------------------------------------------

    @asynccontextmanager
    async def trial(self, ok: int = 2, hang: int = 0, **extra: str) -> AsyncIterator[Trial]:
        """A fresh prefix and database with webhooks on ``ok`` healthy and ``hang`` hanging receiver ports;
        topology and database are deleted afterwards."""
        tag = uuid.uuid4().hex[:8]
        settings = {"rabbitmq_url": self.rabbit_url, "mongodb_url": self.mongo.url, "mongodb_db": f"bench_{tag}",
                    "prefix": f"bench-{tag}", "allow_private_targets": "true", "log_level": "WARNING",
                    "shutdown_grace": "5s", **extra}
        topology = topology_from(load_settings(**settings))
        store = Store.connect(self.mongo.url, settings["mongodb_db"])
        await store.ensure_indexes()
        trial = Trial(tag, settings, topology, store)
        ports = self.receivers.ok_ports[:ok] + self.receivers.hang_ports[:hang]
        for port in ports:
            hook = await store.webhooks.create(self.receivers.url(port), ["article.*"], description=f"port {port}")
            trial.webhook_ids.append(hook.id)
        await self.receivers.reset()
        try:
            yield trial
        finally:
            await self.delete_topology(topology)
            await store.client.drop_database(settings["mongodb_db"])
            await store.close()

    async def wait_broker(self, timeout: float = 120.0) -> None:
        """Wait until the broker accepts a connection (other suites on this machine restart it at times)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await AmqpConnection.connect([self.rabbit_url], name="hookpost-bench")
            except BrokerUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
                continue
            await conn.close()
            return

    async def delete_topology(self, topology: Topology) -> None:
        """Delete every queue and exchange of ``topology``."""
        await self.wait_broker()
        conn = await AmqpConnection.connect([self.rabbit_url], name="hookpost-bench")
        try:
            await (await conn.channel()).delete(topology)
        finally:
            await conn.close()

    async def queue_depth(self, queue: str) -> int:
        """Return the ready messages of ``queue``."""
        conn = await AmqpConnection.connect([self.rabbit_url], name="hookpost-bench")
        try:
            return await (await conn.channel()).queue_depth(queue)
        finally:
            await conn.close()

    def publisher(self, trial: Trial, declare: bool = False) -> Publisher:
        """A publisher for the trial's prefix."""
        return Publisher([self.rabbit_url], prefix=trial.prefix, topology=trial.topology, declare=declare,
                         timeout=60, name="hookpost-bench")

    def dispatcher(self, trial: Trial, name: str = "dispatcher") -> Dispatcher:
        """A dispatcher process for the trial (not started)."""
        return Dispatcher(trial.settings, self.workdir / f"{name}-{trial.tag}.log")

    def meter(self, dispatcher: Dispatcher | None) -> CpuMeter:
        """A CPU meter over the dispatcher, the store, the broker, the receivers and this process."""
        return CpuMeter({"dispatcher": dispatcher.pid if dispatcher else None, "store": self.mongo.pid,
                         "broker": self.broker, "receivers": self.receivers.pid, "bench (publisher)": os.getpid()})

    async def wait_received(self, ports: Sequence[int], total: int, timeout: float) -> dict[str, Any]:
        """Wait until ``ports`` together got ``total`` distinct deliveries; return the receiver stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.receivers.stats()
            got = sum(stats[str(p)]["unique"] for p in ports)
            if got >= total:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {got} of {total} deliveries arrived within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    @staticmethod
    async def wait_metric(disp: Dispatcher, name: str, target: float, timeout: float) -> Samples:
        """Wait until the dispatcher's counter ``name`` (summed over labels) reaches ``target``; return metrics."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = await disp.metrics()
            if metric_sum(metrics, name) >= target or time.monotonic() > deadline:
                return metrics
            await asyncio.sleep(0.2)

    # ---- 1 and 4: throughput, with or without a hanging endpoint ----------------------------------------------

    async def run_throughput(self, n: int, k: int = 2, hang: int = 0, extra_ok: int = 0, profile: Path | None = None,
                             **extra: str) -> dict[str, Any]:
        """Publish ``n`` changes fanned out to ``k`` healthy (+ ``hang`` hanging, + ``extra_ok`` healthy but not
        counted) webhooks; measure deliveries/s from the first publish to the last receipt at the ``k`` counted
        receivers, CPU per process and store operations per counted delivery. With ``profile``, py-spy samples
        the dispatcher into that file meanwhile."""
        async with self.trial(ok=k + extra_ok, hang=hang, **extra) as trial:
            disp = self.dispatcher(trial).start()
            try:
                await disp.wait_ready()
                meter = self.meter(disp)
                m0 = await disp.metrics()
                batch = changes(trial.tag, n)
                profiler = Profiler(disp.pid, profile) if profile else None
                c0, t0 = meter.snapshot(), time.time()
                async with self.publisher(trial) as pub:
                    await pub.publish_many(batch, window=500)
                t_published = time.time()
                healthy = self.receivers.ok_ports[:k]
                total = n * k
                stats = await self.wait_received(healthy, total, timeout=600)
                metrics = await self.wait_metric(disp, "hookpost_events_finished_total",
                                                 metric_sum(m0, "hookpost_events_finished_total")
                                                 + n * (k + extra_ok), 120)
                c1 = meter.snapshot()
                if profiler is not None:
                    profiler.stop()
            finally:
                disp.stop()
        last = max(stats[str(p)]["last"] for p in healthy)
        seconds = last - t0
        ops = {c: v - metric_by_label(m0, "hookpost_store_operations_total").get(c, 0.0)
               for c, v in metric_by_label(metrics, "hookpost_store_operations_total").items()}
        hang_requests = sum(stats[str(p)]["requests"] for p in self.receivers.hang_ports[:hang])
        return {
            "changes": n, "webhooks": k, "hanging_webhooks": hang, "uncounted_webhooks": extra_ok,
            "deliveries": total,
            "seconds": seconds, "deliveries_per_s": total / seconds, "publish_s": t_published - t0,
            "cpu": cpu_report(c1 - c0, total),
            "store_ops": ops, "store_ops_per_delivery": sum(ops.values()) / total,
            "deferred": metric_sum(metrics, "hookpost_deliveries_deferred_total")
            - metric_sum(m0, "hookpost_deliveries_deferred_total"),
            "attempts": metric_by_label(metrics, "hookpost_delivery_attempts_total"),
            "first_attempts": label_delta(metrics, m0, "hookpost_first_attempts_total"),
            "hang_requests": hang_requests, "broker_disturbed": disp.broker_losses(),
            "settings": {k_: v for k_, v in trial.settings.items() if k_ not in ("rabbitmq_url", "mongodb_url")},
        }

    # ---- 2: latency at a steady rate --------------------------------------------------------------------------

    async def steady_publish(self, pub: Publisher, tag: str, rate: float, seconds: float,
                             stop: asyncio.Event | None = None, tick: float = 0.02) -> int:
        """Publish ``rate`` changes/s for ``seconds`` (or until ``stop``), each carrying its send time in
        ``data.sent``; return how many were published."""
        started = time.monotonic()
        sent = 0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds or (stop is not None and stop.is_set()):
                return sent
            due = int(elapsed * rate) + 1 - sent
            if due > 0:
                now = time.time()
                await pub.publish_many(changes(tag, due, start=sent, data={"sent": now}), window=max(due, 1))
                sent += due
            await asyncio.sleep(max(0.0, started + (sent / rate) - time.monotonic(), tick / 4))

    async def run_latency(self, deliveries_per_s: float, seconds: float, k: int = 2, **extra: str) -> dict[str, Any]:
        """Publish at a steady ``deliveries_per_s`` (``/k`` changes/s) for ``seconds``; return publish→receipt
        latency percentiles in milliseconds. ``extra`` are dispatcher settings of this run (as for
        :meth:`run_throughput`)."""
        async with self.trial(ok=k, **extra) as trial:
            disp = self.dispatcher(trial).start()
            try:
                await disp.wait_ready()
                meter = self.meter(disp)
                m0 = await disp.metrics()
                c0 = meter.snapshot()
                async with self.publisher(trial) as pub:
                    n = await self.steady_publish(pub, trial.tag, deliveries_per_s / k, seconds)
                await self.wait_received(self.receivers.ok_ports[:k], n * k, timeout=300)
                c1 = meter.snapshot()
                m1 = await disp.metrics()
                lat = sorted(v for _, v in await self.receivers.latencies())
            finally:
                disp.stop()
        ms = [v * 1000 for v in lat]
        return {"target_deliveries_per_s": deliveries_per_s, "deliveries": len(ms), "seconds": seconds,
                "achieved_deliveries_per_s": n * k / seconds,
                "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
                "max_ms": ms[-1] if ms else None, "histogram_ms": ms[:: max(1, len(ms) // 2000)],
                "broker_disturbed": disp.broker_losses(),
                "first_attempts": label_delta(m1, m0, "hookpost_first_attempts_total"),
                "cpu": cpu_report(c1 - c0, len(ms))}

    # ---- 3: memory with a large backlog -----------------------------------------------------------------------

    async def run_memory(self, backlog: int, watch: float, runs: int = 3, k: int = 2) -> dict[str, Any]:
        """Publish ``backlog`` changes with no dispatcher running; then ``runs`` times start a dispatcher on that
        backlog, sample its RSS every 0.5 s for ``watch`` seconds while it works, and stop it."""
        async with self.trial(ok=k) as trial:
            t0 = time.monotonic()
            async with self.publisher(trial, declare=True) as pub:
                chunk = 20000
                for start in range(0, backlog, chunk):
                    await pub.publish_many(changes(trial.tag, min(chunk, backlog - start), start=start),
                                           window=1000)
            publish_s = time.monotonic() - t0
            depth = await self.queue_depth(trial.topology.changes_queue)
            out: dict[str, Any] = {"backlog": backlog, "queued": depth, "publish_s": publish_s,
                                   "publish_per_s": backlog / publish_s, "watch_s": watch, "runs": []}
            for i in range(runs):
                out["runs"].append(await self._watch_rss(trial, watch, f"dispatcher-memory{i}"))
        return out

    async def _watch_rss(self, trial: Trial, watch: float, name: str) -> dict[str, Any]:
        before = await self.queue_depth(trial.topology.changes_queue)
        disp = self.dispatcher(trial, name)
        try:
            disp.start()
            sampler = RssSampler(disp.pid, 0.5).start()
            t_start = time.monotonic()
            await disp.wait_ready()
            ready_at = time.monotonic() - t_start
            m0 = await disp.metrics()
            await asyncio.sleep(watch)
            m1 = await disp.metrics()
            samples = sampler.stop()
        finally:
            disp.stop()
        mb = [(round(t - ready_at, 2), rss / 2**20) for t, rss in samples]
        after_ready = [v for t, v in mb if t >= 0] or [v for _, v in mb]
        late = [v for t, v in mb if t >= 5] or after_ready
        return {"backlog_at_start": before, "ready_after_s": ready_at, "broker_disturbed": disp.broker_losses(),
                "rss_start_mb": after_ready[0], "rss_peak_mb": max(after_ready), "rss_end_mb": after_ready[-1],
                "rss_growth_after_5s_mb": max(late) - late[0],
                "changes_consumed": metric_sum(m1, "hookpost_changes_consumed_total")
                - metric_sum(m0, "hookpost_changes_consumed_total"),
                "events_finished": metric_sum(m1, "hookpost_events_finished_total")
                - metric_sum(m0, "hookpost_events_finished_total"),
                "samples_mb": mb}

    # ---- 5: the limits ------------------------------------------------------------------------------------------

    async def _bare(self, args: list[str]) -> dict[str, Any]:
        meter = CpuMeter({"broker": self.broker, "receivers": self.receivers.pid, "store": self.mongo.pid})
        c0 = meter.snapshot()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.bare", *args, env=base_env(),
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        c1 = meter.snapshot()
        if proc.returncode != 0:
            raise RuntimeError(f"bench.bare {args[0]} failed: {err.decode()[-2000:]}")
        res: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        usage = c1 - c0
        res["per_s"] = res["ops"] / res["seconds"]
        res["cpu_ms_per_op"] = res["cpu_s"] / res["ops"] * 1000
        res["other_cpu_ms_per_op"] = {k: v / res["ops"] * 1000 for k, v in usage.seconds.items()}
        return res

    async def run_bare_http(self, n: int, concurrency: int = 20, k: int = 2) -> dict[str, Any]:
        """A bare aiohttp POST loop to the same healthy receivers."""
        await self.receivers.reset()
        urls = [a for p in self.receivers.ok_ports[:k] for a in ("--url", self.receivers.url(p))]
        return await self._bare(["http", *urls, "--n", str(n), "--concurrency", str(concurrency)])

    async def run_bare_amqp(self, n: int, queue_type: str = "quorum") -> dict[str, Any]:
        """A bare pika publish(confirms)→consume→ack loop through one fresh queue."""
        return await self._bare(["amqp", "--url", self.rabbit_url, "--n", str(n), "--queue-type", queue_type,
                                 "--queue", f"bench-bare-{uuid.uuid4().hex[:8]}"])

    # ---- 6: the CLI on a seeded store ----------------------------------------------------------------------

    async def seed(self, store: Store, n: int, webhook_ids: list[str], attempts: int = 0,
                   age_s: float = 3600.0) -> dict[str, float]:
        """Insert ``n`` events spread over 10 days ending ``age_s`` ago (batches of 1000), and up to ``attempts``
        attempt records for each in ``attempts`` (never more than the event's ``attempt_count``: a real event has
        no record of an attempt it did not make, and the janitor deletes the records its count says exist); return
        the seconds each part took."""
        from datetime import UTC, datetime, timedelta

        t0 = time.monotonic()
        events = make_events(n, webhook_ids, now=datetime.now(UTC) - timedelta(seconds=age_s))
        for i in range(0, n, 1000):
            await store.events.insert_new(events[i:i + 1000])
        t1 = time.monotonic()
        batch: list[Attempt] = []
        for ev in events:
            made = min(attempts, ev.attempt_count)
            for a in range(1, made + 1):
                batch.append(Attempt(id=attempt_id(ev.id, a), event_id=ev.id, webhook_id=ev.webhook_id, attempt=a,
                                     started_at=ev.created_at, duration_ms=12.5,
                                     status_code=200 if a == made else 503,
                                     error=None if a == made else "HTTP 503", response_excerpt="ok"))
            if len(batch) >= 1000:
                await store.attempts.insert(batch)
                batch = []
        if batch:
            await store.attempts.insert(batch)
        return {"events_s": t1 - t0, "attempts_s": time.monotonic() - t1}

    def cli(self, trial: Trial, *args: str) -> tuple[float, int, str]:
        """Run ``hookpost ARGS`` against the trial's store; return wall seconds, exit code and stdout."""
        env = base_env()
        env.update(settings_env(trial.settings))
        t0 = time.perf_counter()
        proc = subprocess.run([venv_script("hookpost"), *args], env=env, capture_output=True, text=True,
                              timeout=300)
        return time.perf_counter() - t0, proc.returncode, proc.stdout + proc.stderr

    CLI_QUERIES: dict[str, list[str]] = {
        "--status failed --since 2d": ["--status", "failed", "--since", "2d"],
        "--type 'article.*'": ["--type", "article.*"],
        "--search timeout": ["--search", "timeout"],
        "--status failed --type 'order.*' --search 503": ["--status", "failed", "--type", "order.*",
                                                           "--search", "503"],
    }

    async def run_cli(self, n: int, repeats: int = 5) -> dict[str, Any]:
        """Seed ``n`` events over 10 days, then time ``hookpost events list`` with each filter ``repeats``
        times (the whole command, interpreter start-up included), and the same query in-process."""
        from hookpost.cli.events import build_filter

        async with self.trial(ok=2) as trial:
            seeded = await self.seed(trial.store, n, trial.webhook_ids)
            startup = [self.cli(trial, "--help")[0] for _ in range(repeats)]
            out: dict[str, Any] = {"events": n, "seed_s": seeded, "startup_s": summarize(startup), "queries": {}}
            for label, args in self.CLI_QUERIES.items():
                walls, rows = [], 0
                for _ in range(repeats):
                    wall, code, text = self.cli(trial, "events", "list", *args)
                    if code != 0:
                        raise RuntimeError(f"hookpost events list {label} exited {code}: {text[-500:]}")
                    walls.append(wall)
                    rows = max(0, len([ln for ln in text.splitlines() if ln.startswith("evt_")]))
                statuses = tuple(args[i + 1] for i, a in enumerate(args) if a == "--status")
                flt = build_filter(statuses, _arg(args, "--type"), None, None, _arg(args, "--since"), None,
                                   _arg(args, "--search"))
                inproc = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    await trial.store.events.find(flt, limit=50)
                    inproc.append(time.perf_counter() - t0)
                out["queries"][label] = {"wall_s": summarize(walls), "query_s": summarize(inproc), "rows": rows}
        return out

    # ---- many webhooks: dispatcher CPU per delivery with 1 or 100,000 webhooks -----------------------------------

    async def run_many_webhooks(self, n: int, webhooks: int, profile: Path | None = None) -> dict[str, Any]:
        """Store ``webhooks`` webhooks, each subscribed to its own type (half exact, half a pattern), start a
        dispatcher, publish ``n`` changes each of a type exactly one webhook wants (spread over all of them), and
        measure the dispatcher's CPU per delivery; check that every change went to exactly its webhook."""
        async with self.trial(ok=0) as trial:
            ports = self.receivers.ok_ports[:1]  # one endpoint, as with one webhook: the same concurrency limits
            t0 = time.monotonic()
            await insert_webhooks(trial.store, [self.receivers.url(p) for p in ports], webhooks)
            seeded_s = time.monotonic() - t0
            by_i = {d["bench_i"]: d["_id"] async for d in trial.store.webhooks.coll.find({}, {"bench_i": 1})}
            targets = [(j * 7919) % webhooks for j in range(n)]
            batch = [ChangeEvent(id=f"{trial.tag}-{j}", type=f"t{i}.updated" if i % 2 == 0 else f"t{i}.x.changed",
                                 entity=Entity(kind="t", id=str(j)), data={"n": j}) for j, i in enumerate(targets)]
            warm = ChangeEvent(id=f"{trial.tag}-warm", type="t0.updated", entity=Entity(kind="t", id="warm"))
            disp = self.dispatcher(trial, f"dispatcher-{webhooks}").start()
            try:
                r0 = time.monotonic()
                await disp.wait_ready()
                meter = self.meter(disp)
                # the first change loads every webhook into the cache: measured apart from the steady state
                c_start = meter.snapshot()
                async with self.publisher(trial) as pub:
                    await pub.publish_many([warm], window=1)
                await self.wait_received(ports, 1, timeout=600)
                warm_cpu = (meter.snapshot() - c_start).seconds["dispatcher"]
                ready_s = time.monotonic() - r0
                await self.receivers.reset()
                profiler = Profiler(disp.pid, profile) if profile else None
                c0, w0 = meter.snapshot(), time.time()
                async with self.publisher(trial) as pub:
                    await pub.publish_many(batch, window=500)
                stats = await self.wait_received(ports, n, timeout=600)
                c1 = meter.snapshot()
                if profiler is not None:
                    profiler.stop()
                rss_mb = psutil.Process(disp.pid).memory_info().rss / 2**20
            finally:
                disp.stop()
            seconds = max(stats[str(p)]["last"] for p in ports if stats[str(p)]["unique"]) - w0
            got = {d["change_id"]: d["webhook_id"] async for d in trial.store.events.coll.find(
                {"change_id": {"$regex": f"^{trial.tag}-"}}, {"change_id": 1, "webhook_id": 1}).limit(n * 2)}
            wrong = sum(1 for j, i in enumerate(targets) if got.get(f"{trial.tag}-{j}") != by_i[i])
        usage = c1 - c0
        return {"webhooks": webhooks, "changes": n, "deliveries": n, "seconds": seconds, "per_s": n / seconds,
                "seed_webhooks_s": seeded_s, "dispatcher_ready_s": ready_s, "first_change_cpu_s": warm_cpu,
                "dispatcher_rss_mb": rss_mb,
                "cpu": cpu_report(usage, n), "cpu_ms_per_delivery": usage.seconds["dispatcher"] / n * 1000,
                "events": len(got), "misrouted_or_missing": wrong, "broker_disturbed": disp.broker_losses()}

    # ---- 8: the HTTP API's event list on a seeded store ------------------------------------------------------

    API_QUERIES: dict[str, dict[str, str]] = {
        "status=failed&since=2d": {"status": "failed", "since": "2d"},
        "webhook=<id>": {"webhook": "<webhook>"},
        "status=failed&webhook=<id>": {"status": "failed", "webhook": "<webhook>"},
        "entity=E-7": {"entity": "E-7"},
        "type=article.updated": {"type": "article.updated"},
        "before=<id> (no filter, page 2)": {"before": "<page2>"},
    }

    async def run_api(self, n: int, requests: int = 200) -> dict[str, Any]:
        """Seed ``n`` events over 10 days, start ``hookpost server`` (a subprocess), then time ``requests``
        sequential ``GET /api/v1/events?…&limit=50`` per filter (client wall time per request)."""
        import aiohttp

        from hookpost.admin import Admin
        from hookpost.store.localserver import free_port

        async with self.trial(ok=2) as trial:
            seeded = await self.seed(trial.store, n, trial.webhook_ids)
            settings = load_settings(**trial.settings)
            async with Admin.open(settings) as admin:
                token = (await admin.tokens.create("bench", "viewer", actor="bench")).token
            port = free_port()
            env = base_env()
            env.update({f"HOOKPOST_{k.upper()}": v for k, v in trial.settings.items()})
            env.update(HOOKPOST_SERVER_PORT=str(port), HOOKPOST_SERVER_HOST="127.0.0.1", HOOKPOST_LOG_FORMAT="json")
            from bench.procs import Subprocess

            server = Subprocess([venv_script("hookpost"), "server"], env, self.workdir / f"server-{trial.tag}.log")
            server.start()
            base = f"http://127.0.0.1:{port}/api/v1/events"
            out: dict[str, Any] = {"events": n, "requests": requests, "seed_s": seeded, "queries": {}}
            try:
                headers = {"Authorization": f"Bearer {token}"}
                async with aiohttp.ClientSession(headers=headers) as http:
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            async with http.get(base, params={"limit": "50"}) as resp:
                                first = await resp.json()
                                break
                        except aiohttp.ClientError:
                            if time.monotonic() > deadline or not server.running:
                                raise RuntimeError(f"server did not start: {server.log_tail()}") from None
                            await asyncio.sleep(0.2)
                    for label, query in self.API_QUERIES.items():
                        params = {k: {"<webhook>": trial.webhook_ids[0], "<page2>": first["next"]}.get(v, v)
                                  for k, v in query.items()}
                        params["limit"] = "50"
                        times, rows = [], 0
                        for _ in range(requests):
                            t0 = time.perf_counter()
                            async with http.get(base, params=params) as resp:
                                body = await resp.read()
                                if resp.status != 200:
                                    raise RuntimeError(f"GET {label}: {resp.status} {body[:300]!r}")
                            times.append(time.perf_counter() - t0)
                            rows = len(json.loads(body)["items"])
                        times.sort()
                        out["queries"][label] = {"p50_ms": 1000 * percentile(times, 50),
                                                 "p95_ms": 1000 * percentile(times, 95),
                                                 "p99_ms": 1000 * percentile(times, 99), "rows": rows}
            finally:
                server.stop()
        return out

    # ---- 7: the janitor while the dispatcher works ---------------------------------------------------------------

    async def run_janitor(self, n: int, attempts: int = 3, trickle_per_s: float = 20.0, k: int = 2,
                          warmup: float = 3.0, **janitor_settings: str) -> dict[str, Any]:
        """Seed ``n`` expired events with up to ``attempts`` attempts each, then run ``hookpost janitor --once`` while a
        dispatcher delivers a trickle of changes; report the pass's wall time and the deliveries meanwhile."""
        async with self.trial(ok=k) as trial:
            seeded = await self.seed(trial.store, n, trial.webhook_ids, attempts=attempts, age_s=3600)
            disp = self.dispatcher(trial, "dispatcher-janitor").start()
            try:
                await disp.wait_ready()
                meter = self.meter(disp)
                stop = asyncio.Event()
                async with self.publisher(trial) as pub:
                    trickle = asyncio.create_task(self.steady_publish(pub, trial.tag, trickle_per_s, 3600, stop))
                    await asyncio.sleep(warmup)  # the trickle's latency before the pass, for comparison
                    env = base_env()
                    env.update(settings_env(trial.settings))
                    env["HOOKPOST_LOG_LEVEL"] = "WARNING"
                    env.update(settings_env(janitor_settings))
                    c0, j0 = meter.snapshot(), time.time()
                    proc = await asyncio.create_subprocess_exec(
                        venv_script("hookpost"), "janitor", "--once", "--older-than", "30m", "--json",
                        *[a for s in EventStatus for a in ("--status", s.value)],
                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    jout, jerr = await proc.communicate()
                    j1 = time.time()
                    c1 = meter.snapshot()
                    await asyncio.sleep(warmup / 2)
                    stop.set()
                    published = await trickle
                await self.wait_received(self.receivers.ok_ports[:k], published * k, timeout=300)
                lat = await self.receivers.latencies()
            finally:
                disp.stop()
            left = await trial.store.events.count({"change_id": {"$regex": "^chg-"}})
        if proc.returncode != 0:
            raise RuntimeError(f"janitor exited {proc.returncode}: {jerr.decode()[-1000:]}")
        report = json.loads(jout.decode().strip().splitlines()[-1])
        received = [at for at, _ in lat if j0 <= at <= j1]
        during = sorted(v * 1000 for at, v in lat if j0 <= at - v <= j1)  # sent during the pass
        before = sorted(v * 1000 for at, v in lat if at < j0)
        return {"events": n, "attempts_per_event": attempts, "seed_s": seeded, "janitor_s": j1 - j0,
                "broker_disturbed": disp.broker_losses(),
                "report": report, "seeded_left": left,
                "trickle_deliveries_per_s": trickle_per_s * k,
                "deliveries_during": len(received), "expected_during": (j1 - j0) * trickle_per_s * k,
                "max_latency_during_ms": during[-1] if during else None,
                "p50_latency_during_ms": percentile(during, 50) if during else None,
                "p99_latency_during_ms": percentile(during, 99) if during else None,
                "p99_latency_before_ms": percentile(before, 99) if before else None,
                "p50_latency_before_ms": percentile(before, 50) if before else None,
                "max_latency_before_ms": before[-1] if before else None,
                "cpu": cpu_report(c1 - c0, max(1, len(received)))}


async def insert_webhooks(store: Store, urls: list[str], n: int, start: int = 0) -> None:
    """Insert ``n`` webhooks straight into the store (batches of 1,000): webhook ``i`` subscribes to
    ``t{i}.updated`` (even ``i``) or the pattern ``t{i}.*`` (odd ``i``) and posts to ``urls[i % len(urls)]``."""
    from hookpost.common.ids import new_id
    from hookpost.common.models import Webhook, now_ms
    from hookpost.store.docs import to_doc

    docs = []
    for i in range(start, start + n):
        hook = Webhook(id=new_id("wh"), url=urls[i % len(urls)], event_types=[f"t{i}.updated" if i % 2 == 0
                                                                                 else f"t{i}.*"],
                       secret="whsec_" + "A" * 32, description=f"bench {i}")
        docs.append({**to_doc(hook), "updated_ms": now_ms(), "bench_i": i})
        if len(docs) == 1000:
            await store.webhooks.coll.insert_many(docs)
            docs = []
    if docs:
        await store.webhooks.coll.insert_many(docs)


def _arg(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


async def once_more_if_disturbed(bench: Bench, measure: Callable[[], Awaitable[dict[str, Any]]],
                                 say: Callable[[str], None]) -> dict[str, Any]:
    """Run ``measure``; run it once more if it failed or its dispatcher lost the broker (other suites on this
    machine restart the shared RabbitMQ now and then). The second result stands, with ``rerun`` saying why;
    ``say`` reports the reason."""
    reason = ""
    for _ in range(2):
        try:
            r = await measure()
        except Exception as exc:  # a broker restart shows up as any of several libraries' errors
            if reason:
                raise
            reason = f"failed: {type(exc).__name__}: {exc}"[:300]
            say(f"{reason}; running it once more")
            await bench.wait_broker()
            continue
        if not reason and r.get("broker_disturbed"):
            reason = "the dispatcher lost the broker connection"
            say(f"{reason}; running it once more")
            continue
        return {**r, "rerun": reason} if reason else r
    raise AssertionError("unreachable")
