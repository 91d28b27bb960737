"""Render benchmark results as ``docs/benchmarks.md`` and the chart ``docs/benchmarks.png``."""

import json
import math
from pathlib import Path
from typing import Any

PROCS = ("dispatcher", "store", "broker", "receivers", "bench (publisher)")

# targets
RSS_LIMIT_MB = 200.0
RSS_FLAT_MB = 20.0
ISOLATION_MIN = 0.9
CPU_RATIO_MAX = 1.5
CLI_MAX_S = 1.0
STORE_OPS_MAX = 1.5
LATENCY_P99_MAX_MS = 100.0
JANITOR_DELIVERY_MIN = 0.9
API_P95_MAX_MS = 50.0


def get(data: Any, path: str) -> Any:
    """Return ``data[a][b]…`` for ``"a.b…"``; None if any part is missing.

    Keys may contain dots themselves (summaries are keyed ``"cpu.per_1000.dispatcher"``): the longest key that
    matches wins. A number indexes a list.
    """
    parts = path.split(".")
    while parts:
        if isinstance(data, list) and parts[0].isdigit():
            idx = int(parts.pop(0))
            if idx >= len(data):
                return None
            data = data[idx]
            continue
        if not isinstance(data, dict):
            return None
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key in data:
                data, parts = data[key], parts[n:]
                break
        else:
            return None
    return data


