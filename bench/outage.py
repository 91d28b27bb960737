"""Long outage, compressed: what a receiver that is down far longer than the whole retry schedule costs, with the
circuit breaker on and off.

A dispatcher (in this process) with a retry schedule of 50 ms × 9 delivers ``--events`` changes to two webhooks:
one whose endpoint answers 503 for ``--outage`` seconds, one healthy. It reports the requests the dead endpoint got
while down (and how many per probe interval), how many events ended Failed, and how long the held backlog took to
drain once the endpoint was back.

    python -m bench.outage                      # 2,000 events, 8 s outage, breaker on, then off
    python -m bench.outage --events 500 --outage 4 --only on
"""

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.settings import load_settings
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo
from tests.conftest import RABBIT_URL, cleanup
from tests.helpers import Receiver, running_worker, wait_until

PROBE = 0.5


class Dead:
    """Answers 503 while ``down``, else 200; records the wall-clock time of every request while down."""

    def __init__(self) -> None:
        self.down = True
        self.down_times: list[float] = []

    async def respond(self, n: int, request: web.Request) -> web.StreamResponse:
        if self.down:
            self.down_times.append(time.time())
            return web.Response(status=503)
        return web.Response(status=200)


def busiest(times: list[float], width: float) -> int:
    """The most of ``times`` in any window ``width`` seconds wide."""
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


async def one_run(mongo_url: str, *, breaker: bool, events: int, outage: float) -> dict[str, Any]:
    """One run on a fresh prefix and database; return what it measured."""
    tag = uuid.uuid4().hex[:10]
    s = load_settings(rabbitmq_url=RABBIT_URL, mongodb_url=mongo_url, mongodb_db=f"hpbench_{tag}",
                      prefix=f"hpbench-{tag}", allow_private_targets=True, retry_delays=",".join(["50ms"] * 9),
                      max_attempts=10, http_timeout="1s", ops_port=0, log_level="WARNING", breaker=breaker,
                      breaker_threshold=10, breaker_probe=f"{PROBE}s", breaker_probe_max="1s", breaker_poll="100ms",
                      reconcile_interval="1h")
    dead = Dead()
    rx_dead = await Receiver(respond=dead.respond).start()
    rx_ok = await Receiver(script=[200]).start()
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    try:
        await store.ensure_indexes()
        await store.webhooks.create(rx_dead.url, ["article.*"])
        await store.webhooks.create(rx_ok.url, ["article.*"])
        async with running_worker(s):
            began = time.time()
            async with Publisher.from_settings(s) as p:
                await p.publish_many([ChangeEvent(id=f"o-{i}", type="article.updated",
                                                  entity=Entity(kind="a", id=str(i))) for i in range(events)])
            await asyncio.sleep(max(0.0, began + outage - time.time()))
            down_requests = list(dead.down_times)
            dead.down = False
            back = time.time()

            async def settled() -> bool:
                c = await store.events.group_counts("status", {})
                return c.get("Finished", 0) + c.get("Failed", 0) == 2 * events

            await wait_until(settled, 600, interval=0.5, message="every event Finished or Failed")
            drained = time.time() - back
        counts = await store.events.group_counts("status", {})
        after_first_second = [t for t in down_requests if t > began + 1.0]
        return {"breaker": breaker, "events": events, "outage_s": outage,
                "requests_while_down": len(down_requests),
                "requests_after_the_first_second": len(after_first_second),
                "busiest_probe_interval": busiest(after_first_second, PROBE),
                "failed": counts.get("Failed", 0), "finished": counts.get("Finished", 0),
                "seconds_to_settle_after_recovery": round(drained, 2), "healthy_received": len(rx_ok.requests)}
    finally:
        await store.close()
        await rx_dead.stop()
        await rx_ok.stop()
        await cleanup(s)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the asked runs against a fresh nx-27017."""
    server = LocalMongo(Path(tempfile.mkdtemp(prefix="hp-outage-")))
    server.start()
    try:
        runs = []
        for mode in (["on", "off"] if args.only is None else [args.only]):
            result = await one_run(server.url, breaker=mode == "on", events=args.events, outage=args.outage)
            print(json.dumps(result), flush=True)
            runs.append(result)
        return runs
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--outage", type=float, default=8.0)
    parser.add_argument("--only", choices=["on", "off"])
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
