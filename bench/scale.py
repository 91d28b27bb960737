"""Operator queries at scale: ``python -m bench.scale --events 100000 [--data DIR] [--repeats 3]``.

Seeds ``--events`` webhook events over 10 days (kept in ``--data DIR`` to measure again without seeding: a
1,000,000-event store takes minutes to seed and is run by hand, not in CI), then times, each ``--repeats`` times:

- ``hookpost events list --search …`` for each kind of term, and the same query in-process (``EventRepo.find``);
- ``hookpost events list`` with each indexed filter, and deep keyset pages (``--before`` an event 90% down);
- ``hookpost events stats --since 24h``.

Writes ``bench/results/scale-<timestamp>.json`` and the section "scale-<events>" of ``docs/benchmarks.md``.
"""

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.procs import REPO, base_env, venv_script
from bench.report import replace_section
from hookpost.admin.events import parse_filter
from hookpost.common.ids import new_id
from hookpost.common.models import Entity, EventStatus, WebhookEvent
from hookpost.store import Store
from hookpost.store.events import event_doc
from hookpost.store.localserver import LocalMongo

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
TYPES = ["article.updated", "article.deleted", "order.created", "stock.level.changed"]
ERRORS = ["Timeout: no complete response within 15s", "ConnectError: Cannot connect to host 10.1.2.3:443 "
          "ssl:default [Connection refused]", "HTTP 503", "HTTP 500"]
DB = "scale"
WALL_MAX_S, QUERY_MAX_S, STATS_MAX_S = 0.5, 0.05, 1.0


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_docs(start: int, count: int, n: int, hooks: list[str], now: datetime) -> list[dict[str, Any]]:
    """Events ``start``…``start+count`` of ``n`` spread over 10 days before ``now``: every status and type; a
    Failed or Retrying event has a last error (timeout, connection refused, HTTP 503 or 500)."""
    rng = random.Random(start)
    docs = []
    statuses = list(EventStatus)
    for i in range(start, start + count):
        created = now - timedelta(days=10) * (1 - i / n)
        ms = int(created.timestamp() * 1000)
        status = statuses[rng.randrange(4)]
        etype = TYPES[rng.randrange(len(TYPES))]
        failed = status in (EventStatus.FAILED, EventStatus.RETRYING)
        error = ERRORS[i % len(ERRORS)] if failed else None
        code = 503 if error == "HTTP 503" else 500 if error == "HTTP 500" else None
        eid = new_id("evt", ms)
        docs.append(event_doc(WebhookEvent.model_construct(
            id=eid, webhook_id=hooks[rng.randrange(len(hooks))], change_id=f"chg-{i}", type=etype,
            entity=Entity(kind=etype.split(".")[0], id=f"E-{rng.randrange(max(60, n // 100))}"),
            payload={"id": eid, "type": etype}, status=status,
            attempt_count=10 if status == EventStatus.FAILED else rng.randrange(1, 4), budget_start=0,
            next_attempt_at=None, next_attempt_ms=ms + 60000 if status == EventStatus.RETRYING else None,
            last_status_code=code, last_error=error, created_at=created, created_ms=ms, updated_at=created,
            updated_ms=ms, finished_at=None)))
    return docs