def num(value: float | None, digits: int = 0) -> str:
    """Format a number with thousands separators (``–`` for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def med(summary: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    """``median (min–max)`` of a summary."""
    if not summary:
        return "–"
    m, lo, hi = (summary[k] * scale for k in ("median", "min", "max"))
    if summary.get("runs", 1) == 1:
        return num(m, digits)
    return f"{num(m, digits)} ({num(lo, digits)}–{num(hi, digits)})"


def verdict(ok: bool | None) -> str:
    """``met`` / ``**missed**`` / ``–``."""
    return "–" if ok is None else ("met" if ok else "**missed**")


def derived(r: dict[str, Any]) -> dict[str, Any]:
    """Numbers that combine measurements: Hookpost against the bare loops."""
    out: dict[str, Any] = {}
    tp = get(r, "throughput.summary.deliveries_per_s.median")
    http = get(r, "limits.http.summary.per_s.median")
    amqp = get(r, "limits.amqp.summary.per_s.median")
    if tp and http and amqp:
        out["limit_per_s"] = min(http, amqp)
        out["limit_name"] = "bare aiohttp" if http <= amqp else "bare pika"
        out["fraction_of_limit"] = tp / min(http, amqp)
    disp = get(r, "throughput.summary.cpu.per_1000.dispatcher.median")  # CPU s per 1000 = ms per delivery
    http_cpu = get(r, "limits.http.summary.cpu_ms_per_op.median")
    amqp_cpu = get(r, "limits.amqp.summary.cpu_ms_per_op.median")
    if disp and http_cpu and amqp_cpu:
        out["bare_cpu_ms"] = http_cpu + amqp_cpu
        out["bare_http_cpu_ms"] = http_cpu
        out["cpu_ratio"] = disp / (http_cpu + amqp_cpu)
    return out


def targets(r: dict[str, Any], d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(measurement, target, result, verdict)`` rows."""
    rows: list[tuple[str, str, str, str]] = []
    if get(r, "throughput.summary"):
        rows.append(("1. end-to-end throughput, 2 webhooks", "(reported)",
                     f"{med(get(r, 'throughput.summary.deliveries_per_s'))} deliveries/s", "–"))
        ops = get(r, "throughput.summary.store_ops_per_delivery.max")
        rows.append(("1. store operations per delivery (happy path)", f"≤ {STORE_OPS_MAX} on average",
                     med(get(r, "throughput.summary.store_ops_per_delivery"), 3),
                     verdict(ops <= STORE_OPS_MAX) if ops is not None else "–"))
    if get(r, "latency.summary"):
        p99 = get(r, "latency.summary.p99_ms.median")
        rows.append((f"2. latency at {num(get(r, 'latency.rate'))} deliveries/s (half the maximum)",
                     f"p99 < {LATENCY_P99_MAX_MS:.0f} ms",
                     ", ".join(f"{q} {num(get(r, f'latency.summary.{q}_ms.median'))} ms"
                               for q in ("p50", "p95", "p99")), verdict(p99 < LATENCY_P99_MAX_MS) if p99 else "–"))
    if get(r, "memory.summary"):
        peak = get(r, "memory.summary.rss_peak_mb.max")
        growth = get(r, "memory.summary.rss_growth_after_5s_mb.max")
        rows.append(("3. dispatcher peak RSS with a backlog of "
                     f"{num(get(r, 'memory.backlog'))} changes", f"< {RSS_LIMIT_MB:.0f} MB and flat",
                     f"peak {med(get(r, 'memory.summary.rss_peak_mb'), 0)} MB; growth after the first 5 s "
                     f"≤ {num(growth, 1)} MB", verdict(peak < RSS_LIMIT_MB and growth < RSS_FLAT_MB)))
    if get(r, "isolation.summary.fraction_of_control"):
        # the target's definition: against the same three webhooks all healthy (the 2-webhook baseline also
        # measures what a third subscription costs, not only the hang)
        f = get(r, "isolation.summary.fraction_of_control.median")
        rows.append(("4. throughput to healthy endpoints while one hangs",
                     f"≥ {ISOLATION_MIN} of the control (all three healthy)",
                     med(get(r, "isolation.summary.fraction_of_control"), 2)
                     + f" (against the 2-webhook baseline: {med(get(r, 'isolation.summary.fraction'), 2)})",
                     verdict(f >= ISOLATION_MIN)))
    if "fraction_of_limit" in d:
        rows.append(("5a. Hookpost throughput vs the smaller bare loop", "(reported)",
                     f"{d['fraction_of_limit']:.2f} of {d['limit_name']} ({num(d['limit_per_s'])}/s)", "–"))
    if "cpu_ratio" in d:
        rows.append(("5b. dispatcher CPU per delivery vs bare aiohttp POST + bare pika message",
                     f"≤ {CPU_RATIO_MAX}×",
                     f"{d['cpu_ratio']:.1f}× ({num(get(r, 'throughput.summary.cpu.per_1000.dispatcher.median'), 2)} "
                     f"ms vs {num(d['bare_cpu_ms'], 3)} ms)", verdict(d["cpu_ratio"] <= CPU_RATIO_MAX)))
    for label, q in (get(r, "cli.queries") or {}).items():
        rows.append((f"6. `hookpost events list {label}` on {num(get(r, 'cli.events'))} events",
                     f"well under {CLI_MAX_S:.0f} s", f"{med(q['wall_s'], 2)} s",
                     verdict(q["wall_s"]["median"] < CLI_MAX_S)))
    for label, q in (get(r, "api.queries") or {}).items():
        rows.append((f"8. `GET /api/v1/events?{label}` on {num(get(r, 'api.events'))} events",
                     f"p95 < {API_P95_MAX_MS:.0f} ms", f"p95 {num(q['p95_ms'], 1)} ms",
                     verdict(q["p95_ms"] < API_P95_MAX_MS)))
    if get(r, "janitor.summary"):
        got = get(r, "janitor.summary.deliveries_during.median")
        exp = get(r, "janitor.summary.expected_during.median")
        rows.append((f"7. dispatcher keeps delivering during a janitor pass over {num(get(r, 'janitor.runs.0.events'))}"
                     " events", f"≥ {JANITOR_DELIVERY_MIN:.0%} of the trickle delivered meanwhile",
                     f"{num(got)} of ~{num(exp)}; max latency "
                     f"{med(get(r, 'janitor.summary.max_latency_during_ms'))} ms",
                     verdict(got >= JANITOR_DELIVERY_MIN * exp if exp else None)))
    return rows


