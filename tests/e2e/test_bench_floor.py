"""The stack's floor (``bench/floor.py``) does a delivery's whole work — the figure it reports is only worth
something if every change really became a stored, POSTed and finished event."""

from bench.floor import floor
from tests.conftest import RABBIT_URL


async def test_the_floor_delivers_every_change_and_records_it_finished(mongo_url: str, new_receiver) -> None:  # type: ignore[no-untyped-def]
    receiver = await new_receiver()
    result = await floor(RABBIT_URL, mongo_url, receiver.url, rate=40, seconds=1)
    assert result["deliveries"] == 40
    assert result["finished_in_store"] == 40
    assert len(receiver.requests) == 40
    assert {r.json["data"]["details"]["n"] for r in receiver.requests} == set(range(40))
    assert result["cpu_ms_per_delivery"] > 0
