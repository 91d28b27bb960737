"""Event search on the real store: each kind of term finds exactly its events; exact versus prefix; combined
with other filters; paged; events stored without the derived fields found after ``reindex``."""

from datetime import UTC, datetime, timedelta

from hookpost.admin.events import InvalidFieldError, parse_filter
from hookpost.common.ids import new_id
from hookpost.common.models import Entity, EventStatus, WebhookEvent
from hookpost.store.events import EventFilter, error_kind

ERRORS = [None, "Timeout: no complete response within 15s", "ConnectError: [Errno 111] Connection refused",
          "HTTP 503", "gave up after 10 attempts: HTTP 500", "TLSError: certificate verify failed",
          "TargetRefused: 10.0.0.1 is a private address"]


def make(n: int, hooks: list[str]) -> list[WebhookEvent]:
    now = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(n):
        at = now + timedelta(seconds=i)
        ms = int(at.timestamp() * 1000)
        error = ERRORS[i % len(ERRORS)]
        code = 503 if error == "HTTP 503" else 500 if error and "500" in error else None
        etype = ["article.updated", "article.price.changed", "order.created"][i % 3]
        out.append(WebhookEvent(
            id=new_id("evt", ms), webhook_id=hooks[i % len(hooks)], change_id=f"chg-{i}", type=etype,
            entity=Entity(kind=etype.split(".")[0], id=f"A-{i % 25}"), payload={},
            status=EventStatus.FAILED if error else EventStatus.FINISHED, attempt_count=1, last_status_code=code,
            last_error=error, created_at=at, created_ms=ms, updated_at=at, updated_ms=ms))
    return out


async def found(store, search: str, **kw) -> set[str]:
    flt = parse_filter(search=search, **kw)
    return {e.id for e in await store.events.find(flt, limit=10000)}


async def test_each_kind_of_term_finds_exactly_its_events(store):
    events = make(300, ["wh_a", "wh_b"])
    assert len(await store.events.insert_new(events)) == 300
    by = {e.id: e for e in events}

    def ids(pred) -> set[str]:
        return {e.id for e in events if pred(e)}

    cases = {
        "chg-12": ids(lambda e: e.change_id == "chg-12"),
        "chg-12*": ids(lambda e: e.change_id.startswith("chg-12")),
        "A-7": ids(lambda e: e.entity.id == "A-7"),
        "A-1*": ids(lambda e: e.entity.id.startswith("A-1")),
        "a-7": set(),  # ids are exact as stored: case matters
        "order.created": ids(lambda e: e.type == "order.created"),
        "article.*": ids(lambda e: e.type.startswith("article.")),
        "article": set(),  # a type is exact, or a prefix with *
        "503": ids(lambda e: e.last_status_code == 503),
        "500": ids(lambda e: e.last_status_code == 500),
        "timeout": ids(lambda e: "Timeout" in (e.last_error or "")),
        "REFUSED": ids(lambda e: "Refused" in (e.last_error or "") or "refused" in (e.last_error or "")),
        "tls": ids(lambda e: "TLSError" in (e.last_error or "")),
        "http": ids(lambda e: (e.last_error or "").endswith(("HTTP 503", "HTTP 500"))),
        events[42].id: {events[42].id},
        events[42].id.lower(): {events[42].id},  # event ids in any case
        events[42].id[:14] + "*": ids(lambda e: e.id.startswith(events[42].id[:14])),  # millisecond prefix
        events[42].id[:20] + "*": {events[42].id},  # into the random part
        events[42].id[:9] + "*": ids(lambda e: e.id.startswith(events[42].id[:9])),
        "nothing-like-this": set(),
    }
    for term, expected in cases.items():
        assert await found(store, term) == expected, term
        assert expected or term in ("a-7", "article", "nothing-like-this"), f"{term}: the seed should cover it"
    # combined with other filters (AND)
    got = await found(store, "503", statuses=["failed"], webhook_id="wh_a")
    assert got == ids(lambda e: e.last_status_code == 503 and e.webhook_id == "wh_a") and got
    got = await found(store, "article.*", statuses=["failed", "finished"], event_type="article.price.changed")
    assert got == ids(lambda e: e.type == "article.price.changed")
    assert all(by[i].type == "article.price.changed" for i in got)


