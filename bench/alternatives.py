"""Hookpost against the same job written the usual way, as a Dramatiq actor and as a Celery task.
``python -m bench.alternatives [--changes 10000] [--repeats 2]`` (``--report FILE``: re-render a result file).

Each repeat drains the same backlog three times on this machine, with the same RabbitMQ, the same local store
(one ``nx-27017``, a database of its own per run) and the same fast aiohttp receiver (:mod:`bench.receiver`):
``--changes`` changes to one webhook, published as fast as the producer can while the workers run, so every
system works through a backlog:

- **Hookpost**: one ``hookpost dispatcher`` process, through :meth:`bench.scenarios.Bench.run_throughput`;
- **Dramatiq**: the actor of :mod:`bench.alt.dramatiq_worker` run by the ``dramatiq`` CLI (by default with its
  own defaults: one process per core, 8 threads each);
- **Celery**: the task of :mod:`bench.alt.celery_worker` run by ``celery worker`` (by default its prefork pool with
  one child per core).

Both baselines run the plain job of :mod:`bench.alt.job` (event insert, signed POST with ``requests``, attempt
insert, event update; retries through the library). The order of the three rotates from one repeat to the next.
Measured per run: deliveries/s from the first publish to the last first receipt, CPU milliseconds per delivery of
the worker processes (every process of the worker's tree), the store, the broker, the receiver and the publishing
benchmark process (psutil), and the rest of the machine's CPU as *others*. The verdict compares the median
Hookpost rate with the faster alternative's median against the target (5×). The load average at the start and the
end is printed with the figures. Results go to ``bench/results/alternatives-<timestamp>.json`` and the section
"alternatives" of ``docs/benchmarks.md``. Needs RabbitMQ on 127.0.0.1:5672 (``--rabbitmq-url``) and ``nx-27017``;
every queue, exchange and database a run makes is removed afterwards.
"""

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import psutil
from pika.exceptions import AMQPError
from pymongo import MongoClient

