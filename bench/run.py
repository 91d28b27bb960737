"""Run Hookpost's benchmark: ``python -m bench.run [--quick] [--only NAME ...] [--profile]``.

Writes ``bench/results/<timestamp>.json`` and regenerates ``docs/benchmarks.md`` and ``docs/benchmarks.png``.
Measurements (``--only`` names): throughput, isolation, latency, memory, limits, cli, janitor. A measurement not
run this time is taken from the newest earlier result file that has it (the page says so).
"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import REPO, Receivers, broker_pid
from bench.profile import hot_spots, py_spy, stages
from bench.report import get, write_docs
from bench.scenarios import Bench, summarize
from hookpost.store.localserver import LocalMongo

MEASUREMENTS = ("throughput", "isolation", "latency", "memory", "limits", "cli", "api", "janitor")
RESULTS = REPO / "bench" / "results"
RABBIT_URL = os.environ.get("HOOKPOST_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    repeats: int = 3
    changes: int = 5000            # per throughput run; x 2 webhooks = deliveries
    http_timeout: str = "2s"       # throughput and isolation runs (the hanging endpoint times out after this)
    latency_s: float = 20.0
    memory_backlog: int = 1_000_000
    memory_watch_s: float = 60.0
    bare_ops: int = 30000
    cli_events: int = 100_000
    cli_repeats: int = 5
    api_events: int = 100_000
    api_requests: int = 200
    janitor_events: int = 100_000
    janitor_trickle_per_s: float = 20.0
    janitor_warmup_s: float = 3.0


FULL = Plan()
QUICK = Plan(changes=1000, latency_s=5.0, memory_backlog=100_000, memory_watch_s=10.0, bare_ops=10000,
             cli_events=10000, janitor_events=5000, janitor_warmup_s=1.5, api_events=10000, api_requests=50)


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def rabbitmq_version(url: str) -> str:
    """Return the broker's version from its AMQP server properties."""
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except Exception as exc:  # the page says "?" rather than failing the run
        return f"? ({type(exc).__name__})"
    try:
        props = conn._impl.server_properties or {}
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        conn.close()


