"""The janitor's pacing: ``python -m bench.janitor_pace [--events 100000] [--repeats 3] [--duty 0.3 1.0]``.

Seeds ``--events`` expired events with up to 3 attempts each (no more than an event's attempt count), then runs
``hookpost janitor --once`` while a dispatcher delivers a trickle (40 deliveries/s) against the same store, once
per ``--duty`` value per repeat (``HOOKPOST_JANITOR_DUTY``; 1.0 = no pauses). Reports the latency of deliveries
published during the pass (p50, p99, max) and the janitor's own rate and store duty. Needs the broker. Writes
``bench/results/janitor-pace-<timestamp>.json`` and the section "janitor-pace" of ``docs/benchmarks.md``.
"""

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import REPO, Receivers, broker_pid
from bench.report import replace_section
from bench.run import RABBIT_URL
from bench.scenarios import Bench
from hookpost.store.localserver import LocalMongo

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
P99_MAX_MS = 100.0


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[janitor-pace {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _med(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    vals = [(r[key][sub] if sub else r[key]) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def render(res: dict[str, Any]) -> str:
    """The docs section."""
    rows = []
    for duty, runs in res["runs"].items():
        for r in runs:
            rep = r["report"]
            rows.append(f"| {duty} | {rep['total']:,} | {r['janitor_s']:.1f} | {rep.get('events_per_s', 0):.0f} | "
                        f"{rep.get('store_duty', 0):.2f} | {rep.get('batches', 0)} | "
                        f"{r['p50_latency_during_ms'] or 0:.0f} | {r['p99_latency_during_ms'] or 0:.0f} | "
                        f"{r['max_latency_during_ms'] or 0:.0f} | {r['p99_latency_before_ms'] or 0:.0f} | "
                        f"{r['deliveries_during']} of ~{r['expected_during']:.0f} |")
    verdicts = []
    for duty, runs in res["runs"].items():
        p99 = _med(runs, "p99_latency_during_ms")
        verdicts.append(f"duty {duty}: median p99 {p99:.0f} ms — "
                        f"{'met' if p99 is not None and p99 < P99_MAX_MS else '**not met**'}")
    return "\n".join([
        f"## Janitor pacing (`python -m bench.janitor_pace --events {res['events']}`)", "",
        f"{res['when']}; 2 shared cores (load average {res['load_start']} at the start, {res['load_end']} at the "
        f"end). {res['events']:,} expired events with up to 3 attempt records each, deleted by "
        "`hookpost janitor --once` while a "
        "dispatcher delivers 40 deliveries/s against the same store; latency of the deliveries published during "
        "the pass (receiver time minus publish time). Duty is `HOOKPOST_JANITOR_DUTY` (1.0: no pauses).", "",
        "| duty | events deleted | pass s | events/s | measured store duty | batches | p50 ms | p99 ms | max ms | "
        "p99 before the pass ms | deliveries during |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Target: p99 < {P99_MAX_MS:.0f} ms during the pass. " + "; ".join(verdicts) + ".",
    ])


async def main_async(args: argparse.Namespace) -> None:
    """Run the passes and write the results."""
    workdir = Path(tempfile.mkdtemp(prefix="hookpost-janitor-pace-"))
    mongo = LocalMongo(workdir / "mongo")
    receivers = Receivers(ok=2, hang=0, log_path=workdir / "receivers.log")
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    mongo.start()
    receivers.start()
    runs: dict[str, list[dict[str, Any]]] = {str(d): [] for d in args.duty}
    try:
        await receivers.wait_ready()
        bench = Bench(workdir, mongo, receivers, RABBIT_URL, broker_pid())
        for i in range(args.repeats):
            for duty in args.duty:
                log(f"run {i + 1}/{args.repeats}, duty {duty}: {args.events:,} events x up to 3 attempts")
                r = await bench.run_janitor(args.events, 3, 20.0, warmup=3.0, janitor_duty=str(duty))
                runs[str(duty)].append(r)
                log(f"  {r['janitor_s']:.1f}s, {r['report'].get('events_per_s')} events/s, p99 "
                    f"{r['p99_latency_during_ms'] or 0:.0f} ms, max {r['max_latency_during_ms'] or 0:.0f} ms")
    finally:
        receivers.stop()
        mongo.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res = {"events": args.events, "runs": runs, "when": stamp, "load_start": load_start,
           "load_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"janitor-pace-{stamp}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    section = "janitor-pace" if args.events == 100_000 else f"janitor-pace-{args.events}"  # each size its own
    replace_section(DOCS, section, render(res))
    shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {out.relative_to(REPO)} and the section {section} of docs/benchmarks.md")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.janitor_pace", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duty", type=float, nargs="+", default=[0.3, 1.0])
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
