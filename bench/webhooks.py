"""Fan-out with many webhooks: ``python -m bench.webhooks [--webhooks 100000] [--changes 5000] [--repeats 3]``.

Alternates runs with one webhook and with ``--webhooks`` webhooks (each subscribed to its own type, half exact,
half a pattern; every change wanted by exactly one), and compares the dispatcher's CPU per delivery; checks that
every change reached exactly its webhook. Needs the broker (``make broker``). Writes
``bench/results/webhooks-<timestamp>.json`` and the section "webhooks" of ``docs/benchmarks.md``.
"""

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import REPO, Receivers, broker_pid
from bench.report import save_run
from bench.run import RABBIT_URL
from bench.scenarios import Bench
from hookpost.store.localserver import LocalMongo

MAX_RATIO = 1.2


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[webhooks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def render(res: dict[str, Any]) -> str:
    """The docs section."""
    one, many = res["one"], res["many"]
    m1 = statistics.median(r["cpu_ms_per_delivery"] for r in one)
    mw = statistics.median(r["cpu_ms_per_delivery"] for r in many)
    ratio = mw / m1
    routed = all(r["misrouted_or_missing"] == 0 for r in many + one)
    rows = []
    for label, runs in (("1 webhook", one), (f"{res['webhooks']:,} webhooks", many)):
        for r in runs:
            rows.append(f"| {label} | {r['cpu_ms_per_delivery']:.3f} | {r['per_s']:.0f} | "
                        f"{r['dispatcher_ready_s']:.1f} | {r['first_change_cpu_s']:.2f} | {r['dispatcher_rss_mb']:.0f} "
                        f"| {r['events']:,} | {r['misrouted_or_missing']} |")
    return "\n".join([
        f"## Fan-out with {res['webhooks']:,} webhooks (`python -m bench.webhooks`)", "",
        f"{res['when']}; 2 shared cores (load average {res['load_start']} at the start, {res['load_end']} at the "
        f"end). {res['changes']:,} changes per run, each wanted by exactly one webhook (webhook i subscribes to "
        f"`t{{i}}.updated` or, for odd i, the pattern `t{{i}}.*`; changes spread over all of them; every webhook "
        "posts to the same receiver endpoint, as the one webhook does); runs with one webhook and with many "
        "alternate. Dispatcher CPU per delivery from its /proc times over the run, after a "
        "first change that loads every webhook into the cache (its CPU in its own column: a one-off at start-up, "
        "and again at each full reload, every 10 minutes).", "",
        "| webhooks | dispatcher CPU ms per delivery | deliveries/s | first delivery after start, s | "
        "first change CPU s | dispatcher RSS MB | events | misrouted or missing |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"Median CPU per delivery: {m1:.3f} ms with one webhook, {mw:.3f} ms with {res['webhooks']:,}: ratio "
        f"{ratio:.2f} — target ≤ {MAX_RATIO}: {'met' if ratio <= MAX_RATIO else '**not met**'}. Every change "
        f"reached exactly its webhook: {'yes' if routed else '**no**'}.",
    ])


async def main_async(args: argparse.Namespace) -> None:
    """Run the comparison and write the results."""
    workdir = Path(tempfile.mkdtemp(prefix="hookpost-webhooks-"))
    mongo = LocalMongo(workdir / "mongo")
    receivers = Receivers(ok=2, hang=0, log_path=workdir / "receivers.log")
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    mongo.start()
    receivers.start()
    one: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    try:
        await receivers.wait_ready()
        bench = Bench(workdir, mongo, receivers, RABBIT_URL, broker_pid())
        for i in range(args.repeats):
            log(f"run {i + 1}/{args.repeats}: 1 webhook")
            one.append(await bench.run_many_webhooks(args.changes, 1))
            log(f"  {one[-1]['cpu_ms_per_delivery']:.3f} ms CPU per delivery")
            log(f"run {i + 1}/{args.repeats}: {args.webhooks:,} webhooks")
            many.append(await bench.run_many_webhooks(args.changes, args.webhooks))
            last = many[-1]
            log(f"  {last['cpu_ms_per_delivery']:.3f} ms CPU per delivery, first change CPU "
                f"{last['first_change_cpu_s']:.1f}s, {last['misrouted_or_missing']} misrouted or missing")
    finally:
        receivers.stop()
        mongo.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res = {"webhooks": args.webhooks, "changes": args.changes, "one": one, "many": many, "when": stamp,
           "load_start": load_start, "load_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    out = save_run("webhooks", stamp, res, "webhooks", render(res))
    shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {out.relative_to(REPO)} and the section webhooks of docs/benchmarks.md")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--webhooks", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
