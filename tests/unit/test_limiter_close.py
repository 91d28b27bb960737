"""EndpointLimiter.close: a stopping dispatcher starts no more requests, and the running ones keep their slots."""

import asyncio

import pytest

from hookpost.dispatcher.limits import EndpointLimiter


async def test_close_cancels_waiting_deliveries_and_every_later_acquire():
    limiter = EndpointLimiter(total=10, per_endpoint=2)
    key = "http://127.0.0.1:1"
    running = [await limiter.acquire(key), await limiter.acquire(key)]
    waiting = [asyncio.create_task(limiter.acquire(key)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in waiting)

    assert limiter.close() == 3
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    with pytest.raises(asyncio.CancelledError):
        await limiter.acquire(key)

    assert limiter.in_flight == 2  # the running requests go on, and give their slots back as usual
    for token in running:
        limiter.release(key, token)
    assert limiter.in_flight == 0
    assert limiter.total._value == 10
