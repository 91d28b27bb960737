"""Broker resource alarms without a broker: the connection's blocked flag, and a publisher that writes nothing
while blocked and fails within its timeout."""

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.errors import BrokerBlockedError
from hookpost.producer import Publisher


class FakePikaConnection:
    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}
        self.is_open = True

    def add_on_connection_blocked_callback(self, cb: Any) -> None:
        self.callbacks["blocked"] = cb

    def add_on_connection_unblocked_callback(self, cb: Any) -> None:
        self.callbacks["unblocked"] = cb


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_nowait(self, exchange: str, routing_key: str, body: bytes, **kw: Any) -> asyncio.Future[None]:
        self.published.append(kw["message_id"])
        return asyncio.get_running_loop().create_future()  # never confirmed


def frame(reason: str) -> Any:
    return SimpleNamespace(method=SimpleNamespace(reason=reason))


async def test_blocked_flag_follows_the_broker() -> None:
    raw = FakePikaConnection()
    conn = AmqpConnection(raw, "amqp://guest:secret@h/%2F")  # type: ignore[arg-type]
    assert not conn.blocked.is_set() and conn.unblocked.is_set() and conn.blocked_reason is None
    raw.callbacks["blocked"](raw, frame("low on disk"))
    assert conn.blocked.is_set() and not conn.unblocked.is_set() and conn.blocked_reason == "low on disk"
    raw.callbacks["unblocked"](raw, frame(""))
    assert not conn.blocked.is_set() and conn.unblocked.is_set() and conn.blocked_reason is None


@pytest.mark.parametrize("blocked_before", [True, False])
async def test_publish_fails_within_its_timeout_while_blocked(blocked_before: bool) -> None:
    raw = FakePikaConnection()
    conn = AmqpConnection(raw, "amqp://h/%2F")  # type: ignore[arg-type]
    channel = FakeChannel()
    publisher = Publisher(["amqp://h/%2F"], timeout=0.3)
    publisher._conn, publisher._channel = conn, channel  # type: ignore[assignment]
    if blocked_before:
        raw.callbacks["blocked"](raw, frame("low on memory"))
    else:  # blocked while the message waits for its confirm
        asyncio.get_running_loop().call_later(0.05, raw.callbacks["blocked"], raw, frame("low on memory"))
    started = time.monotonic()
    with pytest.raises(BrokerBlockedError, match=r"blocking publishes \(low on memory\).*within 0.3s"):
        await publisher.publish({"id": "c-1", "type": "a.b", "entity": {"kind": "a", "id": "1"}})
    assert time.monotonic() - started < 1.0
    assert publisher.blocked
    assert channel.published == ([] if blocked_before else ["c-1"])  # nothing written while blocked
