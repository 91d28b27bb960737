"""Unit tests of the pure core: durations, matching, settings, policy, wire format, topology."""

from datetime import UTC, datetime, timedelta

import pytest

from hookpost.common.durations import format_duration, parse_duration, parse_duration_list
from hookpost.common.errors import ConfigError, InvalidInputError
from hookpost.common.ids import id_time_ms, new_id
from hookpost.common.matching import type_matches, validate_pattern
from hookpost.common.models import EventStatus
from hookpost.common.settings import load_settings, mask_url
from hookpost.common.topology import Topology
from hookpost.common.wire import InvalidChangeError, decode_change
from hookpost.dispatcher.policy import AttemptResult, decide, level_for_wait, parse_retry_after

DELAYS = (10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("10s", 10), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1m30s", 90), ("15", 15)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "1.2.3s", "-5s", "10 s s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_duration_list_and_format_roundtrip():
    delays = parse_duration_list("10s,1m,5m,15m,30m,1h,2h,4h,8h")
    assert delays == DELAYS
    assert [format_duration(d) for d in (0.05, 10, 60, 5400, 86400)] == ["50ms", "10s", "1m", "1h30m", "1d"]


@pytest.mark.parametrize(("pattern", "etype", "match"), [
    ("article.*", "article.updated", True), ("article.*", "article.price.changed", True),
    ("article.*", "article", False), ("article.*", "articles.updated", False),
    ("order.created", "order.created", True), ("order.created", "order.cancelled", False),
    ("*", "anything.at.all", True), ("*.deleted", "article.deleted", True), ("*.deleted", "article.updated", False)])
def test_type_matches(pattern, etype, match):
    assert type_matches(pattern, etype) is match


@pytest.mark.parametrize("bad", ["", "article.", ".x", "a..b", "a b", "art#icle"])
def test_invalid_patterns(bad):
    with pytest.raises(InvalidInputError):
        validate_pattern(bad)


def test_ids_sort_by_time():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    a = new_id("evt", int(t.timestamp() * 1000))
    b = new_id("evt", int((t + timedelta(milliseconds=1)).timestamp() * 1000))
    assert a < b
    assert id_time_ms(a) == int(t.timestamp() * 1000)
    assert id_time_ms("not-an-id") is None


def test_status_parse_case_insensitive():
    assert EventStatus.parse("failed") is EventStatus.FAILED
    with pytest.raises(ValueError, match="choose from New, Retrying, Failed, Finished"):
        EventStatus.parse("done")


def test_settings_schedule_errors_are_clear():
    with pytest.raises(ConfigError, match="HOOKPOST_RETRY_DELAYS has 2 delays but HOOKPOST_MAX_ATTEMPTS=10 needs 9"):
        load_settings(retry_delays="1s,2s")
    with pytest.raises(ConfigError, match="HOOKPOST_RETRY_DELAYS: not a duration: '2x'"):
        load_settings(retry_delays="1s,2x")
    s = load_settings(max_attempts=3, retry_delays="50ms,1s", rabbitmq_url="amqp://a:b@h1/%2F, amqp://a:b@h2/%2F")
    assert s.retry_delays == (0.05, 1.0) and s.rabbitmq_urls == ["amqp://a:b@h1/%2F", "amqp://a:b@h2/%2F"]
    assert mask_url(s.rabbitmq_url) == "amqp://a:***@h1/%2F, amqp://a:***@h2/%2F"
    assert "b@" not in str(s.masked())
    # a zero wait would make the defer ladder (or the reconciler, or the janitor) spin
    for name in ("defer_delay", "http_timeout", "reconcile_interval", "reconcile_grace", "janitor_interval"):
        with pytest.raises(ConfigError, match=f"HOOKPOST_{name.upper()}: must be greater than zero"):
            load_settings(**{name: "0s"})


def test_decide_success_retry_and_give_up():
    ok, bad = AttemptResult(status_code=204), AttemptResult(status_code=500)
    assert decide(ok, 1, 0, DELAYS, 10).status is EventStatus.FINISHED
    d = decide(bad, 1, 0, DELAYS, 10)
    assert (d.status, d.retry_level, d.delay) == (EventStatus.RETRYING, 0, 10.0)
    assert decide(bad, 9, 0, DELAYS, 10).retry_level == 8
    last = decide(bad, 10, 0, DELAYS, 10)
    assert last.status is EventStatus.FAILED and "10 attempts" in (last.reason or "")
    # after a restart at attempt 10 the budget starts again
    assert decide(bad, 11, 10, DELAYS, 10).retry_level == 0
    assert decide(bad, 20, 10, DELAYS, 10).status is EventStatus.FAILED


@pytest.mark.parametrize("result", [
    AttemptResult(status_code=301, error="Redirect: 301 to x not followed"), AttemptResult(error="Timeout: …"),
    AttemptResult(status_code=404), AttemptResult(status_code=199)])
def test_failures(result):
    assert decide(result, 1, 0, DELAYS, 10).status is EventStatus.RETRYING


def test_410_gives_up_and_disables():
    d = decide(AttemptResult(status_code=410), 1, 0, DELAYS, 10)
    assert d.status is EventStatus.FAILED and d.disable_webhook


def test_retry_after_picks_first_level_long_enough():
    r = AttemptResult(status_code=429, retry_after=120)
    assert decide(r, 1, 0, DELAYS, 10).retry_level == 2  # 5m is the first level >= 120s
    assert decide(AttemptResult(status_code=500, retry_after=120), 1, 0, DELAYS, 10).retry_level == 0
    assert level_for_wait(DELAYS, 4, 5) == 4  # never shorter than the normal level
    assert level_for_wait(DELAYS, 0, 10**6) == 8


def test_parse_retry_after():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60
    assert parse_retry_after("soon", now) is None


@pytest.mark.parametrize(("body", "ctype", "reason"), [
    (b"not json", "application/json", "not JSON"),
    (b"[1,2]", "application/json", "not a JSON object"),
    (b'{"id": "1", "type": "a.b"}', "application/json", "entity"),
    (b'{"id": "1", "entity": {"kind": "a", "id": "1"}}', "application/json", "type"),
    (b'{"id": "1", "type": "a.*", "entity": {"kind": "a", "id": "1"}}', None, "invalid event type"),
    (b'{"id": "1", "type": "a.b", "entity": {"kind": "a", "id": "1"}}', "text/xml", "content type"),
    (b'\xff\xfe{}', "application/json", "not UTF-8"),
    (b'{"id": "1", "type": "a.b", "entity": {"kind": "a", "id": "1"}, "extra": 1}', None, "extra"),
])
def test_decode_change_rejects_with_reason(body, ctype, reason):
    with pytest.raises(InvalidChangeError, match=reason):
        decode_change(body, ctype)


def test_decode_change_size_limit_and_defaults():
    with pytest.raises(InvalidChangeError, match="too large"):
        decode_change(b" " * 70000, "application/json")
    ok = decode_change(b'{"id": "c", "type": "a.b", "entity": {"kind": "a", "id": "1"}}', None)
    assert ok.occurred_at.tzinfo is not None and ok.data is None


def test_topology_names_and_arguments():
    t = Topology("hp", retry_delays=(0.25, 10.0, 10.0, 60.0))
    assert t.retry_queues == ["hp.retry.250ms", "hp.retry.10s", "hp.retry.1m"]
    assert [t.defer_queue(n) for n in (0, 1, 2, 6, 9)] == [
        "hp.defer.1s", "hp.defer.1s", "hp.defer.2s", "hp.defer.32s", "hp.defer.32s"]
    assert {t.defer_queue(n) for n in range(1, 7)} <= {q.name for q in t.queues}
    # an expected wait picks a longer level than the deferral count alone (never a shorter one), up to the top
    assert [t.defer_queue(1, wait=w) for w in (0.5, 1.0, 1.5, 5.0, 500.0)] == [
        "hp.defer.1s", "hp.defer.1s", "hp.defer.2s", "hp.defer.8s", "hp.defer.32s"]
    assert t.defer_queue(4, wait=1.5) == "hp.defer.8s"
    args = {q.name: q.arguments for q in t.queues}
    assert args["hp.retry.10s"]["x-message-ttl"] == 10000
    assert args["hp.retry.10s"]["x-dead-letter-exchange"] == "hp.deliveries"
    assert args["hp.deliver"]["x-dead-letter-routing-key"] == "failed"
    assert args["hp.deliver"]["x-dead-letter-strategy"] == "at-least-once"
    assert args["hp.deliver"]["x-overflow"] == "reject-publish"
    assert args["hp.deliver"]["x-delivery-limit"] == 20
    classic = {q.name: q.arguments for q in Topology("hp", retry_delays=(1.0,), queue_type="classic").queues}
    assert "x-queue-type" not in classic["hp.deliver"] and "x-delivery-limit" not in classic["hp.deliver"]


def test_retry_level_honours_a_wait_the_schedule_would_cut_short():
    from hookpost.dispatcher.policy import retry_level

    delays = (10.0, 60.0, 300.0)
    assert [retry_level(delays, used) for used in (1, 2, 3, 9)] == [0, 1, 2, 2]
    # a redelivered attempt re-parks its successor for as long as the due time on record (set from Retry-After)
    assert retry_level(delays, 1, wait=119.0) == 2
    assert retry_level(delays, 2, wait=5.0) == 1  # never shorter than the schedule
