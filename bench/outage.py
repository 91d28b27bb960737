"""Long outage, compressed: what a receiver that is down far longer than the whole retry schedule costs, with the
circuit breaker on and off.

A dispatcher (in this process) with a retry schedule of 50 ms × 9 delivers ``--events`` changes to two webhooks:
one whose endpoint answers 503 for ``--outage`` seconds, one healthy. It reports the requests the dead endpoint got
while down (and how many per probe interval), how many events ended Failed, how long the held backlog took to
drain once the endpoint was back, and the healthy endpoint's publish → receipt latency (p50/p99/max) during the
outage. The changes are published at once (``--publish burst``, the default) or spread evenly over the first half
of the outage (``--publish steady``). The results go into the section "Long outage, compressed" of
``docs/benchmarks.md`` and ``bench/results/outage/<timestamp>.json`` (``--no-save`` for neither), with the
machine's load.

    python -m bench.outage                      # 2,000 events, 8 s outage, breaker on, then off
    python -m bench.outage --events 500 --outage 4 --only on --no-save
"""

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.report import replace_section
from bench.scenarios import percentile
from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.settings import load_settings
from hookpost.producer import Publisher
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo
from tests.conftest import RABBIT_URL, cleanup
from tests.helpers import Receiver, running_worker, wait_until

PROBE = 0.5
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
RESULTS = Path(__file__).resolve().parent / "results" / "outage"


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


class Healthy:
    """Answers 200; records when each request came and the publish time its change carries (``data.sent``)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, float]] = []  # (receipt, publish), epoch seconds

    async def respond(self, n: int, request: web.Request) -> web.StreamResponse:
        at = time.time()
        body = json.loads(await request.read())
        self.received.append((at, float(body["data"]["details"]["sent"])))
        return web.Response(status=200)

    def latency(self, until: float) -> dict[str, Any]:
        """p50/p99/max publish → receipt in ms of the deliveries received before ``until``, and how many; and the
        p99 of all of them (those that arrived later included)."""
        ms = sorted((at - sent) * 1000 for at, sent in self.received if at < until)
        every = sorted((at - sent) * 1000 for at, sent in self.received)
        return {"healthy_during_outage": len(ms), "healthy_p50_ms": round(percentile(ms, 50)),
                "healthy_p99_ms": round(percentile(ms, 99)), "healthy_max_ms": round(ms[-1]) if ms else None,
                "healthy_p99_all_ms": round(percentile(every, 99))}


def busiest(times: list[float], width: float) -> int:
    """The most of ``times`` in any window ``width`` seconds wide."""
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


async def publish(s: Any, events: int, how: str, over: float) -> None:
    """Publish ``events`` changes, each carrying its publish time: at once, or evenly over ``over`` seconds."""
    async with Publisher.from_settings(s) as p:
        chunks = 1 if how == "burst" else max(1, round(over * 10))  # steady: ten chunks a second
        size = -(-events // chunks)
        began = time.time()
        for c in range(chunks):
            await asyncio.sleep(max(0.0, began + c * over / chunks - time.time()))
            sent = time.time()
            await p.publish_many([ChangeEvent(id=f"o-{i}", type="article.updated", entity=Entity(kind="a", id=str(i)),
                                              data={"sent": sent})
                                  for i in range(c * size, min(events, (c + 1) * size))])


async def one_run(mongo_url: str, *, breaker: bool, events: int, outage: float, how: str = "burst"
                  ) -> dict[str, Any]:
    """One run on a fresh prefix and database; return what it measured."""
    tag = uuid.uuid4().hex[:10]
    s = load_settings(rabbitmq_url=RABBIT_URL, mongodb_url=mongo_url, mongodb_db=f"hpbench_{tag}",
                      prefix=f"hpbench-{tag}", allow_private_targets=True, retry_delays=",".join(["50ms"] * 9),
                      max_attempts=10, http_timeout="1s", ops_port=0, log_level="WARNING", breaker=breaker,
                      breaker_threshold=10, breaker_probe=f"{PROBE}s", breaker_probe_max="1s", breaker_poll="100ms",
                      reconcile_interval="1h")
    dead = Dead()
    healthy = Healthy()
    rx_dead = await Receiver(respond=dead.respond).start()
    rx_ok = await Receiver(respond=healthy.respond).start()
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    try:
        await store.ensure_indexes()
        await store.webhooks.create(rx_dead.url, ["article.*"])
        await store.webhooks.create(rx_ok.url, ["article.*"])
        async with running_worker(s):
            began = time.time()
            await publish(s, events, how, outage / 2)
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
        return {"breaker": breaker, "publish": how, "events": events, "outage_s": outage,
                "requests_while_down": len(down_requests),
                "requests_after_the_first_second": len(after_first_second),
                "busiest_probe_interval": busiest(after_first_second, PROBE),
                "failed": counts.get("Failed", 0), "finished": counts.get("Finished", 0),
                "seconds_to_settle_after_recovery": round(drained, 2), "healthy_received": len(rx_ok.requests),
                **healthy.latency(back)}
    finally:
        await store.close()
        await rx_dead.stop()
        await rx_ok.stop()
        await cleanup(s)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the asked runs against a fresh nx-27017; return them with the time and the machine's load."""
    server = LocalMongo(Path(tempfile.mkdtemp(prefix="hp-outage-")))
    server.start()
    out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "load": [os.getloadavg()], "runs": []}
    try:
        for repeat in range(1, args.repeats + 1):
            for how in args.publish:
                for mode in (["on", "off"] if args.only is None else [args.only]):
                    result = await one_run(server.url, breaker=mode == "on", events=args.events,
                                           outage=args.outage, how=how)
                    result["repeat"] = repeat
                    print(json.dumps(result), flush=True)
                    out["runs"].append(result)
        out["load"].append(os.getloadavg())
        return out
    finally:
        server.stop()