async def test_search_pages_newest_first_without_gaps(store):
    events = make(200, ["wh_a"])
    await store.events.insert_new(events)
    expected = [e.id for e in sorted(events, key=lambda e: e.id, reverse=True) if e.last_status_code in (500, 503)
                or e.type == "order.created"]
    for term in ("503", "order.created"):
        want = [i for i in expected if (term == "503" and next(e for e in events if e.id == i).last_status_code == 503)
                or (term != "503" and next(e for e in events if e.id == i).type == term)]
        flt, seen = parse_filter(search=term), []
        while True:
            page = await store.events.find(flt, limit=7)
            seen += [e.id for e in page]
            if len(page) < 7:
                break
            flt.before = page[-1].id
        assert seen == want, term


async def test_count_query_agrees_with_the_list(store):
    events = make(140, ["wh_a"])
    await store.events.insert_new(events)
    for term in ("timeout", "A-3", "chg-1*", "503"):
        flt = parse_filter(search=term)
        assert await store.events.count(flt.query()) == len(await store.events.find(flt, limit=10000)), term


async def test_events_stored_before_error_kind_are_found_after_reindex(store):
    events = make(70, ["wh_a"])
    await store.events.insert_new(events)
    await store.events.coll.update_many({}, {"$unset": {"error_kind": ""}})  # as an older Hookpost stored them
    assert await found(store, "timeout") == set()
    read, changed = await store.events.reindex(batch=16)
    assert (read, changed) == (70, 70)  # every one lacked the field
    assert await found(store, "timeout") == {e.id for e in events if error_kind(e.last_error) == "timeout"}
    assert await store.events.reindex(batch=16) == (70, 0)  # nothing left to do


async def test_attempt_outcomes_keep_the_error_kind_current(store):
    ev = make(1, ["wh_a"])[0].model_copy(update={"status": EventStatus.RETRYING, "last_error": None,
                                                  "last_status_code": None})
    await store.events.insert_new([ev])
    await store.events.record_attempts([(ev.id, 2, {"last_error": "Timeout: no complete response within 1s",
                                                    "last_status_code": None})])
    assert await found(store, "timeout") == {ev.id}
    await store.events.record_attempts([(ev.id, 3, {"last_error": None, "last_status_code": 200,
                                                    "status": "Finished"})])
    assert await found(store, "timeout") == set()
    assert await found(store, "200") == {ev.id}


def test_a_search_is_one_term():
    for bad in ("connection refused", "*", "  **"):
        try:
            parse_filter(search=bad)
        except InvalidFieldError as exc:
            assert exc.field == "search"
        else:
            raise AssertionError(bad)
    assert parse_filter(search="  ").search is None
    assert EventFilter(search="x").branches()  # one query per condition


async def test_counts_of_a_search_within_other_filters_agree_with_the_list(store):
    """A search is an ``$or`` beside the other filters; the counts (the restart dry run, the console's restart
    confirmation, a bulk restart job's total) must honour both, as the list does."""
    events = make(140, ["wh_a", "wh_b"])
    await store.events.insert_new(events)
    for term, kw in (("503", {"webhook_id": "wh_a"}), ("timeout", {"statuses": ["failed"], "webhook_id": "wh_b"}),
                     ("A-3", {"event_type": "order.created"}), ("chg-1*", {"webhook_id": "wh_b"}),
                     ("order.created", {"statuses": ["failed", "finished"], "webhook_id": "wh_a"})):
        flt = parse_filter(search=term, **kw)
        listed = await store.events.find(flt, limit=10000)
        assert listed, term
        assert await store.events.count(flt.query()) == len(listed), term
        by_status = await store.events.group_counts("status", flt.query())
        assert sum(by_status.values()) == len(listed), term
