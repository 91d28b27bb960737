"""Delivery at the receiver's pace: one webhook on a receiver of each kind (:mod:`bench.kinds`), a backlog drained
and a steady rate held. ``python -m bench.pace [--quick] [--only backlog|steady|isolation] [--kinds K …]``.

Each scenario reports deliveries/s, publish→receipt latency (p50/p99/max, ms) and the deliveries the dispatcher
deferred. Results go to ``bench/results/pace-<timestamp>.json``; ``python -m bench.run --report`` puts the newest
into ``docs/benchmarks.md``.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import REPO, Receivers, Subprocess, base_env, broker_pid, metric_sum
from bench.scenarios import Bench, Trial, changes, percentile
from hookpost.store.localserver import LocalMongo, free_port

RESULTS = REPO / "bench" / "results"
KINDS = ("aiohttp", "aiohttp:0.02", "aiohttp:0.2", "stdlib:5", "stdlib:128", "stdlib:5:0.02", "stdlib:128:0.02")
DEFERRED = "hookpost_deliveries_deferred_total"


class KindReceiver(Subprocess):
    """One :mod:`bench.kinds` receiver process."""

    def __init__(self, kind: str, log_path: Path) -> None:
        self.kind = kind
        self.port, self.control = free_port(), free_port()
        super().__init__([sys.executable, "-m", "bench.kinds", "--kind", kind, "--port", str(self.port),
                          "--control", str(self.control)], base_env(), log_path)

    @property
    def url(self) -> str:
        """The webhook URL."""
        return f"http://127.0.0.1:{self.port}/hook"

    async def call(self, path: str, method: str = "GET") -> Any:
        """Call the control port."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                session.request(method, f"http://127.0.0.1:{self.control}{path}") as resp:
            return await resp.json()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the control port answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.call("/stats")
                return
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline or not self.running:
                    raise RuntimeError(f"receiver {self.kind} not ready: {self.log_tail()}") from None
                await asyncio.sleep(0.1)

    async def wait_unique(self, total: int, timeout: float) -> dict[str, Any]:
        """Wait until ``total`` distinct deliveries arrived; return the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.call("/stats")
            if stats["unique"] >= total:
                return dict(stats)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind}: {stats['unique']} of {total} arrived within {timeout:.0f}s")
            await asyncio.sleep(0.2)


def latency_report(seconds: list[float]) -> dict[str, float]:
    """p50/p99/max of publish→receipt latencies, in milliseconds."""
    ms = sorted(v * 1000 for v in seconds)
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": ms[-1] if ms else float("nan")}


@dataclass
class Pace:
    """The pace scenarios over a :class:`bench.scenarios.Bench`'s store and broker."""

    bench: Bench
    workdir: Path

    async def _with_receiver(self, kind: str, trial: Trial) -> KindReceiver:
        receiver = KindReceiver(kind, self.workdir / f"kind-{trial.tag}.log").start()
        await receiver.wait_ready()
        hook = await trial.store.webhooks.create(receiver.url, ["article.*"], description=kind)
        trial.webhook_ids.append(hook.id)
        return receiver

    async def backlog(self, kind: str, n: int, **extra: str) -> dict[str, Any]:
        """Publish ``n`` changes at once to one webhook on a ``kind`` receiver; time the drain."""
        async with self.bench.trial(ok=0, **extra) as trial:
            receiver = await self._with_receiver(kind, trial)
            disp = self.bench.dispatcher(trial).start()
            try:
                await disp.wait_ready()
                m0 = await disp.metrics()
                t0 = time.time()
                async with self.bench.publisher(trial) as pub:
                    await pub.publish_many(changes(trial.tag, n, data={"sent": t0}), window=500)
                stats = await receiver.wait_unique(n, timeout=600)
                lat = await receiver.call("/latencies")
                m1 = await disp.metrics()
            finally:
                disp.stop()
                receiver.stop()
        seconds = stats["last"] - t0
        return {"kind": kind, "changes": n, "deliveries_per_s": n / seconds, "seconds": seconds,
                "requests": stats["requests"], "deferred": metric_sum(m1, DEFERRED) - metric_sum(m0, DEFERRED),
                **latency_report(lat)}

    async def steady(self, kind: str, rate: float, seconds: float, **extra: str) -> dict[str, Any]:
        """Publish ``rate`` changes/s for ``seconds`` to one webhook on a ``kind`` receiver."""
        async with self.bench.trial(ok=0, **extra) as trial:
            receiver = await self._with_receiver(kind, trial)
            disp = self.bench.dispatcher(trial).start()
            try:
                await disp.wait_ready()
                m0 = await disp.metrics()
                async with self.bench.publisher(trial) as pub:
                    n = await self.bench.steady_publish(pub, trial.tag, rate, seconds)
                stats = await receiver.wait_unique(n, timeout=300)
                lat = await receiver.call("/latencies")
                m1 = await disp.metrics()
            finally:
                disp.stop()
                receiver.stop()
        return {"kind": kind, "rate": rate, "seconds": seconds, "deliveries": n, "requests": stats["requests"],
                "deferred": metric_sum(m1, DEFERRED) - metric_sum(m0, DEFERRED), **latency_report(lat)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen scenarios; return the results."""
    workdir = Path(tempfile.mkdtemp(prefix="hookpost-pace-"))
    mongo = LocalMongo(workdir / "mongo")
    mongo.start()
    receivers = Receivers(0, 0, workdir / "receivers.log").start()
    try:
        await receivers.wait_ready()
        bench = Bench(workdir, mongo, receivers, args.rabbitmq_url, broker_pid())
        pace = Pace(bench, workdir)
        out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "backlog": [], "steady": []}
        n = 500 if args.quick else args.changes
        for kind in args.kinds:
            if "backlog" in args.only:
                res = await pace.backlog(kind, n)
                print(json.dumps(res), flush=True)
                out["backlog"].append(res)
        for kind in [k for k in args.kinds if k.startswith("stdlib") and ":0." not in k]:
            if "steady" in args.only:
                res = await pace.steady(kind, args.rate, 5.0 if args.quick else args.seconds)
                print(json.dumps(res), flush=True)
                out["steady"].append(res)
        return out
    finally:
        receivers.stop()
        mongo.stop()


def main() -> None:
    """Parse the command line, run, write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=["backlog", "steady"])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"pace-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