def render(out: dict[str, Any]) -> str:
    """The page section for one run of this script."""
    load = out["load"]
    runs = out["runs"]
    first = runs[0] if runs else {"events": 0, "outage_s": 0}
    lines = ["## Long outage, compressed (`python -m bench.outage`)", "",
             f"On {out['started'][:16].replace('T', ' ')} UTC: {first['events']:,} changes to two webhooks, one "
             f"whose endpoint answers 503 for {first['outage_s']:.0f} s and one healthy; retry schedule 50 ms × 9, "
             f"probe {PROBE * 1000:.0f} ms to 1 s, breaker threshold 10; the dispatcher, the receivers and the "
             "publisher in one process. *Burst*: every change published at once at the start; "
             "*steady*: spread evenly over the first half of the outage. Healthy latency is publish → receipt of the "
             "healthy webhook's deliveries that arrived while the other endpoint was down (the last column: all of "
             "them, the late ones included). Machine load (`uptime`, "
             f"1/5/15-minute averages, 2 cores) {' / '.join(f'{v:.2f}' for v in load[0])} at the start and "
             f"{' / '.join(f'{v:.2f}' for v in load[-1])} at the end; other work shared the machine.", "",
             "| publish | breaker | requests to the dead endpoint while down | of them after the first second | "
             "busiest 0.5 s after it | Failed | settled after recovery | healthy received while down | "
             "healthy p50 ms | healthy p99 ms | healthy max ms | healthy p99 ms, all |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["publish"], not r["breaker"], r.get("repeat", 1))):
        lines.append(f"| {r['publish']} | {'on' if r['breaker'] else 'off'} | {r['requests_while_down']:,} | "
                     f"{r['requests_after_the_first_second']:,} | {r['busiest_probe_interval']} | {r['failed']:,} | "
                     f"{r['seconds_to_settle_after_recovery']} s | {r['healthy_during_outage']:,} of "
                     f"{r['events']:,} | {r['healthy_p50_ms']} | {r['healthy_p99_ms']} | {r['healthy_max_ms']} | "
                     f"{r['healthy_p99_all_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run, and put the results into ``docs/benchmarks.md`` (unless ``--no-save``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--outage", type=float, default=8.0)
    parser.add_argument("--only", choices=["on", "off"])
    parser.add_argument("--publish", nargs="*", choices=["burst", "steady"], default=["burst"])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (publish, breaker) pair")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--report", type=Path, help="measure nothing: put this result file into the docs page")
    args = parser.parse_args(argv)
    if args.report:
        replace_section(DOCS, "outage", render(json.loads(args.report.read_text())))
        return
    out = asyncio.run(main_async(args))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(out, indent=2))
        replace_section(DOCS, "outage", render(out))
        print(f"wrote {path} and {DOCS}")


if __name__ == "__main__":
    main()
