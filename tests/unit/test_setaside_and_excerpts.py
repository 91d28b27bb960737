"""Reading a set-aside message's headers, and response excerpts of encoded bodies."""

import gzip
import zlib
from datetime import UTC, datetime

import pika
import pytest

from hookpost.common.amqp import IncomingMessage
from hookpost.dispatcher.sender import decode_excerpt, error_text
from hookpost.producer.setaside import SetAside


def message(body: bytes, headers: dict | None = None, message_id: str | None = "m-1") -> IncomingMessage:
    props = pika.BasicProperties(message_id=message_id, headers=headers, content_type="application/json")
    return IncomingMessage(None, 1, False, "invalid", props, body)  # type: ignore[arg-type]


def test_set_aside_by_hookpost() -> None:
    item = SetAside.from_message(message(b'{"id":  "x",\n "n": NaN}', {
        "x-hookpost-error": "NaN is not JSON", "hookpost-routing-key": "article.updated",
        "hookpost-set-aside-at": 1796000000000, "hookpost-replays": 2}))
    assert item.key == "m-1" and item.reason == "NaN is not JSON" and item.routing_key == "article.updated"
    assert item.set_aside_at == datetime.fromtimestamp(1796000000, UTC) and item.replays == 2
    assert item.excerpt() == '{"id": "x", "n": NaN}'
    assert item.as_dict()["bytes"] == 23


def test_dead_lettered_by_the_broker_and_no_message_id() -> None:
    when = datetime(2026, 11, 30, 8, 0)
    item = SetAside.from_message(message(b"\xff\xfe junk " * 100, {"x-death": [
        {"reason": "delivery_limit", "count": 21, "queue": "hp.changes", "routing-keys": [b"a.b"], "time": when}]},
        message_id=None))
    assert item.key.startswith("sha256:") and len(item.key) == 7 + 16
    assert "delivery_limit after 21 deliveries from hp.changes" in item.reason
    assert item.routing_key == "a.b" and item.set_aside_at == when.replace(tzinfo=UTC)
    assert len(item.excerpt(50)) == 50 and "\ufffd" in item.excerpt()


def test_nothing_recorded() -> None:
    item = SetAside.from_message(message(b"", None))
    assert item.reason == "(no reason recorded)" and item.set_aside_at is None and item.excerpt() == ""


@pytest.mark.parametrize(("raw", "encoding", "want"), [
    (gzip.compress(b"A" * 10**5), "gzip", "A" * 100),
    (zlib.compress(b"B" * 10**5), "deflate", "B" * 100),
    (zlib.compress(b"C" * 10**5)[2:], "deflate", "C" * 100),   # raw deflate, as some servers send
    (b"plain text", None, "plain text"),
    (b"plain text", "identity", "plain text"),
    (b"\x00\x01", "br", "(br-encoded body of 2+ bytes; not decoded)"),
    (b"not gzip at all", "gzip", "(gzip-encoded body of 15+ bytes; could not be decoded)"),
    (b"", "gzip", None),
])
def test_decode_excerpt(raw: bytes, encoding: str | None, want: str | None) -> None:
    assert decode_excerpt(raw, encoding, 100) == want


def test_bomb_excerpt_is_capped() -> None:
    bomb = gzip.compress(b"\0" * 5 * 10**6)
    assert len(decode_excerpt(bomb[:4096], "gzip", 4096) or "") == 4096


def test_timeout_texts() -> None:
    import aiohttp

    assert error_text(TimeoutError(), 15).startswith("Timeout: no complete response within 15s")
    if hasattr(aiohttp, "ConnectionTimeoutError"):
        assert error_text(aiohttp.ConnectionTimeoutError(), 15, 5) == \
            "Timeout: no connection within 5s (TCP connect or TLS handshake)"
