"""First attempts made by fan-out (HOOKPOST_FIRST_ATTEMPT=inline) against through the deliver queue, alternated.

``inline``: fan-out makes each new event's first attempt itself; ``queue``: it publishes it to ``PREFIX.deliver``.
``python -m bench.first_attempt [--pairs 5] [--changes 10000] [--seconds 20] [--quick] [--no-save]``.

Each pair measures both modes on each scenario, one right after the other; the order within a pair alternates
(queue→inline, then inline→queue, …: ABBA), so neither mode always goes first. The scenarios, all to one webhook on
the fast aiohttp receiver (:mod:`bench.receiver`), the same RabbitMQ and the same local store (``nx-27017``, a
database per run):

- **backlog**: the :mod:`bench.alternatives` Hookpost job, ``Bench.run_throughput(changes, k=1)``: deliveries/s, CPU
  milliseconds per delivery of every process (dispatcher, store, broker, receiver, publishing benchmark process) and
  their sum, the rate that sum allows with every core busy (``cores * 1000 / total_ms``) and the share of that bound
  the run reached;
- **steady 100/s** and **steady 400/s**: ``Bench.run_latency(rate, seconds, k=1)``: publish→receipt p50 and p99 (ms)
  and the CPU per delivery of every process.

For each figure: per mode the median and the spread (min–max) over the pairs, the per-pair difference inline − queue
(median and spread) and the median of the per-pair ratios inline / queue as the relative change; then a verdict
line per target of the issue (all-process CPU per delivery at least 15% less with inline; p50 lower and p99 not
higher at 100/s and 400/s; inline drains a backlog at ≥ 90% of its CPU bound). A run whose dispatcher lost the broker
connection (another suite restarting the shared RabbitMQ), or that failed, is run once more. Each run also records
how its first attempts went (the dispatcher's ``hookpost_first_attempts_total`` by ``path``), so a run whose
dispatcher did not make them its mode's way shows in the page.

Results go to ``bench/results/first_attempt/<timestamp>.json`` and the section ``first-attempt-inline`` of
``docs/benchmarks.md`` (``--no-save``: neither; the table is printed either way). ``--report FILE`` re-renders a
result file into the page. ``--quick`` (1,000 changes, 8 s steady, one pair) is a smoke test, never for quoting.
"""

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

from bench.procs import REPO, Receivers, broker_pid
from bench.report import replace_section
from bench.scenarios import Bench, once_more_if_disturbed, summarize
from hookpost.common.errors import ConfigError
from hookpost.common.settings import Settings, load_settings
from hookpost.store.localserver import LocalMongo

