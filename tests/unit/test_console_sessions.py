"""Console sessions and CSRF tokens (no server): signed, expiring, tamper-evident, never holding the token."""

from hookpost.common.records import ApiToken, Role
from hookpost.web.console import is_console_path, safe_next, url_with, utc_offset_label
from hookpost.web.sessions import SessionCodec

TOKEN = ApiToken(id="tok_1", name="ops", role=Role.OPERATOR, hash="h" * 64)


def test_a_cookie_round_trips_and_names_the_token_not_its_secret():
    codec = SessionCodec("k" * 40, ttl=3600)
    session, cookie = codec.issue(TOKEN, now=1000)
    assert codec.read(cookie, now=1001) == session
    assert session.role == Role.OPERATOR and session.actor == "token:ops" and session.expires == 4600
    assert "h" * 64 not in cookie


def test_forged_expired_or_foreign_cookies_are_refused():
    codec = SessionCodec("k" * 40, ttl=3600)
    _, cookie = codec.issue(TOKEN, now=1000)
    body, mac = cookie.split(".")
    assert codec.read(cookie, now=4600) is None                              # expired
    assert codec.read(body + "." + mac[:-2] + "AA", now=1001) is None          # bad signature
    assert codec.read(body[:-2] + "x." + mac, now=1001) is None                # changed body
    assert SessionCodec("other" * 8, ttl=3600).read(cookie, now=1001) is None  # another instance's key
    assert codec.read("garbage", now=1001) is None and codec.read(None) is None


def test_every_instance_with_the_same_secret_reads_the_cookie():
    a, b = SessionCodec("shared" * 6, ttl=60), SessionCodec("shared" * 6, ttl=60)
    session, cookie = a.issue(TOKEN, now=10)
    assert b.read(cookie, now=11) == session
    assert b.check_csrf(session, a.csrf(session))


def test_csrf_tokens_belong_to_one_session():
    codec = SessionCodec("k" * 40, ttl=60)
    one, _ = codec.issue(TOKEN)
    two, _ = codec.issue(TOKEN)
    assert codec.check_csrf(one, codec.csrf(one))
    assert not codec.check_csrf(one, codec.csrf(two)) and not codec.check_csrf(one, "") and not codec.check_csrf(
        one, None)
    cookie, form = codec.presign()
    assert codec.check_presign(cookie, form) and not codec.check_presign(cookie + "x", form)
    assert codec.presign(cookie) == (cookie, form)  # a second sign-in tab keeps the same pair


def test_helpers():
    assert safe_next("/events?status=Failed") == "/events?status=Failed"
    for bad in ("https://evil.example/", "//evil.example", "/\\evil", "javascript:alert(1)", None, ""):
        assert safe_next(bad) == "/"
    assert url_with("/events", {"status": ["New", "Failed"], "q": "", "tz": 0}) == (
        "/events?status=New&status=Failed&tz=0")
    assert utc_offset_label(None) == "UTC" and utc_offset_label(-60) == "UTC+01:00"
    assert utc_offset_label(300) == "UTC-05:00"
    assert is_console_path("/events") and not is_console_path("/api/v1/events") and not is_console_path("/metrics")
