"""Dispatcher and store CPU per delivery, for comparing two checkouts run after run:
``python -m bench.cpu_ab [CHANGES] [RUNS]`` from a checkout's root with its own virtualenv.

Each run publishes CHANGES changes to one webhook on a fast receiver and prints deliveries/s, store operations per
delivery and CPU milliseconds per delivery of the dispatcher and the store (the throughput scenario of
:mod:`bench.scenarios`). Alternate the checkouts (A, B, A, B …) on a busy machine: the spread between runs is
larger than most differences worth finding.
"""

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.procs import Receivers, broker_pid
from bench.scenarios import Bench
from hookpost.store.localserver import LocalMongo


async def main(changes: int, runs: int) -> None:
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
            print(json.dumps({"deliveries_per_s": round(r["deliveries_per_s"]),
                              "store_ops_per_delivery": round(r["store_ops_per_delivery"], 3),
                              "dispatcher_ms": round(r["cpu"]["per_1000"]["dispatcher"], 3),
                              "store_ms": round(r["cpu"]["per_1000"]["store"], 3)}), flush=True)
    finally:
        receivers.stop()
        mongo.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