async def seed(store: Store, n: int) -> dict[str, Any]:
    """Seed ``n`` events (unless the store has them already); return what was seeded and how long it took."""
    have = await store.events.coll.estimated_document_count()
    meta = await store.db["bench_meta"].find_one({"_id": "scale"})
    if meta and have >= n and meta.get("events") == n:
        log(f"store already holds {have:,} events: not seeding")
        return {**meta, "seed_s": meta.get("seed_s")}
    await store.events.coll.drop()
    await store.ensure_indexes()
    hooks = [new_id("wh") for _ in range(20)]
    now = datetime.now(UTC)
    t0 = time.monotonic()
    for start in range(0, n, 10000):
        docs = make_docs(start, min(10000, n - start), n, hooks, now)
        for i in range(0, len(docs), 1000):
            await store.events.coll.insert_many(docs[i:i + 1000], ordered=False)
        if start and start % 100000 == 0:
            log(f"  seeded {start:,} events ({time.monotonic() - t0:.0f}s)")
    meta = {"_id": "scale", "events": n, "hooks": hooks, "seeded_at": now.isoformat(), "seed_s": time.monotonic() - t0}
    await store.db["bench_meta"].replace_one({"_id": "scale"}, meta, upsert=True)
    return meta


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def cli(url: str, *args: str) -> tuple[float, str]:
    """Run ``hookpost ARGS`` against the store; return wall seconds and output."""
    env = base_env()
    env.update({"HOOKPOST_MONGODB_URL": url, "HOOKPOST_MONGODB_DB": DB, "HOOKPOST_LOG_LEVEL": "WARNING"})
    t0 = time.perf_counter()
    proc = subprocess.run([venv_script("hookpost"), *args], env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"hookpost {' '.join(args)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return wall, proc.stdout + proc.stderr


async def probes(store: Store, meta: dict[str, Any], n: int) -> dict[str, list[str]]:
    """The commands to time (label → ``events list`` arguments), with ids taken from the seeded store."""
    deep = await store.events.coll.find({}, {"_id": 1}).sort("created_ms", 1).skip(n // 10).limit(1).to_list()
    oldest_failed = await store.events.find(parse_filter(statuses=["failed"]), limit=1, newest_first=False)
    some = await store.events.coll.find({"created_ms": {"$gte": 0}}).sort("created_ms", -1).skip(n // 3).limit(
        1).to_list()
    ev = some[0]
    hook = meta["hooks"][3]
    return {
        "search timeout": ["--search", "timeout"],
        "search refused": ["--search", "refused"],
        "search 503": ["--search", "503"],
        "search entity id": ["--search", ev["entity"]["id"]],
        "search change id": ["--search", ev["change_id"]],
        "search change id prefix": ["--search", ev["change_id"][:-1] + "*"],
        "search event id": ["--search", ev["_id"]],
        "search event id prefix": ["--search", ev["_id"][:13] + "*"],
        "search type": ["--search", "order.created"],
        "search nothing": ["--search", "no-such-thing"],
        "status failed, type order.*, search 503": ["--status", "failed", "--type", "order.*", "--search", "503"],
        "status failed": ["--status", "failed"],
        "status new + retrying": ["--status", "new", "--status", "retrying"],
        "status failed, since 2d": ["--status", "failed", "--since", "2d"],
        "type order.created": ["--type", "order.created"],
        "type article.*": ["--type", "article.*"],
        "webhook": ["--webhook", hook],
        "entity": ["--entity", ev["entity"]["id"]],
        "webhook + status failed": ["--webhook", hook, "--status", "failed"],
        "deep page (90% down), no filter": ["--before", deep[0]["_id"]],
        "deep page (90% down), status failed": ["--status", "failed", "--before", deep[0]["_id"]],
        "deep page (90% down), webhook": ["--webhook", hook, "--before", deep[0]["_id"]],
        # the deepest page there is: past the oldest Failed event (nothing left to find)
        "past the last page, status failed": ["--status", "failed", "--before", oldest_failed[0].id],
    }


def _flt(args: list[str]) -> Any:
    def one(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args else None
    statuses = [args[i + 1] for i, a in enumerate(args) if a == "--status"]
    return parse_filter(statuses, one("--type"), one("--webhook"), one("--entity"), one("--since"), None,
                        one("--search"), one("--before"))


async def measure(url: str, store: Store, meta: dict[str, Any], n: int, repeats: int) -> dict[str, Any]:
    """Time every probe (whole command and in-process query) and ``events stats --since 24h``."""
    out: dict[str, Any] = {"queries": {}}
    out["startup_s"] = summarize([cli(url, "--help")[0] for _ in range(repeats)])
    for label, args in (await probes(store, meta, n)).items():
        if not args:
            continue
        walls, rows = [], 0
        for _ in range(repeats):
            wall, text = cli(url, "events", "list", *args)
            walls.append(wall)
            rows = len([ln for ln in text.splitlines() if ln.startswith("evt_")])
        flt, inproc = _flt(args), []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await store.events.find(flt, limit=51)
            inproc.append(time.perf_counter() - t0)
        out["queries"][label] = {"args": args, "wall_s": summarize(walls), "query_s": summarize(inproc),
                                 "rows": rows, "branches": len(flt.branches())}
        log(f"  {label}: wall {statistics.median(walls):.2f}s, query {statistics.median(inproc) * 1000:.1f} ms, "
            f"{rows} rows")
    walls = [cli(url, "events", "stats", "--since", "24h")[0] for _ in range(repeats)]
    inproc = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        query = parse_filter(since="24h").query()
        for status in EventStatus:
            await store.events.count({**query, "status": status.value})
        await store.events.counts_by("type", query)
        await store.events.counts_by("webhook_id", query)
        await store.events.find(parse_filter(statuses=["retrying"], since="24h"), limit=1, newest_first=False)
        inproc.append(time.perf_counter() - t0)
    out["stats_24h"] = {"wall_s": summarize(walls), "query_s": summarize(inproc)}
    log(f"  stats --since 24h: wall {statistics.median(walls):.2f}s, query {statistics.median(inproc):.2f}s")
    return out


def verdict(ok: bool) -> str:
    """A cell saying whether a target is met."""
    return "yes" if ok else "**no**"


def render(res: dict[str, Any]) -> str:
    """The docs section for one run."""
    n = res["events"]
    m = res["measure"]
    lines = [f"## Operator queries on {n:,} events (`python -m bench.scale --events {n}`)", "",
             f"{res['when']}; {res['machine']}. Seeded {n:,} events over 10 days "
             f"(seeding took {res['seed_s'] or 0:.0f} s). Wall time of the whole command (a new interpreter each "
             f"time; `hookpost --help` alone {m['startup_s']['median']:.2f} s) and of the same query in-process "
             f"(`EventRepo.find`, 51 rows), median (min–max) of {res['repeats']}. Targets: whole command ≤ "
             f"{WALL_MAX_S} s, query ≤ {QUERY_MAX_S * 1000:.0f} ms; `events stats --since 24h` ≤ {STATS_MAX_S} s.", "",
             "| command (`hookpost events list …`) | wall s | query ms | rows | queries | meets both |",
             "|---|---|---|---|---|---|"]
    for label, q in m["queries"].items():
        w, qs = q["wall_s"], q["query_s"]
        ok = w["median"] <= WALL_MAX_S and qs["median"] <= QUERY_MAX_S
        lines.append(f"| {label}: `{' '.join(q['args'])}` | {w['median']:.2f} ({w['min']:.2f}–{w['max']:.2f}) | "
                     f"{qs['median'] * 1000:.1f} ({qs['min'] * 1000:.1f}–{qs['max'] * 1000:.1f}) | {q['rows']} | "
                     f"{q['branches']} | {verdict(ok)} |")
    st = m["stats_24h"]
    lines += ["", f"`hookpost events stats --since 24h`: wall {st['wall_s']['median']:.2f} s "
                  f"({st['wall_s']['min']:.2f}–{st['wall_s']['max']:.2f}), counting alone {st['query_s']['median']:.2f}"
                  f" s: target {'met' if st['wall_s']['median'] <= STATS_MAX_S else '**not met**'}.", "",
              "\"queries\" is how many indexed queries the filter becomes (one per search condition and status, "
              "merged newest first). Most of the wall time is starting the interpreter and importing the CLI "
              "(`hookpost --help` alone, above), which rises with the machine's load: load average (1, 5, 15 min) "
              f"at the start and end of the run: {res['load_start']} / {res['load_end']}."]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    """Seed (or reuse) a store, measure, write the results and the docs section."""
    folder = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="hookpost-scale-"))
    server = LocalMongo(folder)
    server.start()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    try:
        store = Store.connect(server.url, DB, timeout_ms=60000)
        await store.ensure_indexes()
        log(f"store {server.url}, data in {folder}")
        meta = await seed(store, args.events)
        log("measuring")
        measured = await measure(server.url, store, meta, args.events, args.repeats)
        await store.close()
    finally:
        server.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    res = {"events": args.events, "repeats": args.repeats, "seed_s": meta.get("seed_s"), "measure": measured,
           "when": stamp, "machine": f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} "
                                     f"cores ({cpu})",
           "load_start": " ".join(load_start), "load_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scale-{stamp}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    replace_section(DOCS, f"scale-{args.events}", render(res))
    log(f"wrote {out.relative_to(REPO)} and the section scale-{args.events} of docs/benchmarks.md")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to seed (default 100,000)")
    parser.add_argument("--data", help="keep the store's data here and reuse it when it holds --events already")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render", metavar="RESULT_JSON", help="measure nothing: write the section from a result")
    args = parser.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        replace_section(DOCS, f"scale-{res['events']}", render(res))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
