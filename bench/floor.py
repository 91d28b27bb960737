"""The stack's floor for one delivery: the library calls Hookpost's semantics ask of a dispatcher, and nothing else.

For each change: consume it (pika), insert its event (pymongo, status New), publish the delivery with a publisher
confirm (pika), ack the change; for each delivery: consume it, POST the body (aiohttp), update the event (pymongo,
status Finished), ack it. Quorum queues, persistent messages, one store round trip per write: what a delivery costs
when every batch holds one item (an ordinary rate). A second process publishes the changes at a steady rate, so
this process's CPU is the consumer's alone.

    python -m bench.floor [--repeats 2] [--rate 100] [--seconds 20] [--backlog 6000]

runs it beside Hookpost's dispatcher on the same job, alternating, once at the steady ``--rate`` to one webhook and
once on a backlog (the floor's changes published at 2,000/s, Hookpost's as a backlog of ``--backlog`` changes), and
writes ``bench/results/floor-<timestamp>.json`` and the section "stack-floor" of ``docs/benchmarks.md``. The
floor alone, against a store and a receiver of your own, prints one JSON line (deliveries, wall seconds, CPU
milliseconds per delivery)::

    python -m bench.floor run --mongo mongodb://127.0.0.1:27017 --hook http://127.0.0.1:8001/hook --rate 100
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pika
from pymongo import AsyncMongoClient

from bench.bare import _Bridge, sample_body
from bench.report import DOCS, RESULTS, replace_section, save_run

# The comparison's harness (the bench's processes, psutil) is imported where it runs: the floor itself needs only
# the project's own dependencies, so its test runs without the bench extra.

QUORUM = {"x-queue-type": "quorum"}
BACKLOG_RATE = 2000.0
STEADY_TARGET_MS = 1.5


def publish_changes(url: str, queue: str, rate: float, seconds: float) -> None:
    """Publish ``rate`` messages/s to ``queue`` for ``seconds`` (a blocking pika connection, confirms on)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    started = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ch.basic_publish("", queue, sample_body(i), props)
    conn.close()


