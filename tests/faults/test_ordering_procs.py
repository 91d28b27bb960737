"""Per-entity ordering under retries, slow answers, two dispatcher processes and a kill -9.

50 entities × 20 changes (20 × 10 in CI), each with its ``sequence`` (also in ``data``); retry delays of 200 ms;
the receiver answers 503 to one request in four and waits 0–200 ms at random. Checked: for every entity the
sequences the receiver sees never decrease in the order they arrive (repeats allowed), and every change was
received or ended superseded; without a kill nothing is superseded.
"""

import asyncio
import os
import random
from collections import defaultdict

import pytest
from aiohttp import web

from hookpost.common.models import ChangeEvent, Entity, EventStatus, Ordering
from hookpost.store import Store
from tests.faults import publish
from tests.faults.procs import dispatcher_env
from tests.helpers import wait_until

# the full size (50 × 20) with HOOKPOST_TEST_FULL=1 (by hand; figures in docs/reliability.md); CI runs 20 × 10
FULL = os.environ.get("HOOKPOST_TEST_FULL") == "1"
ENTITIES, CHANGES = (50, 20) if FULL else (20, 10)
SETTLE = "1s"


class OrderedReceiver:
    """Answers 503 to one request in four after 0–200 ms (seeded), and keeps what each entity saw, in order."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.ok: set[str] = set()

    async def respond(self, _n: int, request: web.Request) -> web.Response:
        body = await request.json()
        entity, seq = body["data"]["entity"]["id"], body["data"]["sequence"]
        self.seen[entity].append(seq)
        fail = self.rng.random() < 0.25
        await asyncio.sleep(self.rng.random() * 0.2)
        if not fail:
            self.ok.add(body["data"]["change_id"])
        return web.Response(status=503 if fail else 200)


def changes() -> list[ChangeEvent]:
    out = [ChangeEvent(id=f"e{e}-s{s}", type="article.updated", entity=Entity(kind="article", id=f"E{e}"),
                       sequence=s, data={"sequence": s}) for s in range(1, CHANGES + 1) for e in range(ENTITIES)]
    return out


@pytest.mark.parametrize("kill", [True, False], ids=["kill-9", "no-kill"])
async def test_each_entity_sees_its_changes_in_order(kill, fault_settings, dispatchers, new_receiver) -> None:
    s = fault_settings(retry_delays=",".join(["200ms"] * 9), order_settle=SETTLE, reconcile_interval="1s",
                       reconcile_grace="10s", http_timeout="5s", breaker="false")
    receiver = OrderedReceiver(seed=7 if kill else 8)
    rec = await new_receiver(respond=receiver.respond)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY)
    env = dispatcher_env(s)
    first, second = dispatchers(env, "d1"), dispatchers(env, "d2")
    await first.wait_ready()
    await second.wait_ready()
    published = changes()
    await publish(s, published)
    total = ENTITIES * CHANGES
    if kill:
        await wait_until(lambda: len(receiver.ok) >= total // 3, 120, message="a third delivered")
        first.kill9()
        first.start()

    async def ended() -> int | None:
        rows = await store.events.coll.find({}, {"status": 1}).to_list()
        done = sum(1 for r in rows if r["status"] in (EventStatus.FINISHED.value, EventStatus.FAILED.value))
        return done if len(rows) == total and done == total else None
    await wait_until(ended, 300, interval=0.5, message="every event ended")

    for entity, seqs in receiver.seen.items():
        assert seqs == sorted(seqs), f"{entity} saw {seqs}"
    superseded = {d["change_id"] async for d in store.events.coll.find({"superseded_by": {"$gt": ""}},
                                                                        {"change_id": 1})}
    missing = {c.id for c in published} - receiver.ok - superseded
    assert not missing, f"neither received nor superseded: {sorted(missing)[:10]}"
    failed = await store.events.coll.find({"status": EventStatus.FAILED.value}, {"_id": 1}).to_list()
    assert not failed
    if not kill:
        late = await store.events.coll.find({"superseded_by": {"$gt": ""}}, {"created_ms": 1, "superseded_by": 1,
                                                                             "change_id": 1}).to_list()
        skews = []
        for d in late:
            by = await store.events.coll.find_one({"_id": d["superseded_by"]}, {"created_ms": 1, "change_id": 1})
            skews.append((d["change_id"], by["change_id"], d["created_ms"] - by["created_ms"]) if by else d)
        assert not superseded, f"superseded without a kill (change, by, stored ms later): {skews}"
    print(f"\nordering ({'kill -9' if kill else 'no kill'}): {total} changes, {sum(map(len, receiver.seen.values()))} "
          f"requests, {len(superseded)} superseded")
    await store.close()
