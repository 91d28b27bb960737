"""Dispatcher and store CPU per delivery, for comparing two checkouts run after run:
``python -m bench.cpu_ab [CHANGES] [RUNS] [--steady RATE]`` from a checkout's root with its own virtualenv.

Each run publishes CHANGES changes to one webhook on a fast receiver and prints deliveries/s, store operations per
delivery and CPU milliseconds per delivery of the dispatcher and the store (the throughput scenario of
:mod:`bench.scenarios`). With ``--steady RATE``, each run also publishes RATE changes/s to one webhook for 20 s
(batches of about one delivery: the ordinary rate) and prints the CPU per delivery of that too. Alternate the
checkouts (A, B, A, B …) on a busy machine: the spread between runs is larger than most differences worth finding.

With ``--otel-pairs N`` it compares tracing in this checkout instead: N pairs of runs, each a run with OpenTelemetry
off and one with the SDK on (``OTEL_*`` set for the dispatcher: the always-on sampler, the batch processor, the
OTLP/HTTP exporter to a span-counting collector, :mod:`bench.otlp_sink`, in a process of its own), alternated; it
prints each run, then the median ratio of the dispatcher's CPU per delivery (on / off) over the pairs with its
spread. Needs the ``otel`` extra (``pip install -e '.[test,otel,bench]'``)::

    python -m bench.cpu_ab 3000 1 --otel-pairs 5
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import Receivers, broker_pid
from bench.scenarios import Bench
from hookpost.store.localserver import LocalMongo, free_port

OTEL_ON = {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


async def run_line(bench: Bench, changes: int, steady: float | None) -> dict[str, Any]:
    """One run: the throughput scenario (and the steady one with ``steady``), as a JSON-ready line."""
    r = await bench.run_throughput(changes, k=1)
    line = {"deliveries_per_s": round(r["deliveries_per_s"]),
            "store_ops_per_delivery": round(r["store_ops_per_delivery"], 3),
            "dispatcher_ms": round(r["cpu"]["per_1000"]["dispatcher"], 3),
            "store_ms": round(r["cpu"]["per_1000"]["store"], 3)}
    if steady:
        s = await bench.run_latency(steady, 20.0, k=1)
        cpu = s["cpu"]["per_1000"]
        line.update({"steady_per_s": steady, "steady_dispatcher_ms": round(cpu["dispatcher"], 3),
                     "steady_store_ms": round(cpu["store"], 3), "steady_p99_ms": round(s["p99_ms"], 1)})
    return line


async def otel_pairs(bench: Bench, changes: int, pairs: int, steady: float | None) -> None:
    """Alternate runs with tracing off and on (the SDK exporting to a local sink); print them and the ratio."""
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", "--port", str(port)], stdout=subprocess.PIPE,
                            text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    ratios: list[float] = []
    try:
        for _ in range(pairs):
            ms = {}
            for on in (False, True):
                for k in OTEL_ON:
                    os.environ.pop(k, None)
                os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                if on:
                    os.environ.update(OTEL_ON, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
                line = {"otel": on, **await run_line(bench, changes, steady)}
                ms[on] = line["dispatcher_ms"]
                print(json.dumps(line), flush=True)
            ratios.append(ms[True] / ms[False])
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=30)
    print(json.dumps({"pairs": pairs, "dispatcher_cpu_on_over_off_median": round(statistics.median(ratios), 3),
                      "min": round(min(ratios), 3), "max": round(max(ratios), 3),
                      "sink": json.loads(out.strip().splitlines()[-1])}), flush=True)


async def main(changes: int, runs: int, steady: float | None, pairs: int = 0) -> None:
    """Run and print one JSON line per run."""
    work = Path(tempfile.mkdtemp(prefix="hookpost-cpu-ab-"))
    mongo = LocalMongo(work / "mongo")
    mongo.start()
    receivers = Receivers(2, 0, work / "receivers.log").start()
    try:
        await receivers.wait_ready()
        bench = Bench(work, mongo, receivers, "amqp://guest:guest@127.0.0.1:5672/%2F", broker_pid())
        if pairs:
            await otel_pairs(bench, changes, pairs, steady)
            return
        for _ in range(runs):
            print(json.dumps(await run_line(bench, changes, steady)), flush=True)
    finally:
        receivers.stop()
        mongo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("changes", type=int, nargs="?", default=3000)
    parser.add_argument("runs", type=int, nargs="?", default=3)
    parser.add_argument("--steady", type=float, help="also a steady run at this many changes/s")
    parser.add_argument("--otel-pairs", type=int, default=0,
                        help="instead: this many pairs of runs with tracing off and on (the SDK), alternated")
    args = parser.parse_args()
    asyncio.run(main(args.changes, args.runs, args.steady, args.otel_pairs))
