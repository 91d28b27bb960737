"""The event-type catalog's parts without the broker or the store: contracts (schema checks, violations with the
JSON path and the rule), the sightings counter and its flush, fan-out setting aside a change that breaks an
enforced contract, and the webhook pattern warnings."""

import json
from pathlib import Path

import pytest

from hookpost.common.contracts import ContractCache, SchemaRefusedError, check_schema, compile_schema, violation
from hookpost.dispatcher.catalog import Catalog, SeenCounter
from hookpost.dispatcher.consumer import Verdict
from hookpost.store.catalog import DAY_MS, Seen
from tests.fakes import FakeMessage, build_dispatcher, make_change

ORDER_SCHEMA = json.loads((Path(__file__).parents[2] / "bench" / "schemas" / "order-created.json").read_text())
GOOD_ORDER = {"order_number": "SO-000123", "status": "paid", "currency": "EUR", "total": 12.5,
              "created_at": "2026-12-07T12:00:00Z", "customer": {"id": "C-1", "email": "a@example.com"},
              "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 12.5}]}


@pytest.mark.parametrize(("schema", "reason"), [
    ({"type": "objekt"}, "not a valid JSON Schema at schema.type"),
    ({"properties": {"a": {"minLength": -1}}}, "not a valid JSON Schema at schema.properties.a.minLength"),
    ({"properties": {"a": {"$ref": "https://example.com/a.json"}}}, "remote $ref refused"),
    ({"$defs": {"x": {"$ref": "other.json#/a"}}}, "remote $ref refused"),
    ({"items": [{"$dynamicRef": "http://x/y"}]}, "remote $ref refused"),
    ({"$schema": "http://json-schema.org/draft-07/schema#"}, "$schema must be"),
    ([{"type": "object"}], "must be a JSON object"),
])
def test_a_schema_that_cannot_be_a_contract_is_refused_saying_why(schema, reason):
    with pytest.raises(SchemaRefusedError) as err:
        check_schema(schema)
    assert reason in str(err.value)


def test_local_references_and_the_2020_12_dialect_are_accepted():
    assert check_schema(ORDER_SCHEMA) is ORDER_SCHEMA
    assert check_schema({"$schema": "https://json-schema.org/draft/2020-12/schema#", "$ref": "#/$defs/a",
                         "$defs": {"a": {"type": "string"}}})


@pytest.mark.parametrize(("data", "path", "rule"), [
    ({**GOOD_ORDER, "total": "12.50"}, "$.data.total", "type"),
    ({**GOOD_ORDER, "lines": [{"sku": "SKU-1", "quantity": 0, "unit_price": 1}]}, "$.data.lines[0].quantity",
     "minimum"),
    ({k: v for k, v in GOOD_ORDER.items() if k != "customer"}, "$.data", "required"),
    ({**GOOD_ORDER, "status": "lost"}, "$.data.status", "enum"),
    (None, "$.data", "type"),
])
def test_a_violation_names_the_json_path_from_the_change_and_the_rule(data, path, rule):
    found = violation(compile_schema(ORDER_SCHEMA), data)
    assert found is not None
    assert (found.path, found.rule) == (path, rule)
    assert f"at {path}:" in str(found) and f"'{rule}'" in str(found)


def test_a_fitting_change_has_no_violation():
    assert violation(compile_schema(ORDER_SCHEMA), GOOD_ORDER) is None


def test_the_counter_counts_by_type_and_day_and_keeps_what_a_failed_flush_could_not_write():
    counter = SeenCounter(max_keys=3)
    day = 20_000 * DAY_MS
    for ms in (day + 5, day + 1, day + 9):
        counter.note("a.b", ms)
    counter.note("a.b", day + DAY_MS + 1)
    counter.note("c.d", day)
    counter.note("e.f", day)  # a fourth (type, day): over max_keys, dropped and counted
    assert counter.dropped == 1
    taken = counter.take()
    assert taken[("a.b", day)] == Seen(3, day + 1, day + 9)
    assert taken[("a.b", day + DAY_MS)] == Seen(1, day + DAY_MS + 1, day + DAY_MS + 1)
    assert counter.counts == {}
    counter.note("a.b", day + 20)
    counter.put_back(taken)
    assert counter.counts[("a.b", day)] == Seen(4, day + 1, day + 20)


async def test_the_catalog_flushes_in_one_write_and_keeps_the_counts_when_the_store_fails():
    d = await build_dispatcher()
    catalog = Catalog(d.guarded.catalog, ttl=60, flush_every=1)
    for _ in range(5):
        catalog.seen("order.created")
    catalog.seen("article.updated")
    d.store.fail_next("catalog.record_seen", times=1)
    catalog.repo = d.store.catalog  # unguarded: let the outage reach the flush
    with pytest.raises(Exception, match="outage"):
        await catalog.flush()
    assert d.store.catalog.days == {}
    assert await catalog.flush() == 2
    assert d.store.count("catalog.record_seen") == 2
    counts = {name: s.count for (name, _), s in d.store.catalog.days.items()}
    assert counts == {"order.created": 5, "article.updated": 1}
    assert await catalog.flush() == 0 and d.store.count("catalog.record_seen") == 2  # nothing new: no write


async def test_fan_out_sets_aside_a_change_that_breaks_an_enforced_contract_with_the_path_and_the_rule():
    d = await build_dispatcher()
    hook = d.store.add_webhook(event_types=["order.*"])
    d.store.catalog.declare("order.created", ORDER_SCHEMA)
    d.fanout.catalog = Catalog(d.guarded.catalog, ttl=60, flush_every=1)
    bad = FakeMessage.of_change(make_change("order.created", data={**GOOD_ORDER, "total": -1}))
    good = FakeMessage.of_change(make_change("order.created", data=GOOD_ORDER))

    assert await d.fanout.handle(bad) is Verdict.ACK
    assert await d.fanout.handle(good) is Verdict.ACK

    invalid = d.published_to(d.topology.dead_exchange, "invalid")
    assert [p.body for p in invalid] == [bad.body]
    reason = invalid[0].headers["x-hookpost-error"]
    assert "contract of order.created" in reason and "$.data.total" in reason and "'minimum'" in reason
    good_id = json.loads(good.body)["id"]
    assert [(e.webhook_id, e.change_id) for e in d.store.all_events()] == [(hook.id, good_id)]
    assert [s.count for s in d.fanout.catalog.counter.counts.values()] == [2]  # both were seen


async def test_a_declared_type_without_enforcement_is_not_checked():
    d = await build_dispatcher()
    d.store.add_webhook(event_types=["order.*"])
    d.store.catalog.declare("order.created", ORDER_SCHEMA, enforce=False)
    d.fanout.catalog = Catalog(d.guarded.catalog, ttl=60, flush_every=1)
    assert await d.fanout.handle(FakeMessage.of_change(make_change("order.created", data={"x": 1}))) is Verdict.ACK
    assert d.published_to(d.topology.dead_exchange, "invalid") == []


async def test_the_contract_cache_compiles_a_schema_once_and_follows_changes_after_its_ttl():
    declared = []

    class Decl:
        def __init__(self, schema):
            self.name, self.schema, self.enforce = "a.b", schema, True

    async def load():
        return declared

    cache = ContractCache(load, ttl=0.0)
    assert await cache.check("a.b", {"n": "x"}) is None  # nothing declared
    declared.append(Decl({"properties": {"n": {"type": "integer"}}}))
    first = await cache.check("a.b", {"n": "x"})
    assert first is not None and first.path == "$.data.n"
    validator = cache._by_name["a.b"]
    await cache.check("a.b", {"n": 1})
    assert cache._by_name["a.b"] is validator  # reloaded, not compiled again
    declared[0] = Decl({"properties": {"n": {"type": "string"}}})
    assert await cache.check("a.b", {"n": "x"}) is None


async def test_a_webhook_replay_of_a_missed_change_is_neither_counted_nor_checked_again():
    from hookpost.common.wire import REPLAY_HEADER

    d = await build_dispatcher()
    hook = d.store.add_webhook(event_types=["order.*"])
    d.store.catalog.declare("order.created", ORDER_SCHEMA)
    d.fanout.catalog = Catalog(d.guarded.catalog, ttl=60, flush_every=1)
    old = make_change("order.created", data={"published": "before the contract"})
    msg = FakeMessage.of_change(old, headers={REPLAY_HEADER: hook.id})

    assert await d.fanout.handle(msg) is Verdict.ACK

    assert d.published_to(d.topology.dead_exchange, "invalid") == []
    assert [e.change_id for e in d.store.all_events()] == [old.id]
    assert d.fanout.catalog.counter.counts == {}
