"""Change events refused at the door (``common/wire.py``): every kind of malformed body gets a one-line reason,
and nothing a producer can send makes ``decode_change`` raise anything but :class:`InvalidChangeError`."""

import json
import random

import pytest

from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.wire import MAX_DEPTH, InvalidChangeError, decode_change, encode_change

BASE = '{"id": "c1", "type": "a.b", "entity": {"kind": "a", "id": "1"}'


def body(extra: str) -> bytes:
    return (BASE + extra + "}").encode()


@pytest.mark.parametrize(("raw", "reason"), [
    (body(', "data": {"x": NaN}'), "NaN is not JSON"),
    (body(', "data": {"x": Infinity}'), "Infinity is not JSON"),
    (body(', "data": {"x": [-Infinity]}'), "-Infinity is not JSON"),
    (body(', "data": {"x": 1e999}'), "out of range"),
    (body(', "data": {"x": -1e400}'), "out of range"),
    (body(', "data": {"x": 1, "x": 2}'), "duplicate key 'x'"),
    (body(', "id": "c2"'), "duplicate key 'id'"),
    (body(', "data": {"n": ' + "9" * 100_000 + "}"), "integer with 100000 digits"),
    (body(', "data": {"n": -' + "9" * 5000 + "}"), "integer with 5000 digits"),
    (body(', "data": {"n": 18446744073709551616}'), "64-bit"),
    (body(', "data": {"x": "\\ud800"}'), "surrogate"),
    (body(', "data": {"a\\u0000b": 1}'), "NUL"),
    (body(', "occurred_at": "9999-12-31T23:59:59-23:00"'), "occurred_at"),
    (body(', "occurred_at": "0001-01-01T00:00:00+05:00"'), "occurred_at"),
    (b"", "empty body"),
    (b"   \n", "not JSON"),
    (b"\xef\xbb\xbf" + body(""), "BOM"),
    (b'{"id": "\xff"}', "not UTF-8"),
    (b'{"id": "\xed\xa0\x80"}', "not UTF-8"),
])
def test_refused_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidChangeError, match=reason):
        decode_change(raw, "application/json", max_bytes=200_000)


def test_nesting_limit() -> None:
    ok = '{"a": ' * (MAX_DEPTH - 2) + "1" + "}" * (MAX_DEPTH - 2)
    decode_change(body(f', "data": {ok}'), None)
    deep = '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH
    with pytest.raises(InvalidChangeError, match=f"nested deeper than {MAX_DEPTH}"):
        decode_change(body(f', "data": {deep}'), None)
    # far deeper than Python's recursion limit: still a reason, not a RecursionError
    with pytest.raises(InvalidChangeError, match="nested deeper"):
        decode_change(body(', "data": {"a": ' + "[" * 30000 + "]" * 30000 + "}"), None)
    # brackets inside strings are not nesting
    decode_change(body(', "data": {"a": "' + "[{" * 100 + '"}'), None)


@pytest.mark.parametrize(("ctype", "encoding", "reason"), [
    ("text/plain", None, "unsupported content type"),
    ("application/json; charset=latin-1", None, "unsupported charset"),
    ("application/json", "gzip", "unsupported content encoding"),
    ("application/json", "deflate", "unsupported content encoding"),
])
def test_content_type_and_encoding(ctype: str, encoding: str | None, reason: str) -> None:
    with pytest.raises(InvalidChangeError, match=reason):
        decode_change(body(""), ctype, content_encoding=encoding)


@pytest.mark.parametrize("ctype", [None, "", "application/json", "application/json; charset=UTF-8", "text/json"])
def test_accepted_content_types(ctype: str | None) -> None:
    assert decode_change(body(""), ctype).id == "c1"


def test_size_limit_is_exact() -> None:
    raw = body(', "data": {"p": "' + "x" * 1000 + '"}')
    assert decode_change(raw, None, max_bytes=len(raw)).id == "c1"
    with pytest.raises(InvalidChangeError, match=f"too large: {len(raw)} bytes"):
        decode_change(raw, None, max_bytes=len(raw) - 1)


def test_reason_is_one_printable_line() -> None:
    with pytest.raises(InvalidChangeError) as info:
        decode_change(body(', "data": {"\\ud800\\n": 1, "\\ud800\\n": 2}'), None)
    reason = str(info.value)
    assert "\n" not in reason
    reason.encode("utf-8")  # no lone surrogate can reach a header


def test_valid_edge_values_pass() -> None:
    change = decode_change(body(', "data": {"big": 9223372036854775807, "small": -9223372036854775808, '
                                '"f": 1.5e300, "pair": "\\ud83d\\ude00", "nul": "a\\u0000b"}'), None)
    assert change.data == {"big": 2**63 - 1, "small": -(2**63), "f": 1.5e300, "pair": "😀", "nul": "a\x00b"}


def test_producer_refuses_what_the_door_refuses() -> None:
    for data in ({"x": float("nan")}, {"x": float("inf")}, {"x": 2**64}, {"a\x00": 1}, {"x": "\ud800"}):
        with pytest.raises(InvalidChangeError):
            encode_change(ChangeEvent(id="c", type="a.b", entity=Entity(kind="a", id="1"), data=data))
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(MAX_DEPTH):
        cur["a"] = {}
        cur = cur["a"]  # type: ignore[assignment]
    with pytest.raises(InvalidChangeError, match="nested deeper"):
        encode_change(ChangeEvent(id="c", type="a.b", entity=Entity(kind="a", id="1"), data=deep))


def test_random_mutations_never_escape() -> None:
    """Seeded byte and token mutations of valid bodies: decode_change accepts or refuses, never crashes."""
    rng = random.Random(15)
    seeds = [body(""), body(', "data": {"fields": ["price"], "n": 1.5, "ok": true, "none": null}'),
             body(', "occurred_at": "2026-11-27T12:00:00Z", "source": "erp"')]
    tokens = [b"NaN", b"-Infinity", b"1e999", b"\\ud800", b"\\u0000", b'"id": 1,', b"[" * 50, b"{", b"}",
              b"\xff", b"\xc3", b"9" * 5000, b'"', b",", b":", b"\\"]
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(raw) + 1)
            if rng.random() < 0.5:
                raw[pos:pos] = rng.choice(tokens)
            elif len(raw) > 1:
                del raw[pos:pos + rng.randint(1, 5)]
        try:
            change = decode_change(bytes(raw), "application/json")
        except InvalidChangeError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            json.dumps(change.model_dump(mode="json"), allow_nan=False).encode("utf-8")
