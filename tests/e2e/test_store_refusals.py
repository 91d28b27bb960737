"""A write the store refuses for good fails that change with a reason, at once, instead of being retried.

A change under ``HOOKPOST_MAX_CHANGE_BYTES`` can still make a webhook event document over MongoDB's 16 MiB BSON
limit: an array of 1.5 million small integers is 3 MB of JSON and about 18 MB of BSON (each element carries its
index as a key). MongoDB refuses such a document; the local stand-in would store it (a quirk; see
/work/shared/MONGO_COMPAT.md), so the dispatcher must not leave the decision to the store.
"""

import json
import logging

import pytest

from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.topology import topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.helpers import drain_queue, running_worker, wait_until

ELEMENTS = 1_500_000


def change(cid: str, data: dict) -> ChangeEvent:
    """An ``article.updated`` change ``cid`` carrying ``data``."""
    return ChangeEvent(id=cid, type="article.updated", entity=Entity(kind="article", id=cid), data=data)


async def test_a_change_whose_event_is_over_the_store_limit_is_set_aside_at_once_with_its_reason(
        settings_factory, new_receiver, caplog: pytest.LogCaptureFixture) -> None:
    s = settings_factory(max_change_bytes=4 * 2**20)
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    receiver = await new_receiver([200])
    await store.webhooks.create(receiver.url, ["article.*"])
    big = change("big-1", {"xs": [0] * ELEMENTS})
    caplog.set_level(logging.INFO, logger="hookpost.consumer")
    try:
        async with running_worker(s):
            async with Publisher.from_settings(s) as p:
                await p.publish_many([change("ok-0", {"n": 0}), big, change("ok-1", {"n": 1})])

            async def set_aside() -> list | None:
                held = await drain_queue(s, topology_from(s).invalid_queue)
                return held or None

            held = await wait_until(set_aside, 60, message="the oversized change in the invalid queue")
            await wait_until(lambda: len(receiver.requests) == 2, 30, message="the two other changes delivered")
        [(headers, body)] = held
        assert json.loads(body)["id"] == "big-1"
        reason = headers["x-hookpost-error"]
        assert "too large for the store" in reason and "16 MiB" in reason, reason
        assert await store.events.find_for_change("big-1") == []
        assert sorted(r.json["data"]["entity"]["id"] for r in receiver.requests) == ["ok-0", "ok-1"]
        retried = [r.getMessage() for r in caplog.records if "requeueing" in r.getMessage()]
        assert not retried, f"a refusal for good was retried: {retried}"
    finally:
        await store.close()