async def floor(amqp_url: str, mongo_url: str, hook: str, rate: float, seconds: float) -> dict[str, Any]:
    """Run the pipeline's bare calls for ``rate`` changes/s over ``seconds``; return counts and CPU per delivery."""
    loop = asyncio.get_running_loop()
    b = _Bridge(loop)
    tag = uuid.uuid4().hex[:8]
    changes_q, deliveries_q = f"bench-floor-{tag}-changes", f"bench-floor-{tag}-deliveries"
    conn = await b.connect(amqp_url)
    consume_changes, publish, consume_deliveries = (await b.channel(conn), await b.channel(conn),
                                                    await b.channel(conn))
    for q in (changes_q, deliveries_q):
        await b.call(publish.queue_declare, queue=q, durable=True, arguments=QUORUM)
    confirms: dict[int, asyncio.Future[None]] = {}
    published = 0

    def on_confirm(frame: Any) -> None:
        tag_, multiple = frame.method.delivery_tag, frame.method.multiple
        for t in [t for t in confirms if t == tag_ or (multiple and t <= tag_)]:
            confirms.pop(t).set_result(None)

    await b.call(publish.confirm_delivery, ack_nack_callback=on_confirm)
    for ch in (consume_changes, consume_deliveries):
        await b.call(ch.basic_qos, prefetch_count=100)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    events = client[f"bench_floor_{tag}"]["events"]
    await events.insert_one({"_id": "warm-up"})
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    total = int(rate * seconds)
    done = 0
    finished: asyncio.Future[None] = loop.create_future()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    tasks: set[asyncio.Task[None]] = set()

    async def on_change(method: Any, body: bytes) -> None:
        nonlocal published
        event_id = f"evt-{method.delivery_tag}"
        await events.insert_one({"_id": event_id, "status": "New", "attempt_count": 0, "body": body})
        published += 1
        confirmed = confirms[published] = loop.create_future()
        publish.basic_publish("", deliveries_q, event_id.encode() + b" " + body, props)
        await confirmed
        consume_changes.basic_ack(method.delivery_tag)

    async def on_delivery(method: Any, body: bytes) -> None:
        nonlocal done
        event_id, payload = body.split(b" ", 1)
        async with session.post(hook, data=payload, headers={"content-type": "application/json"}) as resp:
            await resp.read()
        await events.update_one({"_id": event_id.decode()},
                                {"$set": {"status": "Finished", "last_status_code": resp.status},
                                 "$inc": {"attempt_count": 1}})
        consume_deliveries.basic_ack(method.delivery_tag)
        done += 1
        if done >= total and not finished.done():
            finished.set_result(None)

    def spawn(handler: Any) -> Any:
        def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
            task = loop.create_task(handler(method, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return on_message

    consume_changes.basic_consume(changes_q, spawn(on_change))
    consume_deliveries.basic_consume(deliveries_q, spawn(on_delivery))
    publisher = multiprocessing.get_context("spawn").Process(
        target=publish_changes, args=(amqp_url, changes_q, rate, seconds))
    try:
        t0, cpu0 = time.perf_counter(), os.times()
        publisher.start()
        await asyncio.wait_for(finished, seconds + 120)
        wall, cpu1 = time.perf_counter() - t0, os.times()
        publisher.join()
        counted = await (await events.aggregate([{"$match": {"status": "Finished"}}, {"$count": "n"}])).to_list()
    finally:
        if publisher.is_alive():
            publisher.kill()
        await session.close()
        await client.drop_database(f"bench_floor_{tag}")
        await client.close()
        for q in (changes_q, deliveries_q):
            await b.call(publish.queue_delete, queue=q)
        conn.close()
        await asyncio.sleep(0.1)
    return {"deliveries": done, "finished_in_store": counted[0]["n"] if counted else 0, "seconds": round(wall, 2),
            "user_ms": round((cpu1.user - cpu0.user) * 1000 / done, 3),
            "system_ms": round((cpu1.system - cpu0.system) * 1000 / done, 3),
            "cpu_ms_per_delivery": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1000 / done, 3)}


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[floor {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def python_speed() -> float:
    """Seconds this machine takes for a 10-million-step Python loop (figures from machines that differ here do not
    compare)."""
    started = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return round(time.perf_counter() - started, 2)


def run_floor(mongo_url: str, hook: str, rate: float, seconds: float) -> dict[str, Any]:
    """Run the floor in a process of its own (so nothing of the bench is counted) and return its result."""
    from bench.procs import base_env
    from bench.run import RABBIT_URL

    out = subprocess.run([sys.executable, "-m", "bench.floor", "run", "--amqp", RABBIT_URL, "--mongo", mongo_url,
                          "--hook", hook, "--rate", str(rate), "--seconds", str(seconds)],
                         capture_output=True, text=True, env=base_env(), timeout=seconds + 300)
    if out.returncode != 0:
        raise RuntimeError(f"bench.floor run failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def compare(args: argparse.Namespace) -> None:
    """Alternate Hookpost and the floor on the same store, broker and receiver; write the results."""
    from bench.procs import Receivers, broker_pid
    from bench.run import RABBIT_URL
    from bench.scenarios import Bench
    from hookpost.store.localserver import LocalMongo

    workdir = Path(tempfile.mkdtemp(prefix="hookpost-floor-"))
    mongo = LocalMongo(workdir / "mongo")
    receivers = Receivers(ok=1, hang=0, log_path=workdir / "receivers.log")
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    loop_seconds = python_speed()
    mongo.start()
    receivers.start()
    rows: list[dict[str, Any]] = []
    try:
        await receivers.wait_ready()
        bench = Bench(workdir, mongo, receivers, RABBIT_URL, broker_pid())
        hook = receivers.url(receivers.ok_ports[0])
        for i in range(args.repeats):
            log(f"run {i + 1}/{args.repeats}: steady {args.rate:g}/s for {args.seconds:g} s")
            steady = await bench.run_latency(args.rate, args.seconds, k=1)
            bare = run_floor(mongo.url, hook, args.rate, args.seconds)
            rows.append({"load": f"steady {args.rate:g}/s", "hookpost_ms": steady["cpu"]["per_1000"]["dispatcher"],
                         "floor_ms": bare["cpu_ms_per_delivery"], "floor": bare})
            log(f"  Hookpost {rows[-1]['hookpost_ms']:.2f} ms, floor {rows[-1]['floor_ms']:.2f} ms per delivery")
            log(f"run {i + 1}/{args.repeats}: a backlog of {args.backlog:,}")
            full = await bench.run_throughput(args.backlog, k=1)
            bare = run_floor(mongo.url, hook, BACKLOG_RATE, args.backlog / BACKLOG_RATE)
            rows.append({"load": "backlog", "hookpost_ms": full["cpu"]["per_1000"]["dispatcher"],
                         "hookpost_per_s": full["deliveries_per_s"], "floor_ms": bare["cpu_ms_per_delivery"],
                         "floor_per_s": bare["deliveries"] / bare["seconds"], "floor": bare})
            log(f"  Hookpost {rows[-1]['hookpost_ms']:.2f} ms, floor {rows[-1]['floor_ms']:.2f} ms per delivery")
    finally:
        receivers.stop()
        mongo.stop()
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    res = {"rows": rows, "when": now.strftime("%Y-%m-%d %H:%M UTC"), "loop_s": loop_seconds, "rate": args.rate,
           "seconds": args.seconds, "backlog": args.backlog,
           "load_start": load_start, "load_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    out = save_run("floor", stamp, res, "stack-floor", render(res))
    shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote bench/results/{out.relative_to(RESULTS)} and the section stack-floor of docs/benchmarks.md")


def render(res: dict[str, Any]) -> str:
    """The docs section."""
    lines = []
    for load in dict.fromkeys(r["load"] for r in res["rows"]):
        runs = [r for r in res["rows"] if r["load"] == load]
        hp, fl = (statistics.median(r[k] for r in runs) for k in ("hookpost_ms", "floor_ms"))
        each = ", ".join(f"{r['hookpost_ms']:.2f} / {r['floor_ms']:.2f}" for r in runs)
        rate = ""
        if load == "backlog":
            rate = (f" | {statistics.median(r['hookpost_per_s'] for r in runs):.0f} / "
                    f"{statistics.median(r['floor_per_s'] for r in runs):.0f}")
        lines.append(f"| {load} | {each} | {hp:.2f} / {fl:.2f} | {hp / fl:.2f}×{rate or ' | –'} |")
    return "\n".join([
        "## The stack's floor: what the libraries alone spend on one delivery (`python -m bench.floor`)", "",
        f"{res['when']}; 2 shared cores (load average {res['load_start']} at the start, {res['load_end']} at the "
        f"end; a 10-million-step Python loop took {res['loop_s']} s). The floor is `bench/floor.py run`: "
        "for each change, consume it (pika), insert its event (pymongo), "
        "publish the delivery with a publisher confirm and ack the change; for each delivery, consume it, POST it "
        "(aiohttp), update the event and ack it. Quorum queues, persistent messages, one store round trip per "
        "write, no Hookpost code. Both ran alternately against the same local store, broker and fast aiohttp "
        f"receiver, one webhook: at a steady {res['rate']:g} changes/s for {res['seconds']:g} s, and on a backlog "
        f"({res['backlog']:,} changes for Hookpost; the floor's published at {BACKLOG_RATE:,.0f}/s, faster than it "
        "drains). CPU milliseconds per delivery of the consuming process (user + system).", "",
        "| load | each run: Hookpost / floor ms | median Hookpost / floor ms | Hookpost ÷ floor | "
        "deliveries/s Hookpost / floor |", "|---|---|---|---|---|", *lines, "",
        "Hookpost's dispatcher does more than the floor per delivery (the webhook lookup, the endpoint's gate, "
        "signing, metrics, the attempt history) and, under load, less per delivery than the floor, because its "
        "store writes and acks are batched. At an ordinary rate, every batch holds one item and the floor is what "
        "pika, pymongo and aiohttp cost for one delivery's two messages, two round trips and one request.", "",
        *verdict(res),
    ])


def verdict(res: dict[str, Any]) -> list[str]:
    """The steady rows against the target of :data:`STEADY_TARGET_MS` of dispatcher CPU per delivery."""
    steady = [r for r in res["rows"] if r["load"] != "backlog"]
    if not steady:
        return []
    hp, fl = (statistics.median(r[k] for r in steady) for k in ("hookpost_ms", "floor_ms"))
    return [f"Target: at most {STEADY_TARGET_MS} ms of dispatcher CPU per delivery at {res['rate']:g}/s — "
            f"{'met' if hp <= STEADY_TARGET_MS else '**not met**'} ({hp:.2f} ms). The floor alone uses {fl:.2f} ms, "
            f"{fl / STEADY_TARGET_MS:.1f}× the target: at this rate the bare calls of pika, pymongo and aiohttp for "
            "one delivery's work cost more than the target on this machine, before any code of Hookpost's."]


def main() -> None:
    """Parse the command line: run the comparison (default) or the floor alone (``run``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    one = sub.add_parser("run", help="the floor alone, against a store and a receiver of your own")
    one.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    one.add_argument("--mongo", required=True)
    one.add_argument("--hook", required=True, help="a fast receiver's URL")
    one.add_argument("--rate", type=float, default=100.0)
    one.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=6000)
    parser.add_argument("--report", type=Path, help="measure nothing: write the section from this result file")
    args = parser.parse_args()
    if args.report:
        replace_section(DOCS, "stack-floor", render(json.loads(args.report.read_text())))
    elif args.cmd == "run":
        print(json.dumps(asyncio.run(floor(args.amqp, args.mongo, args.hook, args.rate, args.seconds))))
    else:
        asyncio.run(compare(args))


if __name__ == "__main__":
    main()
