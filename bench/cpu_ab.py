"""Dispatcher and store CPU per delivery, for comparing two checkouts run after run:
``python -m bench.cpu_ab [CHANGES] [RUNS] [--steady RATE]`` from a checkout's root with its own virtualenv.

Each run publishes CHANGES changes to one webhook on a fast receiver and prints deliveries/s, store operations per
delivery and CPU milliseconds per delivery of the dispatcher and the store (the throughput scenario of
:mod:`bench.scenarios`). With ``--steady RATE``, each run also publishes RATE changes/s to one webhook for 20 s
(batches of about one delivery: the ordinary rate) and prints the CPU per delivery of that too. Alternate the
checkouts (A, B, A, B …) on a busy machine: the spread between runs is larger than most differences worth finding.
"""

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench.procs import Receivers, broker_pid
from bench.scenarios import Bench
from hookpost.store.localserver import LocalMongo


async def main(changes: int, runs: int, steady: float | None) -> None:
    """Run and print one JSON line per run."""
    work = Path(tempfile.mkdtemp(prefix="hookpost-cpu-ab-"))
    mongo = LocalMongo(work / "mongo")
    mongo.start()
    receivers = Receivers(2, 0, work / "receivers.log").start()
    try:
        await receivers.wait_ready()
        bench = Bench(work, mongo, receivers, "amqp://guest:guest@127.0.0.1:5672/%2F", broker_pid())
        for _ in range(runs):
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
            print(json.dumps(line), flush=True)
    finally:
        receivers.stop()
        mongo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("changes", type=int, nargs="?", default=3000)
    parser.add_argument("runs", type=int, nargs="?", default=3)
    parser.add_argument("--steady", type=float, help="also a steady run at this many changes/s")
    args = parser.parse_args()
    asyncio.run(main(args.changes, args.runs, args.steady))
