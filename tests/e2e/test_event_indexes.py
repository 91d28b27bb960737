"""The event collection's indexes on the real store: one per query shape, and the single-field indexes earlier
versions created (each written on every insert and update, serving no query the compound ones do not) dropped on
start-up; equalities written ``$eq`` find what bare equalities find, and counts count what finds find."""

from pymongo import ASCENDING

from hookpost.common.models import EventStatus
from hookpost.store.events import EVENT_INDEXES, RETIRED_INDEXES, EventFilter, indexable
from tests.e2e.test_search import make


async def index_fields(store) -> set[tuple[str, ...]]:
    info = await store.events.coll.index_information()
    return {tuple(k[0] for k in spec["key"]) for spec in info.values()} - {("_id",)}


async def test_start_up_drops_the_indexes_earlier_versions_made_and_creates_one_per_query_shape(store):
    for fields in RETIRED_INDEXES:
        await store.events.coll.create_index([(f, ASCENDING) for f in fields])
    assert RETIRED_INDEXES <= await index_fields(store)

    await store.events.ensure_indexes()
    await store.events.ensure_indexes()  # idempotent

    expected = {("change_id", "webhook_id")} | {tuple(f for f, _ in keys) for keys in EVENT_INDEXES}
    assert await index_fields(store) == expected
    assert len(expected) == 10  # 20 before


async def test_eq_filters_find_what_bare_equalities_find(store):
    events = make(120, ["wh_a", "wh_b"])
    await store.events.insert_new(events)
    for flt in (EventFilter(statuses=[EventStatus.FAILED]), EventFilter(webhook_id="wh_b"),
                EventFilter(entity_id="A-3"), EventFilter(event_type="order.created", webhook_id="wh_a"),
                EventFilter(statuses=[EventStatus.FAILED, EventStatus.FINISHED], webhook_id="wh_a"),
                EventFilter(search="503"), EventFilter(event_type="article.*", search="A-3")):
        query = flt.query()
        bare = {d["_id"] async for d in store.events.coll.find(query)}
        assert bare, query
        assert {e.id for e in await store.events.find(flt, limit=1000)} == bare
        assert await store.events.count(query) == len(bare)
    assert indexable({"$or": [{"type": "a"}, {"_id": "x"}]}) == {"$or": [{"type": {"$eq": "a"}}, {"_id": "x"}]}
