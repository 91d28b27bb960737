"""A healthy endpoint beside hostile receivers: its publish→receipt p99 at a steady rate, alone and with hostile
receivers subscribed to the same events. The target: it stays within 2× of its value alone.
``python -m bench.hostile [--rate 20] [--seconds 30] [--repeats 3] [--kinds …] [--no-save]``.

Each run is a fresh prefix and database with one dispatcher process (default settings: ``HTTP_TIMEOUT`` 15 s,
``ENDPOINT_CONCURRENCY`` 10, the breaker on) and one healthy webhook (:mod:`bench.receiver`, answering 200 at once).
The *hostile* runs add one webhook per hostile kind (:mod:`bench.hostile_servers`: gzip and deflate bombs, a body
trickled a byte a second, endless headers slowly and fast, a redirect to itself, a server that never reads), all
subscribed to the same events, so every change fans out to each of them too. The two kinds of run alternate
(``--repeats`` pairs), so drift in the machine's load hits both.

Results go to ``bench/results/hostile-<timestamp>.json`` and into the section "A healthy endpoint beside hostile
receivers" of ``docs/benchmarks.md`` (``--no-save`` for neither; ``--report FILE`` rewrites the section from a
result file).
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.hostile_servers import DEFAULT_KINDS
from bench.procs import REPO, Receivers, Subprocess, base_env, broker_pid
from bench.report import replace_section
from bench.scenarios import Bench, percentile
from hookpost.store.localserver import LocalMongo
from tests.metrics_text import Samples, metric_by_label, metric_sum

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "hostile-neighbours"
TARGET_RATIO = 2.0


class HostileServers(Subprocess):
    """The :mod:`bench.hostile_servers` process; :meth:`wait_ready` returns ``{kind: url}``."""

    def __init__(self, kinds: list[str], workdir: Path) -> None:
        self.out = workdir / "hostile-urls.json"
        super().__init__([sys.executable, "-m", "bench.hostile_servers", "--out", str(self.out), "--kinds", *kinds],
                         base_env(), workdir / "hostile-servers.log")

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        """Wait until the servers listen (their URL file exists); return their URLs."""
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"hostile servers not ready: {self.log_tail()}")
            await asyncio.sleep(0.1)
        return dict(json.loads(self.out.read_text()))


def _delta(after: Samples, before: Samples, name: str) -> float:
    return metric_sum(after, name) - metric_sum(before, name)


async def one_run(bench: Bench, hostile: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    """Publish ``rate`` changes/s for ``seconds`` to the healthy webhook (and to every ``hostile`` one); return the
    healthy endpoint's latencies and what the dispatcher did meanwhile."""
    load = os.getloadavg()[0]
    async with bench.trial(ok=1) as trial:
        for kind, url in hostile.items():
            hook = await trial.store.webhooks.create(url, ["article.*"], description=f"hostile {kind}")
            trial.webhook_ids.append(hook.id)
        disp = bench.dispatcher(trial, "hostile" if hostile else "alone").start()
        try:
            await disp.wait_ready()
            m0 = await disp.metrics()
            async with bench.publisher(trial) as pub:
                n = await bench.steady_publish(pub, trial.tag, rate, seconds)
            await bench.wait_received(bench.receivers.ok_ports[:1], n, timeout=300)
            m1 = await disp.metrics()
            lat = sorted(v * 1000 for _, v in await bench.receivers.latencies())
        finally:
            disp.stop()
    attempts = {k: v - metric_by_label(m0, "hookpost_delivery_attempts_total").get(k, 0.0)
                for k, v in metric_by_label(m1, "hookpost_delivery_attempts_total").items()}
    return {"hostile": sorted(hostile), "rate": rate, "seconds": seconds, "deliveries": len(lat),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else None,
            "attempts": attempts,
            "deferred": _delta(m1, m0, "hookpost_deliveries_deferred_total"),
            "held": _delta(m1, m0, "hookpost_deliveries_held_total"),
            "broker_disturbed": disp.broker_losses(), "load_at_start": load}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate ``args.repeats`` runs alone and with the hostile receivers; return every run."""
    workdir = Path(tempfile.mkdtemp(prefix="hookpost-hostile-"))
    mongo = LocalMongo(workdir / "mongo")
    mongo.start()
    receivers = Receivers(1, 0, workdir / "receivers.log").start()
    servers = HostileServers(args.kinds, workdir).start()
    try:
        await receivers.wait_ready()
        urls = await servers.wait_ready()
        bench = Bench(workdir, mongo, receivers, args.rabbitmq_url, broker_pid())
        out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "rate": args.rate,
                               "seconds": args.seconds, "kinds": args.kinds, "alone": [], "with_hostile": [],
                               "load": [os.getloadavg()]}
        for _ in range(args.repeats):
            for key, hostile in (("alone", {}), ("with_hostile", urls)):
                res = await one_run(bench, hostile, args.rate, args.seconds)
                print(json.dumps({"run": key, **res}), flush=True)
                out[key].append(res)
        out["load"].append(os.getloadavg())
        out["finished"] = datetime.now(UTC).isoformat()
        return out
    finally:
        servers.stop()
        receivers.stop()
        mongo.stop()


def verdict(out: dict[str, Any]) -> dict[str, Any]:
    """The healthy p99 alone and with the hostile receivers (median over the runs), their ratio, and whether it
    is within the target."""
    def median(values: list[float]) -> float:
        vals = sorted(values)
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    alone = median([r["p99_ms"] for r in out["alone"]])
    hostile = median([r["p99_ms"] for r in out["with_hostile"]])
    ratio = hostile / alone
    return {"p99_alone_ms": alone, "p99_hostile_ms": hostile, "ratio": ratio, "met": ratio <= TARGET_RATIO}


def render(out: dict[str, Any]) -> str:
    """The page section for one result file."""
    v = verdict(out)
    load = out.get("load") or []
    load_note = ""
    if len(load) >= 2:
        load_note = (f" Machine load (1/5/15-minute averages, 2 cores): {'/'.join(f'{x:.1f}' for x in load[0])} at "
                     f"the start, {'/'.join(f'{x:.1f}' for x in load[-1])} at the end; other work shared the CPU.")
    lines = ["## A healthy endpoint beside hostile receivers", "",
             f"`python -m bench.hostile` on {out['started'][:16].replace('T', ' ')} UTC: one healthy webhook "
             f"(answers 200 at once) at a steady {out['rate']:.0f} changes/s for {out['seconds']:.0f} s, alone, then "
             f"with {len(out['kinds'])} hostile receivers subscribed to the same events "
             f"({', '.join(f'`{k}`' for k in out['kinds'])}; `bench/hostile_servers.py`), runs alternating. One "
             "dispatcher with default settings (`HTTP_TIMEOUT` 15 s, `ENDPOINT_CONCURRENCY` 10, breaker on). "
             "Latency is publish → receipt at the healthy receiver. The hostile endpoints' attempts are counted by "
             "outcome (the bombs answer 2xx); *deferred* and *held* are their deliveries parked by the endpoint "
             "limits and by the breakers instead of being attempted." + load_note, "",
             "| pair | healthy deliveries | p99 ms alone | p99 ms with hostile | ratio | p50 ms alone / hostile "
             "| hostile attempts | deferred | held | load at start |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (a, h) in enumerate(zip(out["alone"], out["with_hostile"], strict=False), 1):
        attempts = dict(h["attempts"])
        attempts["status_class=2xx"] = attempts.get("status_class=2xx", 0.0) - h["deliveries"]  # less the healthy
        hostile_attempts = ", ".join(f"{k.split('=')[-1]} {int(n)}" for k, n in sorted(attempts.items()) if n)
        lines.append(f"| {i} | {a['deliveries']} / {h['deliveries']} | {a['p99_ms']:.0f} | {h['p99_ms']:.0f} | "
                     f"{h['p99_ms'] / a['p99_ms']:.2f} | {a['p50_ms']:.0f} / {h['p50_ms']:.0f} | {hostile_attempts} | "
                     f"{h['deferred']:.0f} | {h['held']:.0f} | {a['load_at_start']:.1f} / {h['load_at_start']:.1f} |")
    pairs = [h["p99_ms"] / a["p99_ms"] for a, h in zip(out["alone"], out["with_hostile"], strict=False)]
    lines += ["", f"Healthy p99, median of the runs: **{v['p99_alone_ms']:.0f} ms alone, {v['p99_hostile_ms']:.0f} "
              f"ms with the hostile receivers: ratio {v['ratio']:.2f}** (target ≤ {TARGET_RATIO:.0f}): "
              + ("met." if v["met"] else "**missed**.")
              + f" Pair by pair the ratio was {min(pairs):.2f} to {max(pairs):.2f}."]
    return "\n".join(lines)


def main() -> None:
    """Parse the command line, run, write the result file and the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (alone, with hostile)")
    parser.add_argument("--kinds", nargs="*", default=list(DEFAULT_KINDS))
    parser.add_argument("--rabbitmq-url", default=os.environ.get("HOOKPOST_BENCH_RABBITMQ_URL",
                                                                 "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--report", type=Path, help="measure nothing: put this result file into the docs page")
    args = parser.parse_args()
    if args.report:
        replace_section(DOCS, SECTION, render(json.loads(args.report.read_text())))
        return
    out = asyncio.run(main_async(args))
    print(json.dumps(verdict(out)))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"hostile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(out, indent=2))
        replace_section(DOCS, SECTION, render(out))
        print(f"wrote {path} and {DOCS}")


if __name__ == "__main__":
    main()
