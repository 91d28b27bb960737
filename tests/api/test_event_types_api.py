"""``/api/v1/event-types`` over real HTTP: declare, show, update, refuse bad schemas; the ``warnings`` of webhook
create/update for patterns that match no known type; ``POST /changes`` refusing a change that breaks an enforced
contract with a 422 naming the path."""

import json
from pathlib import Path

from tests.api.conftest import declare_topology

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "bench" / "schemas" / "order-created.json").read_text())
GOOD = {"order_number": "SO-000123", "status": "paid", "currency": "EUR", "total": 12.5,
        "created_at": "2026-12-07T12:00:00Z", "customer": {"id": "C-1", "email": "a@example.com"},
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 12.5}]}


async def test_declare_show_list_and_update_an_event_type(api):
    status, made, _ = await api.call("POST", "/event-types", json={
        "name": "order.created", "title": "Order created", "description": "A shopper ordered.", "schema": SCHEMA,
        "enforce": True})
    assert status == 201, made
    assert (made["name"], made["title"], made["declared"], made["enforce"], made["count"]) == (
        "order.created", "Order created", True, True, 0)
    assert made["schema"] == SCHEMA

    status, listed, _ = await api.call("GET", "/event-types", role="viewer")
    assert status == 200 and [t["name"] for t in listed] == ["order.created"]

    status, changed, _ = await api.call("PATCH", "/event-types/order.created", json={"deprecated": True,
                                                                                      "schema": None,
                                                                                      "enforce": False})
    assert status == 200, changed
    assert changed["deprecated"] is True and changed["schema"] is None and changed["title"] == "Order created"
    status, shown, _ = await api.call("GET", "/event-types/order.created", role="viewer")
    assert status == 200 and shown == changed

    status, audit, _ = await api.call("GET", "/audit", params={"action": "event_type.updated"})
    assert status == 200 and audit[0]["target"] == "order.created"


async def test_bad_declarations_are_refused_with_the_reason(api):
    cases = [
        ({"name": "order.x", "schema": {"type": "objekt"}}, "not a valid JSON Schema"),
        ({"name": "order.x", "schema": {"properties": {"a": {"$ref": "https://evil.example/a.json"}}}},
         "remote $ref refused"),
        ({"name": "order.*"}, "invalid event type"),
        ({"name": "order.x", "enforce": True}, "enforce needs a schema"),
        ({"name": "order.x", "colour": "red"}, "colour"),
    ]
    for body, reason in cases:
        status, problem, _ = await api.call("POST", "/event-types", json=body)
        assert status == 400 and reason in problem["detail"], (body, problem)
    status, _, _ = await api.call("POST", "/event-types", role="operator", json={"name": "order.x"})
    assert status == 403
    status, problem, _ = await api.call("GET", "/event-types/no.such", role="viewer")
    assert status == 404 and "not declared" in problem["detail"]
    status, problem, _ = await api.call("PATCH", "/event-types/no.such", json={"title": "x"})
    assert status == 404


async def test_webhook_answers_carry_warnings_for_patterns_that_match_no_known_type(api):
    for name, deprecated in (("article.updated", False), ("article.archived", True)):
        status, _, _ = await api.call("POST", "/event-types", json={"name": name, "deprecated": deprecated})
        assert status == 201
    status, hook, _ = await api.call("POST", "/webhooks", json={"url": "https://rx.example/h",
                                                                 "event_types": ["artcle.*", "article.archived"]})
    assert status == 201, hook
    assert hook["warnings"] == [
        "'artcle.*' matches no known event type (declared, or seen in the last 30 days): check for a typo",
        "event type 'article.archived' is deprecated (its changes are still delivered)"]
    assert hook["event_types"] == ["artcle.*", "article.archived"]  # warned, not refused

    status, fixed, _ = await api.call("PATCH", f"/webhooks/{hook['id']}", json={"event_types": ["article.*"]})
    assert status == 200 and fixed["warnings"] == []
    status, typo, _ = await api.call("PATCH", f"/webhooks/{hook['id']}", json={"event_types": ["article.updatd"]})
    assert status == 200 and len(typo["warnings"]) == 1 and "'article.updatd'" in typo["warnings"][0]


async def test_post_changes_refuses_a_change_that_breaks_an_enforced_contract_naming_the_path(api, settings):
    await declare_topology(settings)
    status, _, _ = await api.call("POST", "/event-types", json={"name": "order.created", "schema": SCHEMA,
                                                                "enforce": True})
    assert status == 201
    change = {"id": "c-1", "type": "order.created", "entity": {"kind": "order", "id": "O-1"}}
    bad = {**GOOD, "lines": [{"sku": "SKU-1", "quantity": "two", "unit_price": 1}]}
    status, problem, _ = await api.call("POST", "/changes", role="publisher", json={**change, "data": bad})
    assert status == 422, problem
    assert problem["field"] == "$.data.lines[0].quantity" and "'type'" in problem["detail"]
    status, accepted, _ = await api.call("POST", "/changes", role="publisher", json={**change, "data": GOOD})
    assert (status, accepted) == (202, {"id": "c-1"})


async def test_the_openapi_document_describes_the_catalog(api):
    status, spec, _ = await api.call("GET", "/openapi.json", role="viewer")
    assert status == 200
    assert {"get", "post"} <= set(spec["paths"]["/api/v1/event-types"])
    assert {"get", "patch"} <= set(spec["paths"]["/api/v1/event-types/{name}"])
    assert "422" in spec["paths"]["/api/v1/changes"]["post"]["responses"]
    assert "warnings" in spec["components"]["schemas"]["WebhookCreated"]["properties"]
