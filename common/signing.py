"""Standard Webhooks signing: secrets, and the ``webhook-*`` headers of a request.

A secret is ``whsec_`` + base64 of 24 to 64 random bytes; the signature is ``v1,`` + base64(HMAC-SHA256(key,
``{webhook-id}.{webhook-timestamp}.{body}``)) with the secret's decoded bytes as the key. During a rotation a
request carries one signature per secret, space-separated.

>>> secret = generate_secret()
>>> sig = sign("evt_1", 1700000000, b'{}', [secret])
>>> sig.startswith("v1,")
True
"""

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Iterable
from functools import lru_cache

from hookpost.common.errors import InvalidInputError

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def generate_secret(n_bytes: int = 32) -> str:
    """Return a new random signing secret (``whsec_`` + base64 of ``n_bytes`` random bytes)."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(n_bytes)).decode()


@lru_cache(maxsize=4096)
def secret_key(secret: str) -> bytes:
    """Return the HMAC key of ``secret``; raise :class:`InvalidInputError` if it is not a valid secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInputError("a signing secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("a signing secret is 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise InvalidInputError(f"a signing secret holds 24 to 64 bytes, this one {len(key)}")
    return key


@lru_cache(maxsize=4096)
def _keyed_hmac(secret: str) -> "hmac.HMAC":
    """An HMAC-SHA256 already keyed with ``secret``; ``.copy()`` it per message (saves the key set-up)."""
    return hmac.new(secret_key(secret), digestmod=hashlib.sha256)


def sign(msg_id: str, timestamp: int, body: bytes, secrets: Iterable[str]) -> str:
    """Return the ``webhook-signature`` header value: one ``v1,<base64>`` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    sigs = []
    for secret in secrets:
        mac = _keyed_hmac(secret).copy()
        mac.update(signed)
        sigs.append("v1," + base64.b64encode(mac.digest()).decode())
    return " ".join(sigs)


def signature_headers(msg_id: str, timestamp: int, body: bytes, secrets: Iterable[str]) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, secrets),
    }
