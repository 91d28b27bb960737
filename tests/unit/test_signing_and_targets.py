"""Signing verified by an independent Standard Webhooks implementation, and the safe-target rules."""

import base64
import hashlib
import hmac

import pytest

from hookpost.common.errors import InvalidInputError
from hookpost.common.models import Webhook
from hookpost.common.signing import generate_secret, secret_key
from hookpost.dispatcher.sender import request_headers
from hookpost.dispatcher.targets import TargetPolicy


def spec_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written from the spec, not from the project's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def test_secret_format():
    s = generate_secret()
    assert s.startswith("whsec_") and len(base64.b64decode(s[6:])) == 32
    for bad in ("nope", "whsec_!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidInputError):
            secret_key(bad)


def test_headers_verify_and_user_headers_cannot_override():
    hook = Webhook(id="wh_1", url="https://x", event_types=["a.*"], secret=generate_secret(),
                   headers={"webhook-signature": "v1,forged", "X-Tenant": "t1", "Content-Type": "text/plain"})
    body = b'{"id":"evt_1"}'
    h = request_headers(hook, "evt_1", body, 1700000000, "Hookpost/test")
    assert h["X-Tenant"] == "t1" and h["content-type"] == "application/json"
    assert "Content-Type" not in h
    assert h["webhook-id"] == "evt_1" and h["webhook-timestamp"] == "1700000000"
    assert spec_verify(hook.secret, h, body)
    assert not spec_verify(generate_secret(), h, body)
    assert not spec_verify(hook.secret, h, body + b" ")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
    "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1",
    "2002:c0a8:101::1"])
def test_forbidden_addresses_refused_by_default(address):
    assert TargetPolicy().refusal(address) is not None
    assert TargetPolicy(allow_private=True).refusal(address) is None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"])
def test_public_addresses_allowed(address):
    assert TargetPolicy().refusal(address) is None


def test_allow_list_of_networks():
    p = TargetPolicy(allowed_networks=["10.1.0.0/16"])
    assert p.refusal("10.1.2.3") is None and p.refusal("10.2.0.1") is not None


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/x", "only http"), ("file:///etc/passwd", "only http"), ("example.com/x", "only http"),
    ("http://", "no host"), ("http://user:pw@example.com/", "credentials"), ("http://127.0.0.1:8080/", "loopback"),
    ("http://[::1]/", "loopback"), ("http://169.254.169.254/latest", "link-local"),
    ("http://example.com:99999/", "Port out of range")])
def test_check_url_rejects(url, why):
    with pytest.raises(InvalidInputError, match=why):
        TargetPolicy().check_url(url)


def test_require_https():
    with pytest.raises(InvalidInputError, match="https is required"):
        TargetPolicy(require_https=True).check_url("http://example.com/")
    TargetPolicy(require_https=True).check_url("https://example.com/")
