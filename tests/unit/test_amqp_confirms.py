"""Publisher confirms and returns in the AMQP bridge, against a fake pika channel (frame order as RabbitMQ sends it)."""

import asyncio
from types import SimpleNamespace
from typing import Any

import pika.spec
import pytest

from hookpost.common.amqp import AmqpChannel
from hookpost.common.errors import PublishError


class FakeChannel:
    """Just what AmqpChannel calls on a pika channel."""

    is_open = True

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Any]] = []

    def add_on_close_callback(self, cb: Any) -> None: ...

    def add_on_cancel_callback(self, cb: Any) -> None: ...

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, props: Any, mandatory: bool) -> None:
        self.published.append((exchange, routing_key, props))


def ack(tag: int, multiple: bool = False) -> Any:
    return SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=tag, multiple=multiple))


def returned(message_id: str) -> tuple[Any, ...]:
    method = SimpleNamespace(reply_text="NO_ROUTE")
    return None, method, pika.BasicProperties(message_id=message_id), b""


async def test_a_returned_message_is_never_confirmed_as_sent_even_when_its_id_is_shared():
    ch = AmqpChannel(FakeChannel())  # type: ignore[arg-type]
    ch._confirming = True
    routed = ch.publish_nowait("x", "deliver", b"{}", message_id="evt_A/3")
    unroutable = ch.publish_nowait("x", "nowhere", b"{}", message_id="evt_A/3")
    other = ch.publish_nowait("x", "deliver", b"{}", message_id="evt_B/1")
    ch._on_return(*returned("evt_A/3"))  # return first, then the confirm covering it
    ch._on_confirm(ack(3, multiple=True))
    with pytest.raises(PublishError, match="not routed"):
        await unroutable
    # the routed one with the same id fails too (its caller publishes again: a duplicate, never a loss)
    with pytest.raises(PublishError):
        await routed
    assert await asyncio.wait_for(other, 1) is None
    assert ch.unconfirmed == 0


async def test_confirms_resolve_in_order_and_a_nack_fails_only_its_message():
    ch = AmqpChannel(FakeChannel())  # type: ignore[arg-type]
    ch._confirming = True
    futs = [ch.publish_nowait("x", "deliver", b"{}", message_id=f"m{i}") for i in range(4)]
    ch._on_confirm(ack(2, multiple=True))
    ch._on_confirm(SimpleNamespace(method=pika.spec.Basic.Nack(delivery_tag=3)))
    ch._on_confirm(ack(4))
    assert [f.done() for f in futs] == [True] * 4
    assert futs[0].result() is None and futs[1].result() is None and futs[3].result() is None
    with pytest.raises(PublishError, match="nack"):
        futs[2].result()
