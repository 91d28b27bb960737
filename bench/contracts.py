"""What an enforced event-type contract costs fan-out, in CPU µs per change: ``python -m bench.contracts``.

In one process, no broker and no store: the path fan-out takes for each change (``Catalog.seen`` then
``Catalog.violation``, through the contract cache) with the realistic schema in ``bench/schemas/order-created.json``
(14 top-level properties, nested objects, an array of lines, local ``$ref``s, patterns, enums), for a change that fits
(1, 5 and 50 order lines), one that breaks it, and a type without a contract (what every change of a system that
declares nothing pays). CPU time (``time.process_time``), the median of ``--repeats`` runs of ``--n`` changes.
Writes ``bench/results/contracts-<timestamp>.json`` and, with ``--write``, the section "contracts" of
``docs/benchmarks.md``.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import DOCS, RESULTS, replace_section
from hookpost.common.models import ChangeEvent, Entity
from hookpost.dispatcher.catalog import Catalog
from hookpost.store.catalog import DeclaredType

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "order-created.json").read_text())


def order(lines: int) -> dict[str, Any]:
    """A realistic order.created ``data`` with ``lines`` order lines."""
    return {
        "order_number": "SO-00012345", "status": "paid", "channel": "web", "currency": "EUR",
        "total": round(19.99 * lines, 2), "tax": 3.19, "shipping": 4.95, "created_at": "2026-12-07T12:00:00Z",
        "customer": {"id": "C-000981", "email": "jane@example.com", "name": "Jane Doe", "vip": False},
        "shipping_address": {"line1": "1 Main St", "postcode": "1011 AB", "city": "Amsterdam", "country": "NL"},
        "billing_address": {"line1": "1 Main St", "postcode": "1011 AB", "city": "Amsterdam", "country": "NL"},
        "lines": [{"sku": f"SKU-{i:05d}", "name": f"Item {i}", "quantity": 1 + i % 3, "unit_price": 19.99}
                  for i in range(lines)],
        "tags": ["gift", "newsletter"], "notes": None,
    }


class _Repo:
    """Just enough of the catalog repository: one declared, enforced type."""

    async def declared_all(self) -> list[DeclaredType]:
        now = datetime.now(UTC)
        return [DeclaredType(name="order.created", title="Order created", description="", schema=SCHEMA,
                             enforce=True, deprecated=False, created_at=now, updated_at=now)]


async def per_change_us(catalog: Catalog, change: ChangeEvent, n: int, repeats: int) -> dict[str, float]:
    """CPU µs per change of fan-out's catalog steps for ``change`` (median and spread of ``repeats`` runs)."""
    await catalog.violation(change)  # warm: the cache is loaded and the validator compiled once
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            catalog.seen(change.type)
            await catalog.violation(change)
        runs.append((time.process_time() - start) / n * 1e6)
        catalog.counter.take()
    return {"median_us": round(statistics.median(runs), 1), "min_us": round(min(runs), 1),
            "max_us": round(max(runs), 1)}


async def measure(n: int, repeats: int) -> dict[str, Any]:
    """Run every case; return the results."""
    catalog = Catalog(_Repo(), ttl=3600, flush_every=3600)  # type: ignore[arg-type]
    entity = Entity(kind="order", id="O-1")
    bad = {**order(5), "lines": [{**order(5)["lines"][0], "quantity": 0}]}
    cases = {
        "no contract (type not declared)": ChangeEvent(id="c", type="article.updated", entity=entity,
                                                       data={"fields": ["price"]}),
        "enforced, fits, 1 line": ChangeEvent(id="c", type="order.created", entity=entity, data=order(1)),
        "enforced, fits, 5 lines": ChangeEvent(id="c", type="order.created", entity=entity, data=order(5)),
        "enforced, fits, 50 lines": ChangeEvent(id="c", type="order.created", entity=entity, data=order(50)),
        "enforced, breaks it (lines[0].quantity 0)": ChangeEvent(id="c", type="order.created", entity=entity,
                                                                 data=bad),
    }
    assert await catalog.violation(cases["enforced, fits, 5 lines"]) is None
    assert await catalog.violation(cases["enforced, breaks it (lines[0].quantity 0)"]) is not None
    results = {label: await per_change_us(catalog, change, n, repeats) for label, change in cases.items()}
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "n": n, "repeats": repeats,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "machine": platform.machine(), "results": results,
            "body_bytes": {label: len(c.model_dump_json()) for label, c in cases.items()}}


def section(run: dict[str, Any]) -> str:
    """The "contracts" section of docs/benchmarks.md."""
    rows = "\n".join(f"| {label} | {run['body_bytes'][label]:,} | {r['median_us']} | {r['min_us']}–{r['max_us']} |"
                     for label, r in run["results"].items())
    return f"""## What an enforced event-type contract costs fan-out (`python -m bench.contracts`)

CPU µs per change of fan-out's catalog steps (count the type, look up its contract, validate `data` with the
compiled draft 2020-12 validator), in one process, with the schema `bench/schemas/order-created.json` (14
top-level properties, nested objects, an array of order lines, local `$ref`s, patterns, enums; `format` is an
annotation in draft 2020-12 and is not checked). Median of {run['repeats']}
runs of {run['n']:,} changes (min–max beside it); Python {run['python']}, {run['when']}. **The machine was shared**
with other work (two cores, several sessions running tests; load average {run['load_average'][0]} at the end of the
run), so the figures are upper bounds of a quiet machine's.

| change | body bytes | µs per change | min–max |
|---|---|---|---|
{rows}

A type without an enforced contract pays a dict update and a dict lookup: nothing measurable against a delivery.
An enforced one pays the validation, which grows with the data: every subschema the data reaches costs the
`jsonschema` library a few µs (its `descend`/`evolve` per keyword dominate a profile; the validator is compiled
once per schema and kept across cache reloads, so none of it is compiling). A change that breaks the schema costs
somewhat more than a fitting one of its size (the most relevant error is chosen among those found). Against the
dispatcher's CPU per delivered change (about 5–6 ms at a steady rate on this machine, section "stack-floor"), a
contract like this one adds about a tenth for a small order, and far more for a large one (50 lines: 2–3 ms).
Inlining the schema's local `$ref`s before compiling measured about 25% faster for the 1-line order in a one-off
profile; not adopted (recursive `$ref`s cannot be inlined). Enforce contracts on the types where refusing bad data
at the door is worth that CPU; a declared type without `enforce` costs nothing.
"""


def main() -> None:
    """Measure, save the result, and optionally write the docs section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="changes per run")
    ap.add_argument("--repeats", type=int, default=5, help="runs per case (the median is reported)")
    ap.add_argument("--write", action="store_true", help="write the section 'contracts' of docs/benchmarks.md")
    args = ap.parse_args()
    run = asyncio.run(measure(args.n, args.repeats))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"contracts-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(run, indent=2))
    for label, r in run["results"].items():
        print(f"{label:<45} {r['median_us']:>8} µs/change  ({r['min_us']}–{r['max_us']})")
    print(f"saved {out}")
    if args.write:
        replace_section(DOCS, "contracts", section(run))
        print("wrote the section 'contracts' of docs/benchmarks.md")


if __name__ == "__main__":
    main()
