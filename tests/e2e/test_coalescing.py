"""Latest-wins coalescing (coalesce=latest), end to end: real broker, real store, real HTTP."""

import asyncio
import os
from collections import Counter, defaultdict

from aiohttp import web

from hookpost.admin.core import Admin
from hookpost.common.models import ChangeEvent, Coalesce, Entity, EventStatus, Ordering
from hookpost.producer import Publisher
from hookpost.store.events import EventFilter
from tests.helpers import running_worker, wait_until

# the full size (1,000 changes behind the stuck head, 100 other entities × 10) with HOOKPOST_TEST_FULL=1
FULL = os.environ.get("HOOKPOST_TEST_FULL") == "1"
HOT_CHANGES = int(os.environ.get("HOOKPOST_TEST_COALESCE_HOT", "1000" if FULL else "300"))
OTHERS = int(os.environ.get("HOOKPOST_TEST_COALESCE_OTHERS", "100" if FULL else "30"))
OTHER_CHANGES = 10


async def test_an_entity_changed_a_thousand_times_behind_a_stuck_head_is_sent_twice(stores, new_receiver):
    settings, st = await stores(order_settle="100ms", http_timeout="120s")
    release = asyncio.Event()
    ok: list[dict] = []

    async def respond(n: int, request: web.Request) -> web.Response:
        body = await request.json()
        if body["data"]["entity"]["id"] == "HOT" and not release.is_set():
            await release.wait()  # the lane's head hangs until the test lets it go
        ok.append(body)
        return web.Response(status=200)

    rec = await new_receiver(respond=respond)
    hook = await st.webhooks.create(rec.url, ["article.*"], ordering=Ordering.ENTITY, coalesce=Coalesce.LATEST)
    hot = [ChangeEvent(id=f"hot-{i}", type="article.updated", entity=Entity(kind="article", id="HOT"), sequence=i)
           for i in range(HOT_CHANGES)]
    others = [ChangeEvent(id=f"o{e}-{i}", type="article.updated", entity=Entity(kind="article", id=f"E{e}"),
                          sequence=i) for i in range(OTHER_CHANGES) for e in range(OTHERS)]
    async with running_worker(settings):
        async with Publisher.from_settings(settings) as pub:
            await pub.publish(hot[0])
            await wait_until(lambda: len(rec.requests) >= 1, message="the HOT head in flight")
            await pub.publish_many(hot[1:] + others)

        async def accounted() -> int | None:  # every change has an event or a fold record
            folded = {d["change_id"] async for d in st.lanes.folds.find({}, {"change_id": 1})}
            own = {d["change_id"] async for d in st.events.coll.find({}, {"change_id": 1})}
            return None if len(folded | own) != len(hot) + len(others) else len(folded - own)
        await wait_until(accounted, timeout=120, message="every change stored or folded")
        release.set()

        async def all_finished() -> bool:
            evs = await st.events.find(EventFilter(), limit=5000)
            return all(e.status == EventStatus.FINISHED for e in evs) and not await st.lanes.waiting_of(
                webhook_id=hook.id)
        await wait_until(all_finished, timeout=120, message="every event Finished")

    per_entity_type = Counter((b["data"]["entity"]["id"], b["type"]) for b in ok)
    assert per_entity_type[("HOT", "article.updated")] <= 2
    sums: dict[str, int] = defaultdict(int)
    for body in {b["id"]: b for b in ok}.values():  # one per event (a redelivery would repeat one)
        sums[body["data"]["entity"]["id"]] += body["data"]["coalesced"]
    assert sums["HOT"] == HOT_CHANGES
    assert all(sums[f"E{e}"] == OTHER_CHANGES for e in range(OTHERS))
    # the folded event carries the newest change
    hot_last = [b for b in ok if b["data"]["entity"]["id"] == "HOT"][-1]
    assert hot_last["data"]["change_id"] == f"hot-{HOT_CHANGES - 1}"

    # every change id is findable, and the folded event lists its folded changes
    async with Admin.open(settings) as admin:
        for c in [hot[1], hot[len(hot) // 2], hot[-1], others[-1]]:
            page = await admin.events.list(EventFilter(search=c.id))
            assert len(page.items) == 1, c.id
        detail = await admin.events.get(hot_last["id"])
        assert detail.coalesced == HOT_CHANGES - 1 and len(detail.folded_changes) == min(100, HOT_CHANGES - 2)
    folded = {d["change_id"] async for d in st.lanes.folds.find({}, {"change_id": 1})}
    own = {e.change_id for e in await st.events.find(EventFilter(), limit=5000)}
    assert folded | own == {c.id for c in hot + others}
