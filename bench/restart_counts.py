"""The restart dry run's counts on a seeded store: ``python -m bench.restart_counts [--events 50000] [--data DIR]``.

A bulk restart first counts what it would do (the API's dry run, the console's "Restart all matching…"
confirmation, a restart job's total): one aggregation per status over the filter (``EventRepo.group_counts`` over
``EventFilter.query()``). This times it, with the count command beside it, for filters that mix a search with
statuses and a webhook, on ``--events`` events seeded as :mod:`bench.scale` seeds them (``--data`` keeps the store
for reruns). Each run writes ``bench/results/restart-counts-<timestamp>.json``; ``--report A.json B.json …`` writes
the section "restart-counts" of ``docs/benchmarks.md`` from runs of several checkouts, side by side.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import DOCS, RESULTS, replace_section
from bench.scale import DB, seed
from hookpost.admin.events import parse_filter
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo

REPEATS = 3


def filters(hook: str) -> dict[str, dict[str, Any]]:
    """The filters to time (label → :func:`parse_filter` arguments)."""
    return {
        "search 503": {"search": "503"},
        "search timeout, status failed": {"search": "timeout", "statuses": ["failed"]},
        "search order.created, status failed + retrying": {"search": "order.created",
                                                            "statuses": ["failed", "retrying"]},
        "search 503, webhook": {"search": "503", "webhook_id": hook},
        "status failed + retrying, webhook": {"statuses": ["failed", "retrying"], "webhook_id": hook},
    }


async def measure(store: Store, hook: str) -> dict[str, Any]:
    """Time the per-status aggregation and the count command of each filter (median of :data:`REPEATS`)."""
    out = {}
    for label, kw in filters(hook).items():
        query = parse_filter(**kw).query()
        groups, counts, n = [], [], 0
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            by_status = await store.events.group_counts("status", query)
            t1 = time.perf_counter()
            n = await store.events.count(query)
            counts.append(time.perf_counter() - t1)
            groups.append(t1 - t0)
            if sum(by_status.values()) != n:
                raise RuntimeError(f"{label}: the aggregation counted {sum(by_status.values())}, the count {n}")
        out[label] = {"matched": n, "group_ms": statistics.median(groups) * 1000,
                      "count_ms": statistics.median(counts) * 1000}
        print(f"  {label}: {n:,} matched, aggregation {out[label]['group_ms']:.0f} ms, count "
              f"{out[label]['count_ms']:.0f} ms", file=sys.stderr, flush=True)
    return out


async def main_async(args: argparse.Namespace) -> None:
    """Seed (or reuse) a store, measure, write the result file."""
    folder = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="hookpost-restart-counts-"))
    server = LocalMongo(folder)
    server.start()
    try:
        store = Store.connect(server.url, DB, timeout_ms=60000)
        await store.ensure_indexes()
        meta = await seed(store, args.events)
        measured = await measure(store, meta["hooks"][3])
        await store.close()
    finally:
        server.stop()
    now = datetime.now(UTC)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {"events": args.events, "commit": commit, "when": now.strftime("%Y-%m-%d %H:%M UTC"), "filters": measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"restart-counts-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}", file=sys.stderr)


def render(runs: list[dict[str, Any]]) -> str:
    """The docs section: one column pair per run (checkout)."""
    head = " | ".join(f"`{r['commit']}` aggregation ms | `{r['commit']}` count ms" for r in runs)
    lines = [f"| filter | matched | {head} |", "|---|---|" + "---|---|" * len(runs)]
    for label in runs[0]["filters"]:
        cells = " | ".join(f"{r['filters'][label]['group_ms']:,.0f} | {r['filters'][label]['count_ms']:,.0f}"
                           for r in runs)
        lines.append(f"| {label} | {runs[0]['filters'][label]['matched']:,} | {cells} |")
    return "\n".join([
        "## The restart dry run's counts (`python -m bench.restart_counts`)", "",
        f"{', '.join(r['when'] + ' (`' + r['commit'] + '`)' for r in runs)}; {runs[0]['events']:,} events seeded as "
        "`bench.scale` seeds them, on the local store. A bulk restart's dry run (the API's, the console's \"Restart "
        "all matching…\" confirmation, a restart job's total) is one aggregation per status over the filter; the "
        f"count command beside it. Medians of {REPEATS}; every run checks that both agree.", "", *lines,
    ])


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run (or render ``--report`` files)."""
    parser = argparse.ArgumentParser(prog="python -m bench.restart_counts", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--data", help="keep the seeded store in this folder (reused when it holds --events)")
    parser.add_argument("--report", type=Path, nargs="+", help="write the docs section from these result files")
    args = parser.parse_args(argv)
    if args.report:
        replace_section(DOCS, "restart-counts", render([json.loads(p.read_text()) for p in args.report]))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