def _table(headers: list[str], rows: list[list[str]] | list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_rows(summary: dict[str, Any], per: str) -> list[list[str]]:
    rows = []
    for proc in PROCS:
        cpu = summary.get(f"cpu.per_1000.{proc}")
        share = summary.get(f"cpu.share.{proc}")
        if cpu:
            rows.append([proc, med(cpu, 2), med(share, 0, 100) + " %" if share else "–"])
    others = summary.get("cpu.share.others")
    if others:
        rows.append(["others (not part of the benchmark)", "–", med(others, 0, 100) + " %"])
    return rows


def _short(frame: str, width: int = 90) -> str:
    frame = frame.replace("create_log_exception_decorator.<locals>.log_exception.<locals>.", "")
    return frame if len(frame) <= width else frame[: width - 1] + "…"


def _earlier(r: dict[str, Any], name: str) -> str:
    """Notes under a section's description: taken from an earlier run; runs disturbed by broker restarts."""
    notes = []
    stamp = get(r, f"from_earlier.{name}")
    if stamp:
        notes.append(f"From the earlier run {stamp}: not measured in the latest run.")
    sec = r.get(name) or {}
    repeated = sec.get("repeated_runs")
    if repeated:
        notes.append(f"{repeated} run(s) during which another suite restarted the shared broker (or that failed) "
                     "were run again; the tables use the repeats.")
    runs = [x for key in ("runs", "hang_runs", "control_runs") for x in sec.get(key) or [] if isinstance(x, dict)]
    kept = [i + 1 for i, x in enumerate(runs) if x.get("broker_disturbed")]
    if kept:
        notes.append(f"Run(s) {', '.join(map(str, kept))} of {len(runs)} saw a restart of the shared broker by "
                     "another suite (the dispatcher reconnected and went on); they are included.")
    return "".join(f"\n\n*{n}*" for n in notes)


def render(r: dict[str, Any]) -> str:
    """Return the Markdown page for results ``r``."""
    meta, m = r["meta"], r["meta"]["machine"]
    plan = meta["plan"]
    d = derived(r)
    out: list[str] = []
    total_min = meta.get("duration_s", 0) / 60
    settings_text = ", ".join(f"`{k.upper()}` {v}" for k, v in (meta.get("dispatcher_settings") or {}).items()
                              if k != "http_timeout")
    dirty = m.get("git_dirty") or []
    commit = f"commit `{m['git']}`" + (f" plus uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}"
                                        if dirty else "")
    kind = ("`--quick`" if meta["quick"] else "full") + (" `--profile`" if meta.get("profile") else "")
    out.append(f"""# Benchmarks

Measured on **{meta['date']}** (run `{meta['timestamp']}`, {commit}, {kind} run, {total_min:.0f} minutes) with
`python -m bench.run`. Regenerated by every run; the raw numbers are in
`bench/results/<timestamp>.json` (git-ignored).

**Read the numbers with care: a 2-core machine runs everything here** — the broker, the store, the dispatcher,
the receivers and the publisher — so every process takes CPU from the others. Every figure is the **median of
{plan['repeats']} runs** (min–max in brackets) unless said otherwise; the *others* rows show how much of the
machine's CPU went to processes outside the benchmark during the measurement (other users of a shared machine).
Figures from different machines do not compare.

![throughput and latency](benchmarks.png)

## Machine and software
""")
    free = m["free_g"].splitlines()
    mem_line = next((ln for ln in free if ln.startswith("Mem:")), "")
    out.append(_table(["", ""], [
        ["cores (`nproc`)", m["nproc"]], ["CPU", m["cpu_model"]],
        ["memory (`free -g`)", f"`{' '.join(mem_line.split())}` (total, used, free, … GB)"],
        ["OS", m["os"]], ["Python", m["python"]],
        ["pika / aiohttp / pymongo / pydantic", f"{m['pika']} / {m['aiohttp']} / {m['pymongo']} / {m['pydantic']}"],
        ["store", f"nx-27017 {m['nx-27017']} (the local MongoDB stand-in: single-threaded, one request at a time)"],
        ["broker", f"RabbitMQ {m['rabbitmq']} on the same machine, quorum queues (the default)"],
    ]))
    out.append(f"""

## How to run

```
make bench                                   # = python -m bench.run (full: ~14 minutes)
python -m bench.run --quick                  # smaller sizes, ~2–3 minutes (a smoke test)
python -m bench.run --only throughput latency
python -m bench.run --only throughput --profile   # + one run with py-spy on the dispatcher
```
Each run starts its own `nx-27017` on a free port and a receiver process (`bench/receiver.py`: three ports answer
200 at once, one hangs), uses a fresh `HOOKPOST_PREFIX` and database per measurement run and deletes them
afterwards, and runs `hookpost dispatcher` as a separate process (`HOOKPOST_ALLOW_PRIVATE_TARGETS=true`,
`HOOKPOST_LOG_LEVEL=WARNING`, `HOOKPOST_HTTP_TIMEOUT={plan['http_timeout']}`, every other setting at its default:
{settings_text}). CPU is read
with psutil per process: the dispatcher, the store (`nx-27017`), the broker (`beam.smp`), the receivers and the
benchmark process (which publishes). Webhooks: two, both subscribed to `article.*`, on two receiver ports.

## Targets
""")
    out.append(_table(["measurement", "target", "result (median)", ""], targets(r, d)))

    tp = r.get("throughput", {})
    if tp.get("summary"):
        s, ea = tp["summary"], _earlier(r, "throughput")
        out.append(f"""

## 1. End-to-end throughput

{num(plan['changes'])} change events published at once with `Publisher.publish_many` (windows of 500) while a
running dispatcher consumes them, fanned out to 2 webhooks: {num(plan['changes'] * 2)} deliveries. Deliveries/s
counts from the first publish to the last receipt at the receivers; CPU from the first publish until the dispatcher
counted every event Finished; store operations from the dispatcher's `hookpost_store_operations_total`.{ea}

""")
        out.append(_table(["", "median (min–max)"], [
            ["deliveries/s", med(s["deliveries_per_s"])],
            ["wall seconds", med(s["seconds"], 1)],
            ["store operations per delivery", med(s["store_ops_per_delivery"], 3)],
            ["deliveries deferred (endpoint busy → defer queue; no attempt counted)", med(s["deferred"])],
        ]))
        out.append("\n\nCPU per process:\n\n")
        out.append(_table(["process", "CPU seconds per 1,000 deliveries", "share of the machine (2 cores)"],
                          _cpu_rows(s, "delivery")))
        ops = tp["runs"][0].get("store_ops", {}) if tp.get("runs") else {}
        if ops:
            out.append("\n\nStore commands in the first run: " + ", ".join(
                f"{k.split('=')[-1]} {num(v)}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v) + ".")

    lat = r.get("latency", {})
    if lat.get("summary"):
        s = lat["summary"]
        out.append(f"""

## 2. Latency

A steady {num(lat['rate'])} deliveries/s (half the measured maximum of {num(lat['peak'])}/s):
{num(lat['rate'] / 2)} changes/s for {plan['latency_s']:.0f} s, each carrying its send time in `data.sent`
(passed to receivers as `data.details.sent`). Latency = receipt at the receiver − send time at the publisher
(publisher confirm included).{_earlier(r, 'latency')}

""")
        out.append(_table(["", "median of runs (min–max)"], [
            ["p50", med(s["p50_ms"], 1) + " ms"], ["p95", med(s["p95_ms"], 1) + " ms"],
            ["p99", med(s["p99_ms"], 1) + " ms"], ["max", med(s["max_ms"], 0) + " ms"],
            ["achieved deliveries/s", med(s["achieved_deliveries_per_s"])],
            ["dispatcher CPU seconds per 1,000 deliveries", med(s["cpu.per_1000.dispatcher"], 2)],
        ]))

    mem = r.get("memory", {})
    if mem.get("summary"):
        s = mem["summary"]
        out.append(f"""

## 3. Memory with a large backlog

{num(mem['backlog'])} change events published with no dispatcher running (`publish_many`, windows of 1000:
{mem['publish_s']:.0f} s, {num(mem['publish_per_s'])}/s; {num(mem['queued'])} in `PREFIX.changes`).
Then, {len(mem['runs'])} times on that backlog, a dispatcher starts and its RSS is sampled every 0.5 s
for {mem['watch_s']:.0f} s while it works.{_earlier(r, 'memory')}

""")
        out.append(_table(["", "median (min–max)"], [
            ["RSS when ready", med(s["rss_start_mb"], 1) + " MB"],
            ["peak RSS", med(s["rss_peak_mb"], 1) + " MB"],
            ["RSS at the end", med(s["rss_end_mb"], 1) + " MB"],
            ["growth after the first 5 s", med(s["rss_growth_after_5s_mb"], 1) + " MB"],
            [f"changes fanned out in {mem['watch_s']:.0f} s", med(s["changes_consumed"])],
            [f"events delivered in {mem['watch_s']:.0f} s", med(s["events_finished"])],
        ]))

    iso = r.get("isolation", {})
    if iso.get("summary"):
        s, ea = iso["summary"], _earlier(r, "isolation")
        out.append(f"""

## 4. Isolation: one endpoint hangs

A third webhook, on a receiver port that never answers within `HOOKPOST_HTTP_TIMEOUT={plan['http_timeout']}`, is
subscribed to the same events, so every change also makes a delivery that times out (then waits in the 10 s retry
queue). Each run is paired with the baseline run just before it (section 1, same settings: 2 webhooks). A third
webhook costs work even when it is healthy (one more event to insert, one more delivery to publish, consume and
record per change), so each pair also gets a control run with a third *healthy* webhook, throughput again counted
at the same two endpoints: the hanging run against the control shows what the hanging itself costs, and is the
target (≥ {ISOLATION_MIN}).{ea}

""")
        ctl = s.get("control_per_s")
        out.append(_table(["", "median (min–max)"], [
            ["deliveries/s to the 2 healthy endpoints, third endpoint hangs", med(s["deliveries_per_s"])],
            ["fraction of the paired baseline (2 webhooks)", med(s["fraction"], 2)],
            ["deliveries/s to the same 2 endpoints, third endpoint healthy (control)", med(ctl)],
            ["fraction of the paired control — the target", med(s.get("fraction_of_control"), 2)],
            ["deliveries deferred (busy endpoint)", med(s["deferred"])],
            ["requests that reached the hanging endpoint", med(s["hang_requests"])],
            ["others' share of the machine", med(s["cpu.share.others"], 0, 100) + " %"],
        ]))
        base = get(r, "throughput.summary") or {}
        out.append("\n\nCPU seconds per 1,000 deliveries to the two counted endpoints:\n\n")
        out.append(_table(["process", "baseline (2 webhooks)", "control (3 healthy)", "2 healthy + 1 hanging"], [
            [proc, med(base.get(f"cpu.per_1000.{proc}"), 2), med(get(s, f"control_cpu_per_1000.{proc}"), 2),
             med(s.get(f"cpu.per_1000.{proc}"), 2)] for proc in ("dispatcher", "store", "broker")]))

    lim = r.get("limits", {})
    if get(lim, "http.summary"):
        h, a, ea = lim["http"]["summary"], lim["amqp"]["summary"], _earlier(r, "limits")
        out.append(f"""

## 5. The limits on this machine

The same machine, the same run: a bare aiohttp POST loop (20 in flight, like 2 endpoints × `ENDPOINT_CONCURRENCY`
10) to the same receivers, with a body shaped like a Hookpost payload (no broker, no store, no signing), and a bare
pika loop that publishes persistent messages with confirms (windows of 500) to a quorum queue while consuming and
acking each (prefetch 200) on the same connection. CPU is the client process's own, around the loop only.{ea}

""")
        out.append(_table(["", "operations/s", "client CPU ms per operation", "broker CPU ms per operation"], [
            ["bare aiohttp POST", med(h["per_s"]), med(h["cpu_ms_per_op"], 3), "–"],
            ["bare pika publish→consume→ack", med(a["per_s"]), med(a["cpu_ms_per_op"], 3),
             med(a.get("other_cpu_ms_per_op.broker"), 3)],
            ["Hookpost (section 1)", med(get(r, "throughput.summary.deliveries_per_s")),
             med(get(r, "throughput.summary.cpu.per_1000.dispatcher"), 3),
             med(get(r, "throughput.summary.cpu.per_1000.broker"), 3)],
        ]))
        if d:
            out.append(f"""

Hookpost reaches **{d.get('fraction_of_limit', float('nan')):.2f}** of the smaller bare loop ({d.get('limit_name')}).
A delivery costs the dispatcher **{d.get('cpu_ratio', float('nan')):.1f}×** the CPU of one bare POST plus one bare
message (target ≤ {CPU_RATIO_MAX}×). Per delivery Hookpost also validates and fans out 1/2 change event, signs the
request, and writes the event and attempt records (batched); the store and broker CPU in section 1 come on top.""")

    cli = r.get("cli", {})
    if cli.get("queries"):
        out.append(f"""

## 6. `hookpost events list` on {num(cli['events'])} events

{num(cli['events'])} events spread over 10 days (`tests/seed.make_events`, inserted with `store.events.insert_new` in
batches of 1,000: {cli['seed_s']['events_s']:.0f} s), every status and type mixed. Wall time of the whole command
(a new interpreter each time; `hookpost --help` alone takes {med(cli['startup_s'], 2)} s), median of
{cli['startup_s']['runs']}, and the same query in-process (`store.events.find`, limit 50).{_earlier(r, 'cli')}

""")
        out.append(_table(["command", "wall seconds", "query alone, seconds", "rows"], [
            [f"`hookpost events list {label}`", med(q["wall_s"], 2), med(q["query_s"], 3), str(q["rows"])]
            for label, q in cli["queries"].items()]))
        slow = [(label, q) for label, q in cli["queries"].items() if q["wall_s"]["median"] >= CLI_MAX_S]
        if slow:
            why = (" A `--search` is an `$or` of five case-insensitive `$regex` conditions, which no index serves; "
                   "the stand-in serves no other client while it runs ([platform-notes.md](platform-notes.md))."
                   if any("--search" in label for label, _ in slow) else "")
            out.append("\n\nOver the target: " + "; ".join(
                f"`{label}` spends {q['query_s']['median']:.2f} s of {q['wall_s']['median']:.2f} s in the store query"
                for label, q in slow) + "." + why)

    jan = r.get("janitor", {})
    if jan.get("summary"):
        s = jan["summary"]
        run0 = jan["runs"][0]
        out.append(f"""

## 7. Janitor while the dispatcher works

{num(run0['events'])} events (10 days old and older, every status) with up to {run0['attempts_per_event']} attempt
records each, no more than its attempt count (`store.attempts.insert` in batches of 1,000), deleted by
`hookpost janitor --once --older-than 30m --status …` (batches of `HOOKPOST_JANITOR_BATCH` = 500) while a
dispatcher delivers a trickle of {num(run0['trickle_deliveries_per_s'])} deliveries/s against the same
store.{_earlier(r, 'janitor')}

""")
        out.append(_table(["", "median (min–max)"], [
            ["janitor wall seconds", med(s["janitor_s"], 1)],
            ["deliveries completed during the pass", med(s["deliveries_during"])],
            ["expected at the trickle rate", med(s["expected_during"])],
            ["max latency of deliveries published during the pass", med(s["max_latency_during_ms"]) + " ms"],
            ["p50 latency of deliveries published during the pass", med(s["p50_latency_during_ms"]) + " ms"],
            ["p50 / max latency just before the pass", f"{med(s['p50_latency_before_ms'])} / "
                                                       f"{med(s['max_latency_before_ms'])} ms"],
            ["store CPU seconds during the pass", med(s["cpu.seconds.store"], 1)],
            ["seeding: events / attempts, seconds", f"{med(s['seed_s.events_s'], 0)} / "
                                                     f"{med(s['seed_s.attempts_s'], 0)}"],
        ]))

    out.append(api_section(r))

    prof = r.get("profile")
    if prof and prof.get("self"):
        out.append(f"""

## Where the dispatcher's CPU goes

py-spy on the dispatcher during one extra throughput run ({num(prof['samples'])} samples; shares of the samples in
which it ran Python code). Raw stacks: `{prof['file']}`.{_earlier(r, 'profile')}

""")
        if prof.get("stages"):
            out.append(_stage_table(r, prof))
        out.append(_table(["package (leaf frame)", "% of samples"],
                          [[p["frame"], f"{p['pct']:.1f}"] for p in prof["packages"][:10]]))
        out.append("\n\n")
        out.append(_table(["function (inclusive)", "% of samples"],
                          [[f"`{_short(p['frame'])}`", f"{p['pct']:.1f}"] for p in prof["inclusive"][:20]]))
        out.append("\n\n")
        out.append(_table(["function (self)", "% of samples"],
                          [[f"`{_short(p['frame'])}`", f"{p['pct']:.1f}"] for p in prof["self"][:15]]))
    out.append("\n")
    return "".join(out)


def api_section(r: dict[str, Any]) -> str:
    """Return the section on ``GET /api/v1/events`` (empty if it was not measured)."""
    api = r.get("api", {})
    if not api.get("queries"):
        return ""
    head = f"""

## 8. `GET /api/v1/events` on {num(api['events'])} events

The same seeded events as section 6 (inserted in {api['seed_s']['events_s']:.0f} s); `hookpost server` as a
process of its own, then {num(api['requests'])} sequential requests per filter with `limit=50` from one aiohttp
client on the same machine (a viewer token, so each request also looks its token up in the store). Client wall
time per request, nearest-rank percentiles of one run.{_earlier(r, 'api')}

"""
    table = _table(["query", "p50 ms", "p95 ms", "p99 ms", "rows"], [
        [f"`{label}`", num(q["p50_ms"], 1), num(q["p95_ms"], 1), num(q["p99_ms"], 1), str(q["rows"])]
        for label, q in api["queries"].items()])
    slow = [label for label, q in api["queries"].items() if q["p95_ms"] >= API_P95_MAX_MS]
    tail = ""
    if slow:
        tail = (f"\n\nOver the {API_P95_MAX_MS:.0f} ms target at p95: " + ", ".join(f"`{s}`" for s in slow) + ". "
                "The stand-in answers an equality filter on an indexed field (`webhook`, `type`, `entity`), and the "
                "`before` cursor's range on `created_ms`, from that field's single-field index and then sorts every "
                "match by time before applying the limit (tens of thousands of documents for a busy webhook or "
                "type); a filter whose index leaves few matches (`status` + `since` here) stays fast. "
                "The list itself is a keyset query (no skip, "
                "no count), so the rest of a request costs a few milliseconds (see the first row). Not measured on "
                "MongoDB: there the planner can choose to walk the `created_ms` index instead, and compound indexes "
                "such as `(webhook_id, created_ms)` would serve the filter and the order together (not created: "
                "each index costs every insert on the delivery path).")
    return head + table + tail


def _stage_table(r: dict[str, Any], prof: dict[str, Any]) -> str:
    """The profile's stages as shares and as milliseconds of one delivery, against the CPU target's budget."""
    cpu = prof.get("cpu_ms_per_delivery") or get(r, "throughput.summary.cpu.per_1000.dispatcher.median")
    d = derived(r)
    rows = [[s["stage"], f"{s['pct']:.1f}", f"{cpu * s['pct'] / 100:.3f}" if cpu else "–"] for s in prof["stages"]]
    text = ["What one delivery's dispatcher CPU is spent on (the same samples, split by the stage on the stack; "
            f"{f'{cpu:.2f}' if cpu else '–'} ms per delivery in the profiled run):\n\n",
            _table(["stage", "% of samples", "≈ ms per delivery"], rows)]
    if cpu and d.get("bare_cpu_ms"):
        budget = CPU_RATIO_MAX * d["bare_cpu_ms"]
        http = next((s["pct"] for s in prof["stages"] if s["stage"].startswith("HTTP request")), 0.0) * cpu / 100
        text.append(f"""

The target's budget is {CPU_RATIO_MAX}× the bare clients = {budget:.3f} ms per delivery. The HTTP request alone
takes {http:.3f} ms (the bare aiohttp loop: {d['bare_http_cpu_ms']:.3f} ms), which leaves {budget - http:.3f} ms for
everything else a delivery needs: half a change event consumed and fanned out, one delivery published (confirmed),
consumed and acked, two batched store writes (the event stored `New`, then its outcome with the first attempt in
it) and the asyncio tasks and futures that tie it together.""")
    text.append("\n\n")
    return "".join(text)


def chart(r: dict[str, Any], path: Path) -> None:
    """Draw throughput, latency, memory and CPU per delivery in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    bars = [("Hookpost", get(r, "throughput.summary.deliveries_per_s")),
            ("Hookpost,\n1 endpoint hangs", get(r, "isolation.summary.deliveries_per_s")),
            ("bare aiohttp\nPOST", get(r, "limits.http.summary.per_s")),
            ("bare pika\npub→consume→ack", get(r, "limits.amqp.summary.per_s"))]
    bars = [(n, s) for n, s in bars if s]
    if bars:
        ys = [s["median"] for _, s in bars]
        err = [[s["median"] - s["min"] for _, s in bars], [s["max"] - s["median"] for _, s in bars]]
        ax.bar([n for n, _ in bars], ys, yerr=err, capsize=4, color=["C0", "C1", "C2", "C3"][:len(bars)])
        for i, y in enumerate(ys):
            ax.text(i, y, f"{y:,.0f}", ha="center", va="bottom")
    ax.set_title("throughput (median, min–max): deliveries or operations / s")

    ax = axes[0][1]
    runs = get(r, "latency.runs") or []
    for i, run in enumerate(runs):
        vals = sorted(run.get("histogram_ms") or [])
        if vals:
            ax.plot(vals, [(j + 1) / len(vals) for j in range(len(vals))], label=f"run {i + 1}")
    if runs:
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("publish → receipt, ms (log)")
        ax.set_ylabel("fraction of deliveries")
        ax.legend(loc="lower right")
        ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"latency CDF at {num(get(r, 'latency.rate'))} deliveries/s")

    ax = axes[1][0]
    for i, run in enumerate(get(r, "memory.runs") or []):
        pts = [(t, v) for t, v in run.get("samples_mb") or [] if t >= 0]
        ax.plot([t for t, _ in pts], [v for _, v in pts], label=f"run {i + 1}")
    if get(r, "memory.runs"):
        ax.axhline(RSS_LIMIT_MB, color="red", linestyle="--", label=f"target < {RSS_LIMIT_MB:.0f} MB")
        ax.set_ylim(0, RSS_LIMIT_MB * 1.15)
        ax.set_xlabel("seconds since the dispatcher was ready")
        ax.set_ylabel("RSS, MB")
        ax.legend(loc="lower right")
    ax.set_title(f"dispatcher RSS, backlog of {num(get(r, 'memory.backlog'))} changes")

    ax = axes[1][1]
    labels, bottoms = ["Hookpost", "bare aiohttp +\nbare pika"], [0.0, 0.0]
    for proc, color in zip(("dispatcher", "store", "broker", "receivers"), ("C0", "C4", "C3", "C2"), strict=True):
        v = get(r, f"throughput.summary.cpu.per_1000.{proc}.median")
        if v:
            ax.bar(labels[0], v, bottom=bottoms[0], color=color, label=proc)
            bottoms[0] += v
    http_cpu = get(r, "limits.http.summary.cpu_ms_per_op.median")
    amqp_cpu = get(r, "limits.amqp.summary.cpu_ms_per_op.median")
    if http_cpu and amqp_cpu:
        ax.bar(labels[1], http_cpu, color="C8", label="aiohttp client")
        ax.bar(labels[1], amqp_cpu, bottom=http_cpu, color="C9", label="pika client")
        ax.axhline(CPU_RATIO_MAX * (http_cpu + amqp_cpu), color="red", linestyle="--",
                   label=f"{CPU_RATIO_MAX}× bare clients (dispatcher target)")
    ax.set_ylabel("CPU ms per delivery")
    ax.legend(fontsize=8)
    ax.set_title("CPU per delivery by process")
    fig.suptitle(f"Hookpost benchmark {r['meta']['date']} — shared 2-core machine, medians of "
                 f"{r['meta']['plan']['repeats']} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(results: dict[str, Any], docs: Path) -> tuple[Path, Path]:
    """Write ``benchmarks.md`` and ``benchmarks.png`` into ``docs``; return their paths."""
    docs.mkdir(parents=True, exist_ok=True)
    md, png = docs / "benchmarks.md", docs / "benchmarks.png"
    chart(results, png)
    kept = kept_sections(md.read_text()) if md.exists() else ""
    md.write_text(render(results) + kept)
    return md, png


SECTION_START, SECTION_END = "<!-- section:", "<!-- /section -->"


def _section_end(text: str, start: int) -> tuple[int, int]:
    """Return where the section starting at ``start`` ends: (end of its body, end of its end marker). A section
    whose end marker is missing ends where the next one starts (or at the end of the page)."""
    close = text.find(SECTION_END, start + 1)
    following = text.find(SECTION_START, start + 1)
    if close >= 0 and (following < 0 or close < following):
        return close, close + len(SECTION_END)
    end = following if following >= 0 else len(text)
    return end, end


def kept_sections(text: str) -> str:
    """Return the sections other benchmark scripts wrote into the page (between section markers), to keep; each
    closed by its end marker."""
    out, pos = [], 0
    while (start := text.find(SECTION_START, pos)) >= 0:
        body_end, pos = _section_end(text, start)
        out.append("\n" + text[start:body_end].rstrip("\n") + "\n" + SECTION_END + "\n")
    return "".join(out)


RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def save_run(kind: str, stamp: str, res: dict[str, Any], section: str, body: str) -> Path:
    """Keep a measurement: ``res`` as ``bench/results/<kind>-<stamp>.json`` (git-ignored) and ``body`` as the
    section ``section`` of ``docs/benchmarks.md``; return the JSON file's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{kind}-{stamp}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    replace_section(DOCS, section, body)
    return out


def replace_section(md: Path, name: str, body: str) -> None:
    """Put ``body`` into the page as section ``name`` (replacing an earlier one of that name, else appended)."""
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    marker = f"{SECTION_START}{name} -->"
    block = f"{marker}\n{body.strip()}\n{SECTION_END}"
    start = text.find(marker)
    if start >= 0:
        _, end = _section_end(text, start)
        text = text[:start] + block + ("\n\n" if end < len(text) and text[end:end + 1] != "\n" else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(text)