RESULTS = REPO / "bench" / "results" / "first_attempt"
DOCS = REPO / "docs" / "benchmarks.md"
# "first-attempt" is taken: it holds the earlier, hand-written A/B of the first attempt stored in the event's document
SECTION = "first-attempt-inline"
DEFAULT_RABBITMQ_URL = os.environ.get("HOOKPOST_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MODES = ("queue", "inline")
RATES = (100.0, 400.0)
# the processes whose CPU per delivery adds up to "all processes" (as bench.alternatives' total for Hookpost)
PROCS = {"dispatcher": "dispatcher", "store": "store", "broker": "broker", "receivers": "receiver",
         "bench (publisher)": "publisher"}
CPU_TARGET = 0.85  # inline / queue, all-process CPU per delivery: at least 15% less
BOUND_TARGET = 0.90  # inline's backlog rate as a share of its CPU bound
QUICK = {"changes": 1000, "seconds": 8.0, "pairs": 1}


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[first_attempt {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pair_order(pair: int) -> tuple[str, str]:
    """The two modes in the order pair ``pair`` (from 0) runs them: queue first in even pairs, inline in odd."""
    return MODES if pair % 2 == 0 else (MODES[1], MODES[0])


def scenario_names() -> list[str]:
    """The scenarios of one pair, in the order they run."""
    return ["backlog", *(f"steady-{rate:.0f}" for rate in RATES)]


def check_setting() -> str:
    """Make sure this checkout's dispatcher knows ``first_attempt`` (else both modes would run the same code and
    the comparison would show nothing); return its default."""
    field = Settings.model_fields.get("first_attempt")
    if field is None:
        raise SystemExit("this checkout has no setting first_attempt (HOOKPOST_FIRST_ATTEMPT): nothing to compare")
    for mode in MODES:
        try:
            if getattr(load_settings(first_attempt=mode), "first_attempt", None) != mode:
                raise SystemExit(f"first_attempt={mode!r} does not read back as {mode!r}")
        except ConfigError as exc:
            raise SystemExit(f"first_attempt={mode!r} is refused by this checkout: {exc}") from None
    return str(field.default)


def git_commit() -> str:
    """The checkout's short commit id, with ``+changes`` when tracked files outside bench/ and docs/ differ."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=REPO).stdout.splitlines()
    changed = [line[3:] for line in dirty if line[3:].split("/")[0] not in ("bench", "docs")]
    return head + ("+changes" if changed else "")


def broker_for(url: str) -> int | None:
    """The pid of the RabbitMQ node (``beam.smp``) listening on ``url``'s port: the test suites start private
    cluster nodes beside the machine's broker, and the first ``beam.smp`` found may be one of theirs. Falls back to
    :func:`bench.procs.broker_pid`."""
    port = urlparse(url).port or 5672
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "beam.smp":
            continue
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp")):
                return int(proc.pid)
        except psutil.Error:
            continue
    return broker_pid()


# ---- one run ---------------------------------------------------------------------------------------------------


def cpu_figures(run: dict[str, Any], cores: int) -> dict[str, float]:
    """CPU milliseconds per delivery of each process and their sum (``total_ms``) from a scenario's ``cpu``."""
    per = run["cpu"]["per_1000"]
    out = {f"{label}_ms": float(per.get(name, 0.0)) for name, label in PROCS.items()}
    out["total_ms"] = sum(out.values())
    out["others_share"] = float(run["cpu"]["share"].get("others", 0.0))
    out["cpu_bound_per_s"] = cores * 1000 / out["total_ms"] if out["total_ms"] else float("nan")
    return out


def first_attempt_paths(run: dict[str, Any]) -> dict[str, float]:
    """How the run's first attempts went (the dispatcher's ``hookpost_first_attempts_total`` by ``path``)."""
    counts = run.get("first_attempts") or {}
    return {mode: float(counts.get(f"path={mode}", 0.0)) for mode in MODES}


def path_note(run: dict[str, Any]) -> str:
    """Empty if no first attempt of the run went the other mode's way; else what happened (the dispatcher ignored
    or overrode the setting, or a bound sent some through the queue). The inline count is taken once an attempt's
    outcome is recorded, so at the end of a steady run it may trail the receipts by a few: not a sign."""
    paths = run["paths"]
    other = next(m for m in MODES if m != run["mode"])
    if paths[other] or not paths[run["mode"]]:
        return f"first attempts: {paths['inline']:.0f} inline, {paths['queue']:.0f} queue"
    return ""


async def backlog_run(bench: Bench, n: int, mode: str, cores: int) -> dict[str, Any]:
    """Drain ``n`` changes to one webhook with ``first_attempt=mode``."""
    r = await bench.run_throughput(n, k=1, first_attempt=mode)
    out = {"deliveries": r["deliveries"], "seconds": r["seconds"], "deliveries_per_s": r["deliveries_per_s"],
           "store_ops_per_delivery": r["store_ops_per_delivery"], "deferred": r["deferred"],
           "broker_disturbed": r["broker_disturbed"], "cpu": r["cpu"], "first_attempts": r["first_attempts"],
           "paths": first_attempt_paths(r), **cpu_figures(r, cores)}
    out["bound_fraction"] = out["deliveries_per_s"] / out["cpu_bound_per_s"]
    return out


async def steady_run(bench: Bench, rate: float, seconds: float, mode: str, cores: int) -> dict[str, Any]:
    """Hold ``rate`` deliveries/s to one webhook for ``seconds`` with ``first_attempt=mode``."""
    r = await bench.run_latency(rate, seconds, k=1, first_attempt=mode)
    keep = ("deliveries", "seconds", "achieved_deliveries_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms",
            "broker_disturbed", "cpu", "first_attempts")
    return {**{k: r[k] for k in keep}, "paths": first_attempt_paths(r), **cpu_figures(r, cores)}


# ---- summary ----------------------------------------------------------------------------------------------------

# the figures summarized per scenario: (key, label, decimals)
FIGURES: dict[str, list[tuple[str, str, int]]] = {
    "backlog": [("deliveries_per_s", "deliveries/s", 0), ("total_ms", "CPU ms/delivery, all processes", 3),
                ("dispatcher_ms", "dispatcher", 3), ("store_ms", "store", 3), ("broker_ms", "broker", 3),
                ("receiver_ms", "receiver", 3), ("publisher_ms", "publisher", 3),
                ("cpu_bound_per_s", "CPU bound, deliveries/s", 0), ("bound_fraction", "share of the bound", 2)],
    "steady": [("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1), ("total_ms", "CPU ms/delivery, all processes", 3),
               ("dispatcher_ms", "dispatcher", 3), ("store_ms", "store", 3), ("broker_ms", "broker", 3),
               ("receiver_ms", "receiver", 3), ("publisher_ms", "publisher", 3)],
}


def figures_of(scenario: str) -> list[tuple[str, str, int]]:
    """The figures summarized for ``scenario``."""
    return FIGURES["backlog" if scenario == "backlog" else "steady"]


def paired(runs: Sequence[dict[str, Any]], scenario: str, key: str) -> list[tuple[float, float]]:
    """(queue, inline) values of ``key`` for ``scenario``, one tuple per pair that has both."""
    by_pair: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["scenario"] == scenario and r.get(key) is not None:
            by_pair.setdefault(r["pair"], {})[r["mode"]] = float(r[key])
    return [(p["queue"], p["inline"]) for _, p in sorted(by_pair.items()) if "queue" in p and "inline" in p]


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per scenario and figure: each mode's median and spread, the per-pair differences and ratios; the verdicts."""
    out: dict[str, Any] = {}
    for scenario in scenario_names():
        out[scenario] = {}
        for key, _, _ in figures_of(scenario):
            pairs = paired(res["runs"], scenario, key)
            if not pairs:
                continue
            out[scenario][key] = {
                "queue": summarize([q for q, _ in pairs]), "inline": summarize([i for _, i in pairs]),
                "diff": summarize([i - q for q, i in pairs]),
                "ratio": summarize([i / q for q, i in pairs if q]),
            }
    out["verdicts"] = verdicts(out)
    return out


def verdicts(s: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target of the issue (and per scenario where the target names several)."""
    out: list[dict[str, Any]] = []
    for scenario in scenario_names():
        cpu = s.get(scenario, {}).get("total_ms")
        if cpu and cpu["ratio"]:
            ratio = cpu["ratio"]["median"]
            out.append({"target": "cpu", "scenario": scenario, "value": ratio, "met": ratio <= CPU_TARGET,
                        "text": f"all-process CPU per delivery, {label(scenario)}: inline / queue "
                                f"{ratio:.3f} (median of the per-pair ratios; {ratio - 1:+.1%}, pairs "
                                f"{cpu['ratio']['min']:.3f}–{cpu['ratio']['max']:.3f}) — target ≤ {CPU_TARGET:.2f} "
                                "(at least 15% less)"})
    for scenario in scenario_names()[1:]:
        p50, p99 = s.get(scenario, {}).get("p50_ms"), s.get(scenario, {}).get("p99_ms")
        if p50 and p99:
            d50, d99 = p50["diff"]["median"], p99["diff"]["median"]
            out.append({"target": "latency", "scenario": scenario, "value": [d50, d99], "met": d50 < 0 and d99 <= 0,
                        "text": f"latency, {label(scenario)}: p50 {d50:+.1f} ms (pairs {p50['diff']['min']:+.1f} to "
                                f"{p50['diff']['max']:+.1f}), p99 {d99:+.1f} ms (pairs {p99['diff']['min']:+.1f} to "
                                f"{p99['diff']['max']:+.1f}), inline − queue, medians of the per-pair differences "
                                "— target: p50 lower, p99 not higher"})
    bound = s.get("backlog", {}).get("bound_fraction")
    if bound:
        frac = bound["inline"]["median"]
        out.append({"target": "bound", "scenario": "backlog", "value": frac, "met": frac >= BOUND_TARGET,
                    "text": f"inline drains the backlog at {frac:.0%} of its CPU bound (median; runs "
                            f"{bound['inline']['min']:.0%}–{bound['inline']['max']:.0%}; queue "
                            f"{bound['queue']['median']:.0%}) — target ≥ {BOUND_TARGET:.0%}"})
    return out


def label(scenario: str) -> str:
    """A scenario's name in the page."""
    return "backlog" if scenario == "backlog" else f"steady {scenario.split('-')[1]}/s"


# ---- the page ---------------------------------------------------------------------------------------------------


def _num(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _signed(value: float, decimals: int) -> str:
    return f"{round(value, decimals) + 0.0:+,.{decimals}f}"  # + 0.0: no "-0.000" for a rounding speck


def _spread(s: dict[str, float], decimals: int, signed: bool = False) -> str:
    if signed:
        return f"{_signed(s['median'], decimals)} ({_signed(s['min'], decimals)} to {_signed(s['max'], decimals)})"
    return f"{_num(s['median'], decimals)} ({_num(s['min'], decimals)}–{_num(s['max'], decimals)})"


def render(res: dict[str, Any]) -> str:
    """The docs section: how it was run, the summary table, the verdicts and every run."""
    s = summary(res)
    load = res["load"]
    quick = " **A `--quick` smoke test: not for quoting.**" if res.get("quick") else ""
    lines = [
        "## The first attempt made by fan-out (`HOOKPOST_FIRST_ATTEMPT=inline`) against the deliver queue "
        "(`python -m bench.first_attempt`)", "",
        f"{res['when']}, commit `{res['commit']}`, {res['cores']} shared cores; **load average (1, 5, 15 min) "
        f"{' '.join(f'{v:.2f}' for v in load['start'])} at the start** and "
        f"{' '.join(f'{v:.2f}' for v in load['end'])} at the end. Run as `{res['command']}`.{quick}", "",
        f"{res['pairs']} pair(s); each pair runs both modes on each scenario one right after the other, queue first "
        "in odd pairs and inline first in even ones (ABBA). One webhook on the fast aiohttp receiver, the machine's "
        "RabbitMQ, the local store (`nx-27017`, a database per run), one `hookpost dispatcher` with default settings "
        "but `first_attempt` (the dispatcher's default is "
        f"`{res.get('default_mode', '?')}`). **backlog**: {res['changes']:,} changes published at once and drained "
        "(`Bench.run_throughput(n, k=1)`, the Hookpost job of `bench.alternatives`); **steady**: "
        f"{' and '.join(f'{r:.0f}' for r in res['rates'])} deliveries/s held for {res['seconds']:.0f} s "
        "(`Bench.run_latency`), latency publish → receipt. CPU is milliseconds per delivery (user + system, psutil) "
        "of the dispatcher, the store, the broker, the receiver and the publishing benchmark process; *all processes* "
        "is their sum. The CPU bound is the rate that sum allows with every core busy "
        "(cores × 1000 / all-process ms).", "",
        "| scenario | figure | queue: median (min–max) | inline: median (min–max) | inline − queue per pair: median "
        "(min to max) | inline / queue (median of the pairs) |",
        "|---|---|---|---|---|---|"]
    for scenario in scenario_names():
        for key, name, decimals in figures_of(scenario):
            f = s.get(scenario, {}).get(key)
            if not f:
                continue
            ratio = (f"{f['ratio']['median']:.3f} ({_signed(100 * (f['ratio']['median'] - 1), 1)}%)"
                     if f["ratio"] else "")
            lines.append(f"| {label(scenario)} | {name} | {_spread(f['queue'], decimals)} | "
                         f"{_spread(f['inline'], decimals)} | {_spread(f['diff'], decimals + 1, signed=True)} | "
                         f"{ratio} |")
    lines += ["", "Verdicts against the issue's targets:", ""]
    for v in s["verdicts"]:
        lines.append(f"- {v['text']}: {'**met**' if v['met'] else '**not met**'}.")
    lines += ["", "Every run:", "",
              "| pair | scenario | mode | deliveries/s | p50 ms | p99 ms | CPU ms/delivery, all | dispatcher | store "
              "| broker | first attempts inline / queue | others' share | load (1 min) at its start | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        rate = r.get("deliveries_per_s", r.get("achieved_deliveries_per_s", 0.0))
        p50 = f"{r['p50_ms']:.1f}" if "p50_ms" in r else ""
        p99 = f"{r['p99_ms']:.1f}" if "p99_ms" in r else ""
        lines.append(f"| {r['pair'] + 1} | {label(r['scenario'])} | {r['mode']} | {rate:,.0f} | {p50} | {p99} | "
                     f"{r['total_ms']:.3f} | {r['dispatcher_ms']:.3f} | {r['store_ms']:.3f} | {r['broker_ms']:.3f} | "
                     f"{r['paths']['inline']:,.0f} / {r['paths']['queue']:,.0f} | "
                     f"{r['others_share']:.0%} | {r['load_1m_at_start']:.2f} | "
                     f"{'; '.join(n for n in (r.get('rerun', ''), path_note(r)) if n)} |")
    astray = [r for r in res["runs"] if path_note(r)]
    if astray:
        lines += ["", f"**{len(astray)} run(s) made first attempts the other mode's way** (the column *first attempts* "
                  "above, from the dispatcher's `hookpost_first_attempts_total`): their mode's figures are mixed."]
    others = max((r["others_share"] for r in res["runs"]), default=0.0)
    if others > 0.1:
        lines += ["", f"Other work shared the machine (up to {others:.0%} of its CPU outside the benchmark's "
                  "processes in a run): rates are lower and latencies higher than on a quiet machine; the per-pair "
                  "differences are the figures to read."]
    return "\n".join(lines)


# ---- entry point ------------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, command: str, default_mode: str) -> dict[str, Any]:
    """Run the pairs; return the result."""
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="hookpost-first-attempt-"))
    mongo = LocalMongo(work / "mongo")
    receivers = Receivers(1, 0, work / "receivers.log")
    load_start = list(os.getloadavg())
    log(f"load average at the start: {' '.join(f'{v:.2f}' for v in load_start)}")
    started = datetime.now(UTC)
    mongo.start()
    receivers.start()
    runs: list[dict[str, Any]] = []
    try:
        await receivers.wait_ready()
        bench = Bench(work, mongo, receivers, args.rabbitmq_url, broker_for(args.rabbitmq_url))
        for pair in range(args.pairs):
            for scenario in scenario_names():
                for mode in pair_order(pair):
                    what = f"pair {pair + 1}/{args.pairs}, {label(scenario)}, {mode}"
                    log(what)
                    load = os.getloadavg()[0]

                    async def measure(scenario: str = scenario, mode: str = mode) -> dict[str, Any]:
                        bench.broker = broker_for(args.rabbitmq_url)  # a restarted broker is a new process
                        if scenario == "backlog":
                            return await backlog_run(bench, args.changes, mode, cores)
                        return await steady_run(bench, float(scenario.split("-")[1]), args.seconds, mode, cores)

                    r = await once_more_if_disturbed(bench, measure, lambda m, what=what: log(f"  {what}: {m}"))
                    r.update(pair=pair, scenario=scenario, mode=mode, load_1m_at_start=load)
                    runs.append(r)
                    lat = f", p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms" if "p50_ms" in r else ""
                    rate = r.get("deliveries_per_s", r.get("achieved_deliveries_per_s", 0.0))
                    log(f"  {rate:.0f} deliveries/s{lat}, CPU {r['total_ms']:.3f} ms/delivery all processes "
                        f"(dispatcher {r['dispatcher_ms']:.3f}, store {r['store_ms']:.3f}, "
                        f"broker {r['broker_ms']:.3f}); first attempts {r['paths']['inline']:.0f} inline, "
                        f"{r['paths']['queue']:.0f} queue")
                    if path_note(r):
                        log(f"  NOTE: not every first attempt went the {mode} way")
    finally:
        receivers.stop()
        mongo.stop()
    shutil.rmtree(work, ignore_errors=True)
    load_end = list(os.getloadavg())
    log(f"load average at the end: {' '.join(f'{v:.2f}' for v in load_end)}")
    return {"when": started.strftime("%Y-%m-%d %H:%M UTC"), "finished": datetime.now(UTC).strftime("%H:%M UTC"),
            "commit": git_commit(), "command": command, "quick": args.quick, "cores": cores,
            "pairs": args.pairs, "changes": args.changes, "seconds": args.seconds, "rates": list(RATES),
            "default_mode": default_mode, "load": {"start": load_start, "end": load_end}, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run (or re-render ``--report``), write the result file and the docs section."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.first_attempt", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, help="pairs of runs (default 5; --quick: 1)")
    parser.add_argument("--changes", type=int, help="backlog size (default 10,000; --quick: 1,000)")
    parser.add_argument("--seconds", type=float, help="length of each steady run (default 20; --quick: 8)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, never for quoting")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    parser.add_argument("--no-save", action="store_true", help="print the table only: no result file, no docs")
    parser.add_argument("--report", type=Path, help="measure nothing: put this result file into the docs page")
    args = parser.parse_args(argv)
    if args.report:
        res = json.loads(args.report.read_text())
        print(render(res))
        replace_section(DOCS, SECTION, render(res))
        return
    defaults = QUICK if args.quick else {"changes": 10_000, "seconds": 20.0, "pairs": 5}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    default_mode = check_setting()
    command = shlex.join(["python", "-m", "bench.first_attempt", *argv])
    res = asyncio.run(main_async(args, command, default_mode))
    res["summary"] = summary(res)
    print(render(res))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(res, indent=1, default=str))
        replace_section(DOCS, SECTION, render(res))
        log(f"wrote {out.relative_to(REPO)} and the section {SECTION} of {DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