def machine_info(url: str) -> dict[str, Any]:
    """Describe the machine and the software versions."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=REPO).stdout.splitlines()
    return {"nproc": nproc, "cpu_model": model, "free_g": free, "python": platform.python_version(),
            "os": platform.platform(), "pika": _version("pika"), "aiohttp": _version("aiohttp"),
            "pymongo": _version("pymongo"), "nx-27017": _version("nx-27017"), "pydantic": _version("pydantic"),
            "rabbitmq": rabbitmq_version(url), "git": git.strip(),
            "git_dirty": sorted(line[3:] for line in dirty if line[3:].split("/")[0] not in ("bench", "docs"))}


def dispatcher_defaults(plan: Plan) -> dict[str, str]:
    """The dispatcher settings that shape the numbers: their defaults (the benchmark strips ``HOOKPOST_*`` from
    the dispatcher's environment) and what the benchmark sets."""
    from hookpost.common.settings import Settings

    names = ("queue_type", "prefetch", "concurrency", "endpoint_concurrency", "store_batch", "defer_delay",
             "webhook_cache_ttl", "retry_delays")
    out = {n: str(Settings.model_fields[n].default) for n in names}
    out["http_timeout"] = plan.http_timeout
    return out


def summary_of(runs: list[dict[str, Any]], paths: list[str]) -> dict[str, dict[str, float]]:
    """Median/min/max over runs of each dotted ``path``."""
    return {p: summarize([v for r in runs if (v := get(r, p)) is not None]) for p in paths}


THROUGHPUT_KEYS = ["deliveries_per_s", "seconds", "store_ops_per_delivery", "deferred",
                   "cpu.per_1000.dispatcher", "cpu.per_1000.store", "cpu.per_1000.broker", "cpu.per_1000.receivers",
                   "cpu.per_1000.bench (publisher)", "cpu.share.dispatcher", "cpu.share.store", "cpu.share.broker",
                   "cpu.share.receivers", "cpu.share.bench (publisher)", "cpu.share.others"]


class Runner:
    """Runs the selected measurements and collects their results."""

    def __init__(self, bench: Bench, plan: Plan, selected: set[str], profile: bool, stamp: str) -> None:
        self.bench = bench
        self.plan = plan
        self.selected = selected
        self.profile = profile
        self.stamp = stamp
        self.results: dict[str, Any] = {}
        self.repeated: dict[str, int] = {}

    async def guarded(self, name: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Run one measurement; record its error instead of stopping the whole benchmark."""
        began = time.monotonic()
        log(f"{name}: start")
        try:
            self.results[name] = await fn()
            self.results[name]["took_s"] = time.monotonic() - began
            log(f"{name}: done in {time.monotonic() - began:.0f}s")
        except Exception as exc:
            log(f"{name}: FAILED: {exc}")
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}

    async def attempt(self, what: str, fn: Callable[[], Awaitable[dict[str, Any]]],
                      repeat_disturbed: bool = True) -> dict[str, Any]:
        """Run one measurement run; if it fails, or (with ``repeat_disturbed``) its dispatcher lost the broker
        meanwhile (other suites on this machine restart the shared broker), wait for the broker and run it once
        more. The result says ``retried`` when it took a second try."""
        try:
            res = await fn()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        else:
            if not (repeat_disturbed and res.get("broker_disturbed")):
                return res
            reason = "the dispatcher lost the broker connection (a restart of the shared broker)"
        log(f"{what}: {reason}; running it again")
        self.repeated[what.split()[0]] = self.repeated.get(what.split()[0], 0) + 1
        await self.bench.wait_broker()
        await asyncio.sleep(3.0)
        res = await fn()
        res["retried"] = reason
        return res

    async def throughput_and_isolation(self) -> None:
        """Baseline runs (and, for isolation, a run with a hanging endpoint right after each)."""
        p, b = self.plan, self.bench
        base_runs: list[dict[str, Any]] = []
        hang_runs: list[dict[str, Any]] = []
        control_runs: list[dict[str, Any]] = []
        pairs: list[dict[str, Any]] = []
        began = time.monotonic()
        for i in range(p.repeats if self.selected & {"throughput", "isolation"} else 0):
            log(f"throughput: run {i + 1}/{p.repeats} ({p.changes} changes x 2 webhooks)")
            base = await self.attempt("throughput run",
                                      lambda: b.run_throughput(p.changes, http_timeout=p.http_timeout))
            base_runs.append(base)
            log(f"  {base['deliveries_per_s']:.0f} deliveries/s")
            if "isolation" in self.selected:
                log(f"isolation: run {i + 1}/{p.repeats} (+ 1 endpoint that hangs past {p.http_timeout})")
                hang = await self.attempt(
                    "isolation run", lambda: b.run_throughput(p.changes, hang=1, http_timeout=p.http_timeout))
                hang_runs.append(hang)
                log(f"  {hang['deliveries_per_s']:.0f} deliveries/s to the healthy endpoints "
                    f"({hang['deliveries_per_s'] / base['deliveries_per_s']:.2f} of baseline)")
                log(f"isolation control: run {i + 1}/{p.repeats} (+ 1 more healthy endpoint instead)")
                control = await self.attempt(
                    "isolation control run",
                    lambda: b.run_throughput(p.changes, extra_ok=1, http_timeout=p.http_timeout))
                control_runs.append(control)
                pairs.append({"baseline_per_s": base["deliveries_per_s"], "hang_per_s": hang["deliveries_per_s"],
                              "control_per_s": control["deliveries_per_s"],
                              "fraction": hang["deliveries_per_s"] / base["deliveries_per_s"],
                              "fraction_of_control": hang["deliveries_per_s"] / control["deliveries_per_s"]})
                log(f"  {control['deliveries_per_s']:.0f} deliveries/s to the same 2 endpoints with a third healthy "
                    f"one ({pairs[-1]['fraction_of_control']:.2f} for the hanging run against it)")
        if base_runs:
            self.results["throughput"] = {"runs": base_runs, "summary": summary_of(base_runs, THROUGHPUT_KEYS),
                                          "took_s": time.monotonic() - began}
        if "isolation" in self.selected:
            self.results["isolation"] = {
                "pairs": pairs, "hang_runs": hang_runs, "control_runs": control_runs,
                "summary": {"fraction": summarize([x["fraction"] for x in pairs]),
                            "fraction_of_control": summarize([x["fraction_of_control"] for x in pairs]),
                            "control_per_s": summarize([x["control_per_s"] for x in pairs]),
                            "control_cpu_per_1000": {
                                proc: summarize([c["cpu"]["per_1000"][proc] for c in control_runs])
                                for proc in ("dispatcher", "store", "broker")},
                            **summary_of(hang_runs, ["deliveries_per_s", "deferred", "hang_requests",
                                                     "cpu.per_1000.dispatcher", "cpu.per_1000.store",
                                                     "cpu.per_1000.broker", "cpu.share.others"])}}
        if self.profile:
            out = RESULTS / f"{self.stamp}-dispatcher.pyspy.txt"
            log(f"profile: one more throughput run with py-spy attached → {out}")
            prof_run = await b.run_throughput(p.changes, http_timeout=p.http_timeout, profile=out)
            self.results["profile"] = {"file": str(out.relative_to(REPO)),
                                       "deliveries_per_s": prof_run["deliveries_per_s"],
                                       "cpu_ms_per_delivery": get(prof_run, "cpu.per_1000.dispatcher"),
                                       **hot_spots(out)}

    async def latency(self) -> dict[str, Any]:
        """Three steady-rate runs at half the measured maximum."""
        p = self.plan
        peak = get(self.results, "throughput.summary.deliveries_per_s.median") or _previous_peak() or 600.0
        rate = round(peak / 2)
        runs = []
        for i in range(p.repeats):
            log(f"latency: run {i + 1}/{p.repeats} at {rate} deliveries/s for {p.latency_s:.0f}s")
            runs.append(await self.attempt("latency run", lambda: self.bench.run_latency(rate, p.latency_s)))
            log(f"  p50 {runs[-1]['p50_ms']:.0f} ms, p99 {runs[-1]['p99_ms']:.0f} ms")
        return {"rate": rate, "peak": peak, "runs": runs,
                "summary": summary_of(runs, ["p50_ms", "p95_ms", "p99_ms", "max_ms", "achieved_deliveries_per_s",
                                             "cpu.per_1000.dispatcher"])}

    async def memory(self) -> dict[str, Any]:
        """The dispatcher's RSS over a large backlog."""
        p = self.plan
        log(f"memory: publishing {p.memory_backlog:,} changes, then {p.repeats} dispatcher runs of "
            f"{p.memory_watch_s:.0f}s each")
        res = await self.attempt(
            "memory run", lambda: self.bench.run_memory(p.memory_backlog, p.memory_watch_s, p.repeats),
            repeat_disturbed=False)
        res["summary"] = summary_of(res["runs"], ["rss_start_mb", "rss_peak_mb", "rss_end_mb",
                                                  "rss_growth_after_5s_mb", "changes_consumed", "events_finished"])
        return res

    async def limits(self) -> dict[str, Any]:
        """The bare aiohttp and pika loops."""
        p = self.plan
        http, amqp = [], []
        for i in range(p.repeats):
            log(f"limits: run {i + 1}/{p.repeats} ({p.bare_ops:,} POSTs, {p.bare_ops:,} messages)")
            http.append(await self.attempt("limits (bare aiohttp) run", lambda: self.bench.run_bare_http(p.bare_ops)))
            amqp.append(await self.attempt("limits (bare pika) run", lambda: self.bench.run_bare_amqp(p.bare_ops)))
            log(f"  aiohttp {http[-1]['per_s']:.0f}/s, pika {amqp[-1]['per_s']:.0f}/s")
        keys = ["per_s", "cpu_ms_per_op", "other_cpu_ms_per_op.broker", "other_cpu_ms_per_op.receivers"]
        return {"http": {"runs": http, "summary": summary_of(http, keys)},
                "amqp": {"runs": amqp, "summary": summary_of(amqp, keys)}}

    async def cli(self) -> dict[str, Any]:
        """``hookpost events list`` on a seeded store."""
        return await self.attempt("cli run", lambda: self.bench.run_cli(self.plan.cli_events, self.plan.cli_repeats))

    async def api(self) -> dict[str, Any]:
        """``GET /api/v1/events`` of ``hookpost server`` on a seeded store."""
        return await self.attempt("api run", lambda: self.bench.run_api(self.plan.api_events, self.plan.api_requests))

    async def janitor(self) -> dict[str, Any]:
        """``hookpost janitor --once`` while a dispatcher delivers a trickle."""
        p = self.plan
        runs = []
        for i in range(p.repeats):
            log(f"janitor: run {i + 1}/{p.repeats} ({p.janitor_events:,} events x up to 3 attempts)")
            runs.append(await self.attempt("janitor run", lambda: self.bench.run_janitor(
                p.janitor_events, 3, p.janitor_trickle_per_s, warmup=p.janitor_warmup_s), repeat_disturbed=False))
            log(f"  {runs[-1]['janitor_s']:.1f}s; {runs[-1]['deliveries_during']} deliveries meanwhile, "
                f"max latency {runs[-1]['max_latency_during_ms'] or 0:.0f} ms")
        return {"runs": runs, "summary": summary_of(runs, [
            "janitor_s", "deliveries_during", "expected_during", "max_latency_during_ms", "p50_latency_during_ms",
            "p50_latency_before_ms", "max_latency_before_ms", "seed_s.events_s", "seed_s.attempts_s",
            "cpu.seconds.store", "cpu.seconds.dispatcher"])}

    async def run(self) -> None:
        """Run every selected measurement in a fixed order."""
        if self.selected & {"throughput", "isolation"} or self.profile:
            began = time.monotonic()
            try:
                await self.throughput_and_isolation()
            except Exception as exc:
                log(f"throughput/isolation: FAILED: {exc}")
                self.results["throughput"] = {"error": f"{type(exc).__name__}: {exc}",
                                              "trace": traceback.format_exc()[-3000:]}
            log(f"throughput/isolation: done in {time.monotonic() - began:.0f}s")
        for name, fn in (("latency", self.latency), ("limits", self.limits), ("cli", self.cli), ("api", self.api),
                         ("janitor", self.janitor), ("memory", self.memory)):
            if name in self.selected:
                await self.guarded(name, fn)
        for name, count in self.repeated.items():
            if isinstance(self.results.get(name), dict):
                self.results[name]["repeated_runs"] = count


def _result_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"), reverse=True)


def _previous_peak() -> float | None:
    for path in _result_files():
        try:
            value = get(json.loads(path.read_text()), "throughput.summary.deliveries_per_s.median")
        except ValueError:
            continue
        if value:
            return float(value)
    return None


def merged_with_previous(current: dict[str, Any]) -> dict[str, Any]:
    """Fill measurements missing (or failed) in ``current`` from the newest earlier result that has them."""
    merged = dict(current)
    merged["from_earlier"] = {}
    for name in (*MEASUREMENTS, "profile"):
        if name in merged and "error" not in merged[name]:
            continue
        for path in _result_files():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                continue
            if old.get("meta", {}).get("timestamp") == current["meta"]["timestamp"]:
                continue
            if name in old and "error" not in old[name] and old.get("meta", {}).get("quick") == \
                    current["meta"]["quick"]:
                merged[name] = old[name]
                merged["from_earlier"][name] = old["meta"]["timestamp"]
                break
    return merged


async def main_async(args: argparse.Namespace) -> Path:
    """Run the benchmark; return the result file."""
    plan = QUICK if args.quick else FULL
    selected = set(args.only or MEASUREMENTS)
    unknown = selected - set(MEASUREMENTS)
    if unknown:
        raise SystemExit(f"unknown measurement(s): {', '.join(sorted(unknown))}; choose from {', '.join(MEASUREMENTS)}")
    if args.profile and py_spy() is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hookpost-bench-"))
    began = time.monotonic()
    log(f"work folder {workdir}; {'quick' if args.quick else 'full'} run of {', '.join(sorted(selected))}")
    meta = {"timestamp": stamp, "date": now.date().isoformat(), "quick": args.quick, "plan": asdict(plan),
            "dispatcher_settings": dispatcher_defaults(plan), "profile": args.profile,
            "selected": sorted(selected), "machine": machine_info(RABBIT_URL)}
    broker = broker_pid()
    if broker is None:
        log("warning: no beam.smp process found; broker CPU will not be measured")
    mongo = LocalMongo(workdir / "mongo")
    receivers = Receivers(ok=3, hang=1, log_path=workdir / "receivers.log", hang_seconds=30.0)
    mongo.start()
    receivers.start()
    runner: Runner | None = None
    try:
        await receivers.wait_ready()
        bench = Bench(workdir, mongo, receivers, RABBIT_URL, broker)
        runner = Runner(bench, plan, selected, args.profile, stamp)
        await runner.run()
    finally:
        receivers.stop()
        mongo.stop()
    meta["duration_s"] = time.monotonic() - began
    results = {"meta": meta, **(runner.results if runner else {})}
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    log(f"results: {out.relative_to(REPO)}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if failed:
        log(f"failed measurements: {', '.join(failed)}; logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    md, png = write_docs(merged_with_previous(results), REPO / "docs")
    log(f"wrote {md.relative_to(REPO)} and {png.relative_to(REPO)} ({meta['duration_s']:.0f}s in all)")
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 3 minutes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(MEASUREMENTS)}")
    parser.add_argument("--profile", action="store_true",
                        help="one extra throughput run with py-spy attached to the dispatcher (hot spots)")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: write docs/benchmarks.md and .png again from the newest results")
    args = parser.parse_args(argv)
    if args.report:
        rewrite_docs(quick=args.quick)
    else:
        asyncio.run(main_async(args))


def rewrite_docs(*, quick: bool = False) -> None:
    """Write the docs again from the newest result file of the kind (and earlier ones for what it lacks)."""
    newest = next((json.loads(p.read_text()) for p in _result_files()
                   if json.loads(p.read_text()).get("meta", {}).get("quick") == quick), None)
    if newest is None:
        raise SystemExit("no results yet: run python -m bench.run first")
    prof = newest.get("profile") or {}
    raw = REPO / prof.get("file", "-")
    if prof and "stages" not in prof and raw.is_file():  # results written before stages were reported
        prof["stages"] = stages(raw)
    md, png = write_docs(merged_with_previous(newest), REPO / "docs")
    log(f"wrote {md.relative_to(REPO)} and {png.relative_to(REPO)} from {newest['meta']['timestamp']}")


if __name__ == "__main__":
    main()