from bench.alt import job
from bench.procs import REPO, CpuMeter, Receivers, Subprocess, base_env, broker_pid, venv_script
from bench.report import replace_section
from bench.scenarios import Bench, changes, cpu_report, once_more_if_disturbed
from hookpost.common.models import build_payload
from hookpost.dispatcher.sender import encode_body
from hookpost.store.localserver import LocalMongo

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
DEFAULT_RABBITMQ_URL = os.environ.get("HOOKPOST_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TARGET = 5.0
SYSTEMS = ("hookpost", "dramatiq", "celery")
LABELS = {"hookpost": "Hookpost", "dramatiq": "Dramatiq", "celery": "Celery"}
WORKER_PROCS = ("dispatcher", "worker")  # CPU meter names that count as the system's own workers


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[alternatives {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    """How the two baselines' workers run (``None``: the worker CLI's own default)."""

    dramatiq_processes: int | None = None
    dramatiq_threads: int | None = None
    celery_pool: str | None = None
    celery_concurrency: int | None = None

    def worker_args(self, system: str, tag: str) -> list[str]:
        """The worker command line of ``system``."""
        if system == "dramatiq":
            args = [venv_script("dramatiq"), "bench.alt.dramatiq_worker"]
            if self.dramatiq_processes:
                args += ["--processes", str(self.dramatiq_processes)]
            if self.dramatiq_threads:
                args += ["--threads", str(self.dramatiq_threads)]
            return args
        args = [venv_script("celery"), "-A", "bench.alt.celery_worker", "worker", "--loglevel", "WARNING",
                "-n", f"alt-{tag}@%h"]
        if self.celery_pool:
            args += ["--pool", self.celery_pool]
        if self.celery_concurrency:
            args += ["--concurrency", str(self.celery_concurrency)]
        return args

    def describe(self, system: str) -> str:
        """How ``system``'s workers ran, in words."""
        cores = os.cpu_count() or 1
        if system == "hookpost":
            return "one `hookpost dispatcher` process (asyncio), default settings"
        if system == "dramatiq":
            procs, threads = self.dramatiq_processes or cores, self.dramatiq_threads or 8
            how = "the CLI's defaults" if not (self.dramatiq_processes or self.dramatiq_threads) else "set by hand"
            return f"`dramatiq` CLI, {procs} process{'es' if procs != 1 else ''} × {threads} threads ({how})"
        pool, conc = self.celery_pool or "prefork", self.celery_concurrency or cores
        how = "the CLI's defaults" if not (self.celery_pool or self.celery_concurrency) else "set by hand"
        return f"`celery worker`, {pool} pool, concurrency {conc} ({how})"

    def consumers(self, system: str) -> int:
        """The consumers the worker opens on its queue once it is up."""
        if system == "dramatiq":
            return self.dramatiq_processes or os.cpu_count() or 1
        return 1


# ---- the broker: readiness and clean-up --------------------------------------------------------------------


def _amqp(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def consumer_count(url: str, queue: str) -> int:
    """The consumers of ``queue`` (0 if it does not exist yet)."""
    conn = _amqp(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except AMQPError:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def delete_names(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete ``queues`` and ``exchanges`` (missing ones are fine)."""
    conn = _amqp(url)
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = conn.channel()
                try:
                    if kind == "queue":
                        channel.queue_delete(name)
                    else:
                        channel.exchange_delete(name)
                except AMQPError:
                    pass
                if channel.is_open:
                    channel.close()
    finally:
        if conn.is_open:
            conn.close()


def broker_names(system: str, queue: str, tag: str) -> tuple[list[str], list[str]]:
    """The queues and exchanges the baseline ``system`` declares for ``queue``."""
    if system == "dramatiq":
        return [queue, f"{queue}.DQ", f"{queue}.XQ"], []
    node = f"alt-{tag}@{socket.gethostname()}"
    return ([queue, f"{node}.{queue}-ctl.pidbox"],
            [queue, f"{queue}-ctl.pidbox", f"reply.{queue}-ctl.pidbox", f"{queue}-ev"])


# ---- publishing the backlog ------------------------------------------------------------------------------------


def publish(system: str, url: str, queue: str, webhook_id: str, batch: list[dict[str, Any]]) -> None:
    """Enqueue one task per change, the way the baseline's producer would (``actor.send``, ``task.delay``)."""
    if system == "dramatiq":
        from bench.alt import dramatiq_worker

        broker, actor = dramatiq_worker.make(url, queue)
        try:
            for change in batch:
                actor.send(webhook_id, change)
        finally:
            broker.close()
    else:
        from bench.alt import celery_worker

        app, task = celery_worker.make(url, queue)
        try:
            for change in batch:
                task.delay(webhook_id, change)
        finally:
            app.close()


# ---- one run of each system ---------------------------------------------------------------------------------


async def wait_for(check: Callable[[], bool], what: str, timeout: float, alive: Subprocess | None = None) -> None:
    """Poll ``check`` (in a thread) until it holds; raise after ``timeout`` or if ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if alive is not None and not alive.running:
            raise RuntimeError(f"the worker exited while waiting for {what}: {alive.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.25)


def store_counts(database: Any) -> dict[str, Any]:
    """Events by status and the number of attempts in a baseline's database."""
    by_status = {d["_id"]: d["n"] for d in database.events.aggregate(
        [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])}
    return {"events": by_status, "attempts": database.attempts.estimated_document_count()}


async def run_alternative(bench: Bench, system: str, n: int, opts: Options, url: str) -> dict[str, Any]:
    """Drain ``n`` changes to one webhook with the baseline ``system`` (``dramatiq`` or ``celery``)."""
    tag = uuid.uuid4().hex[:8]
    queue = f"hookpost-alt-{system}-{tag}"
    dbname = f"alt_{system}_{tag}"
    port = bench.receivers.ok_ports[0]
    client: MongoClient[dict[str, Any]] = MongoClient(bench.mongo.url)
    database = client[dbname]
    job.ensure_indexes(database)
    webhook_id = f"wh_{tag}"
    database.webhooks.insert_one({"_id": webhook_id, "url": bench.receivers.url(port), "event_types": ["article.*"],
                                  "secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()})
    batch = [c.model_dump(mode="json") for c in changes(tag, n)]
    await bench.receivers.reset()
    env = base_env()
    env.update(ALT_RABBITMQ_URL=url, ALT_QUEUE=queue, ALT_MONGODB_URL=bench.mongo.url, ALT_MONGODB_DB=dbname)
    worker = Subprocess(opts.worker_args(system, tag), env, bench.workdir / f"{system}-{tag}.log").start()
    pids: list[int] = []
    load = os.getloadavg()[0]
    try:
        want = opts.consumers(system)
        await wait_for(lambda: consumer_count(url, queue) >= want, f"{want} consumer(s) on {queue}", 60, worker)
        await asyncio.sleep(1.0)  # the pool's children finish starting
        children = psutil.Process(worker.pid).children(recursive=True)
        pids = [worker.pid, *(c.pid for c in children)]
        meter = CpuMeter({"worker main": worker.pid, **{f"worker {i + 1}": c.pid for i, c in enumerate(children)},
                          "store": bench.mongo.pid, "broker": bench.broker, "receivers": bench.receivers.pid,
                          "bench (publisher)": os.getpid()})
        c0, t0 = meter.snapshot(), time.time()
        await asyncio.to_thread(publish, system, url, queue, webhook_id, batch)
        t_published = time.time()
        stats = await bench.wait_received([port], n, timeout=max(300.0, n / 10))
        await wait_for(lambda: database.command("count", "events", query={"status": "Finished"})["n"] >= n,
                       f"{n} events Finished", 120, worker)
        c1 = meter.snapshot()
        counts = await asyncio.to_thread(store_counts, database)
    finally:
        worker.stop(30)
        for pid in pids[1:]:  # pool children the worker did not take down with it
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        queues, exchanges = broker_names(system, queue, tag)
        await asyncio.to_thread(delete_names, url, queues, exchanges)
        client.drop_database(dbname)
        client.close()
    seconds = stats[str(port)]["last"] - t0
    return {"system": system, "changes": n, "deliveries": n, "seconds": seconds, "deliveries_per_s": n / seconds,
            "publish_s": t_published - t0, "cpu": cpu_report(c1 - c0, n), "store": counts,
            "requests": stats[str(port)]["requests"], "worker_processes": len(pids), "load_1m_at_start": load}


async def run_hookpost(bench: Bench, n: int) -> dict[str, Any]:
    """Drain ``n`` changes to one webhook with one Hookpost dispatcher (``Bench.run_throughput(n, k=1)``)."""
    load = os.getloadavg()[0]
    r = await bench.run_throughput(n, k=1)
    keep = ("changes", "deliveries", "seconds", "deliveries_per_s", "publish_s", "cpu", "store_ops_per_delivery",
            "attempts", "deferred", "broker_disturbed")
    return {"system": "hookpost", **{k: r[k] for k in keep}, "load_1m_at_start": load}


async def run_once_more_if_disturbed(bench: Bench, system: str, n: int, opts: Options, url: str) -> dict[str, Any]:
    """One run of ``system``, once more if it failed or its dispatcher lost the broker
    (:func:`~bench.scenarios.once_more_if_disturbed`)."""
    async def measure() -> dict[str, Any]:
        if system == "hookpost":
            return await run_hookpost(bench, n)
        return await run_alternative(bench, system, n, opts, url)
    return await once_more_if_disturbed(bench, measure, lambda m: log(f"  {m}"))


def payload_sizes() -> dict[str, int]:
    """The body bytes of one change's request from Hookpost and from the baselines (the same change)."""
    change = changes("c0ffee00", 1, start=1234)[0]
    hookpost = encode_body(build_payload("evt_" + "0" * 26, change))
    alt = job.build_payload(job.event_id("wh_c0ffee00", change.id), change.model_dump(mode="json"))
    return {"hookpost": len(hookpost), "alternatives": len(json.dumps(alt, separators=(",", ":")).encode())}


# ---- summary and report ---------------------------------------------------------------------------------------


def worker_ms(run: dict[str, Any]) -> float:
    """CPU milliseconds per delivery of the system's own worker processes."""
    return sum(v for k, v in run["cpu"]["per_1000"].items() if k.startswith(WORKER_PROCS))


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Medians per system, the ratio Hookpost / faster alternative, and the verdict."""
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        runs = [r for r in res["runs"] if r["system"] == system]
        if not runs:
            continue
        med = statistics.median

        def per(name: str, rs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r["cpu"]["per_1000"].get(name, 0.0) for r in rs)

        out[system] = {"runs": len(runs), "deliveries_per_s": med(r["deliveries_per_s"] for r in runs),
                       "min": min(r["deliveries_per_s"] for r in runs),
                       "max": max(r["deliveries_per_s"] for r in runs),
                       "workers_ms": med(worker_ms(r) for r in runs), "store_ms": per("store"),
                       "broker_ms": per("broker"), "receivers_ms": per("receivers"),
                       "publisher_ms": per("bench (publisher)"),
                       "others_share": med(r["cpu"]["share"]["others"] for r in runs)}
        m = out[system]
        m["total_ms"] = sum(m[k] for k in ("workers_ms", "store_ms", "broker_ms", "receivers_ms", "publisher_ms"))
        m["cpu_bound_per_s"] = (res.get("cores") or 1) * 1000 / m["total_ms"]  # every core busy with this alone
    alts = [s for s in ("dramatiq", "celery") if s in out]
    if "hookpost" in out and alts:
        faster = max(alts, key=lambda s: out[s]["deliveries_per_s"])
        ratio = out["hookpost"]["deliveries_per_s"] / out[faster]["deliveries_per_s"]
        pairs = []
        for i in range(res["repeats"]):
            rep = {r["system"]: r["deliveries_per_s"] for r in res["runs"] if r.get("repeat") == i}
            if "hookpost" in rep and any(s in rep for s in alts):
                pairs.append(rep["hookpost"] / max(rep[s] for s in alts if s in rep))
        out["verdict"] = {"faster_alternative": faster, "ratio": ratio, "per_repeat": pairs, "target": TARGET,
                          "met": ratio >= TARGET}
    return out


def render(res: dict[str, Any]) -> str:
    """The docs section."""
    s = summary(res)
    opts = Options(**res["options"])
    load = res["load"]
    lines = [
        "## Hookpost against a Dramatiq actor and a Celery task (`python -m bench.alternatives`)", "",
        f"{res['when']}; {res['cores']} shared cores; **load average (1, 5, 15 min) "
        f"{' '.join(f'{v:.2f}' for v in load['start'])} at the start and "
        f"{' '.join(f'{v:.2f}' for v in load['end'])} at the end**. Each of {res['repeats']} repeat(s) drains a "
        f"backlog of {res['changes']:,} changes to one webhook with each system in turn (the order rotates), on "
        "the same RabbitMQ, the same local store (`nx-27017`, a database per run) and the same fast aiohttp "
        "receiver. The baselines are the same job written the usual way (`bench/alt/job.py`): per change, insert "
        "the event (New) with pymongo, POST the signed JSON body (Standard Webhooks HMAC-SHA256) with a "
        "`requests` session per thread, insert the attempt, update the event to Finished (or Retrying, and the "
        "library retries with exponential backoff, 10 attempts in all). Request body: "
        f"{res['payload_bytes']['hookpost']} bytes from Hookpost, {res['payload_bytes']['alternatives']} from "
        "the baselines.", "",
        "Deliveries/s run from the first publish to the last first receipt; CPU is milliseconds per delivery "
        "(user + system, psutil) of the system's worker processes (the dispatcher; every process of the "
        "Dramatiq or Celery worker), the store, the broker, the receiver and the publishing benchmark process; "
        "*others* is the rest of the machine's busy CPU (other users of this shared machine) as a share of both "
        "cores. The workers run with each CLI's defaults, as a team gets them (on this machine: Dramatiq one "
        "process per core with 8 threads each, Celery's prefork pool with one child per core); "
        "`--dramatiq-processes 1 --dramatiq-threads 8` (one process, as Hookpost runs) or `--celery-pool threads "
        "--celery-concurrency 8` measure other settings, and the table says which ran.", "",
        "| system | workers | deliveries/s (median, min–max) | CPU ms/delivery: workers | store | broker | "
        "receiver | publisher | others |",
        "|---|---|---|---|---|---|---|---|---|"]
    for system in SYSTEMS:
        if system not in s:
            continue
        m = s[system]
        lines.append(f"| {LABELS[system]} | {opts.describe(system)} | **{m['deliveries_per_s']:.0f}** "
                     f"({m['min']:.0f}–{m['max']:.0f}, {m['runs']} runs) | {m['workers_ms']:.2f} | "
                     f"{m['store_ms']:.2f} | {m['broker_ms']:.2f} | {m['receivers_ms']:.2f} | "
                     f"{m['publisher_ms']:.2f} | {m['others_share']:.0%} |")
    lines += ["", "Every run:", "", "| repeat | system | deliveries/s | workers CPU ms/delivery | store | "
              "load (1 min) at its start |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['repeat'] + 1} | {LABELS[r['system']]} | {r['deliveries_per_s']:.0f} | "
                     f"{worker_ms(r):.2f} | {r['cpu']['per_1000'].get('store', 0.0):.2f} | "
                     f"{r['load_1m_at_start']:.2f} |")
    v = s.get("verdict")
    if v:
        per = ", ".join(f"{p:.2f}×" for p in v["per_repeat"])
        lines += ["", f"**Hookpost / the faster alternative ({LABELS[v['faster_alternative']]}): "
                  f"{v['ratio']:.2f}×** (medians; per repeat {per}) — target ≥ {v['target']:.0f}×: "
                  f"{'**met**' if v['met'] else '**not met**'}."]
        bounds = ", ".join(f"{LABELS[k]} {s[k]['total_ms']:.2f} ms → at most {s[k]['cpu_bound_per_s']:.0f}/s"
                           for k in SYSTEMS if k in s)
        fa = v["faster_alternative"]
        goal = v["target"] * s[fa]["deliveries_per_s"]
        need = (res.get("cores") or 1) * 1000 / goal
        lines += ["", "What bounds the ratio on this machine: every process of a run (workers, store, broker, "
                  f"receiver, publisher) shares the {res['cores']} cores, so their CPU per delivery added up bounds "
                  f"the rate even with the machine to themselves: {bounds}. {v['target']:.0f}× the "
                  f"{LABELS[fa]} median is {goal:,.0f}/s, which would need all of Hookpost's processes together to "
                  f"use at most {need:.2f} ms per delivery; they use {s['hookpost']['total_ms']:.2f} ms (the store "
                  f"alone {s['hookpost']['store_ms']:.2f} ms). Even on a quiet machine Hookpost cannot pass "
                  f"{s['hookpost']['cpu_bound_per_s']:.0f}/s, so {v['target']:.0f}× holds only if {LABELS[fa]} "
                  f"drains at most {s['hookpost']['cpu_bound_per_s'] / v['target']:.0f}/s; it drained "
                  f"{s[fa]['min']:.0f}–{s[fa]['max']:.0f}/s here."]
        rest = s["hookpost"]["total_ms"] - s["hookpost"]["workers_ms"]
        lines += ["", f"Without the dispatcher: the store, the broker, the receiver and the publisher alone use "
                  f"{rest:.2f} ms per Hookpost delivery, which bounds the rate at "
                  f"{res['cores'] * 1000 / rest:,.0f}/s even if the dispatcher cost nothing — "
                  f"{'above' if rest < need else 'below'} the {goal:,.0f}/s that {v['target']:.0f}× asks."]
    lines += ["", "What differs besides the code: Hookpost's queues are quorum queues (its default; replicated, "
              "slower per message on one node than the classic queues both libraries declare by default); Hookpost "
              "matches each change against its webhooks, while the baselines' tasks are given the webhook's id; "
              "Hookpost writes ten indexes per event and two per attempt, the baselines two and one; "
              "Hookpost's publisher waits for broker confirms, the baselines' producers do not. Each of these "
              "favours the baselines."]
    others = max(m["others_share"] for k, m in s.items() if k in LABELS)
    if others > 0.1:
        lines += ["", f"Other work shared the machine (up to {others:.0%} of its CPU outside the benchmark's "
                  "processes): the figures are lower than on a quiet machine, and the ratio noisier."]
    elif max(load["start"][0], load["end"][0]) > 3:
        lines += ["", "The load averages above come from the benchmark's own processes (the baselines' worker "
                  f"processes among them); other work used at most {others:.0%} of the machine."]
    return "\n".join(lines)


# ---- entry point ------------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the repeats; return the result."""
    opts = Options(args.dramatiq_processes, args.dramatiq_threads, args.celery_pool, args.celery_concurrency)
    systems = [s for s in SYSTEMS if s in args.only] if args.only else list(SYSTEMS)
    work = Path(tempfile.mkdtemp(prefix="hookpost-alternatives-"))
    mongo = LocalMongo(work / "mongo")
    receivers = Receivers(1, 0, work / "receivers.log")
    load_start = list(os.getloadavg())
    log(f"load average at the start: {' '.join(f'{v:.2f}' for v in load_start)}")
    mongo.start()
    receivers.start()
    runs: list[dict[str, Any]] = []
    try:
        await receivers.wait_ready()
        bench = Bench(work, mongo, receivers, args.rabbitmq_url, broker_pid())
        for i in range(args.repeats):
            order = systems[i % len(systems):] + systems[:i % len(systems)]
            for system in order:
                log(f"repeat {i + 1}/{args.repeats}: {LABELS[system]}, {args.changes:,} changes")
                r = await run_once_more_if_disturbed(bench, system, args.changes, opts, args.rabbitmq_url)
                r["repeat"] = i
                runs.append(r)
                log(f"  {r['deliveries_per_s']:.0f} deliveries/s, workers {worker_ms(r):.2f} ms CPU per delivery, "
                    f"store {r['cpu']['per_1000'].get('store', 0.0):.2f} ms, load {os.getloadavg()[0]:.2f}")
    finally:
        receivers.stop()
        mongo.stop()
    shutil.rmtree(work, ignore_errors=True)
    load_end = list(os.getloadavg())
    log(f"load average at the end: {' '.join(f'{v:.2f}' for v in load_end)}")
    return {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "changes": args.changes,
            "repeats": args.repeats, "cores": os.cpu_count(), "options": asdict(opts),
            "load": {"start": load_start, "end": load_end}, "payload_bytes": payload_sizes(), "runs": runs}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run (or re-render ``--report``), write the result file and the docs section."""
    parser = argparse.ArgumentParser(prog="python -m bench.alternatives", description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, help="measure only these systems (a smoke test)")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    parser.add_argument("--dramatiq-processes", type=int, help="default: the dramatiq CLI's (one per core)")
    parser.add_argument("--dramatiq-threads", type=int, help="default: the dramatiq CLI's (8)")
    parser.add_argument("--celery-pool", help="default: the celery CLI's (prefork)")
    parser.add_argument("--celery-concurrency", type=int, help="default: the celery CLI's (one per core)")
    parser.add_argument("--no-docs", action="store_true", help="write the result file only")
    parser.add_argument("--report", type=Path, help="measure nothing: put this result file into the docs page")
    args = parser.parse_args(argv)
    if args.report:
        res = json.loads(args.report.read_text())
    else:
        res = asyncio.run(main_async(args))
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"alternatives-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(res, indent=1, default=str))
        log(f"wrote {out.relative_to(REPO)}")
    print(render(res))
    if not args.no_docs:
        replace_section(DOCS, "alternatives", render(res))


if __name__ == "__main__":
    main()
