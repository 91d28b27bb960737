"""The pure parts of the API and the console: roles, restart rules, filter parsing, the generated OpenAPI document."""

import pytest
from openapi_spec_validator import validate

from hookpost.admin.events import InvalidFieldError, parse_filter
from hookpost.admin.restart_rules import refusal_for_status
from hookpost.admin.tokens import hash_token, looks_like_token
from hookpost.admin.webhooks import success_rate
from hookpost.common.models import EventStatus
from hookpost.common.records import Role
from hookpost.web.api import ROUTES
from hookpost.web.openapi import build_openapi


def test_roles():
    v, o, a, p = Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.PUBLISHER
    assert [r for r in Role if r.allows(v)] == [v, o, a]
    assert [r for r in Role if r.allows(o)] == [o, a]
    assert [r for r in Role if r.allows(a)] == [a]
    assert [r for r in Role if r.allows(p)] == [a, p]
    assert Role.parse(" Admin ") == a
    with pytest.raises(ValueError, match="choose from viewer, operator, admin, publisher"):
        Role.parse("root")


def test_restart_rules():
    assert refusal_for_status(EventStatus.FAILED, False) is None
    assert refusal_for_status(EventStatus.FINISHED, True) is None
    assert "use --force" in refusal_for_status(EventStatus.FINISHED, False)
    assert refusal_for_status(EventStatus.RETRYING, True) == "already in flight (Retrying)"


@pytest.mark.parametrize(("kwargs", "field", "text"), [
    ({"statuses": ["done"]}, "status", "unknown status 'done'"),
    ({"event_type": "a..b"}, "type", "invalid event type"),
    ({"since": "yesterday"}, "since", "not a time"),
    ({"until": "99999999999d"}, "until", "not a time"),
    ({"before": "nope"}, "before", "invalid before"),
])
def test_parse_filter_names_the_field(kwargs, field, text):
    with pytest.raises(InvalidFieldError, match=text) as info:
        parse_filter(**kwargs)
    assert info.value.field == field


def test_parse_filter_reads_every_condition():
    flt = parse_filter(["failed", "NEW"], "article.*", "wh_1", "A-1", "2h", "2026-01-01T00:00:00", "x")
    assert flt.statuses == [EventStatus.FAILED, EventStatus.NEW] and flt.event_type == "article.*"
    assert flt.since is not None and flt.until is not None and flt.until.tzinfo is not None
    assert flt.query()["$or"][0] == {"change_id": "x"}  # search: one indexed condition per kind of term


def test_tokens_are_hashed():
    assert hash_token("hp_abc") != "hp_abc" and len(hash_token("hp_abc")) == 64
    assert looks_like_token("hp_" + "a" * 43) and not looks_like_token("abc") and not looks_like_token("hp_é" * 10)


def test_success_rate():
    assert success_rate([]) == "-"
    assert success_rate([200, 204, 500, None]) == "50% of 4"


def test_openapi_is_generated_from_the_routes_and_valid():
    spec = build_openapi()
    validate(spec)
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops == {(r.method, "/api/v1" + r.path) for r in ROUTES}
    events = spec["paths"]["/api/v1/events"]["get"]
    assert {p["name"] for p in events["parameters"]} == {"status", "type", "webhook", "entity", "since", "until",
                                                         "search", "limit", "before"}
    assert "WebhookEvent" in spec["components"]["schemas"] and "Problem" in spec["components"]["schemas"]


def test_admin_and_web_never_import_the_dispatcher():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for folder, banned in (("admin", ("hookpost.dispatcher", "hookpost.web", "hookpost.cli")),
                           ("web", ("hookpost.dispatcher", "hookpost.cli"))):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not [n for n in names if n.startswith(banned)], f"{path.name} imports {names}"
