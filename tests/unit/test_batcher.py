"""The group-commit batcher: per-item results, batches grow under load, errors reach every caller."""

import asyncio

import pytest

from hookpost.dispatcher.batcher import Batcher


async def test_results_in_order_and_batches_grow_with_load():
    calls: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    b = Batcher(write, max_batch=50, max_delay=0.001, max_in_flight=1)
    results = await asyncio.gather(*[b.submit(i) for i in range(200)])
    assert results == [i * 2 for i in range(200)]
    assert len(calls) <= 5 and max(len(c) for c in calls) == 50
    assert await b.submit(7) == 14  # a lone item is written on its own after max_delay


async def test_errors_reach_every_caller_of_the_batch():
    async def write(items: list[int]) -> list[int]:
        raise RuntimeError("store down")

    b = Batcher(write)
    res = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in res)
    with pytest.raises(RuntimeError):
        await b.submit(3)


async def test_endpoint_limiter_defers_only_when_the_wait_would_be_long():
    from hookpost.dispatcher.limits import EndpointLimiter

    lim = EndpointLimiter(total=100, per_endpoint=2)
    release = asyncio.Event()

    async def hold():
        async with lim.slot("http://slow:80"):
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert lim.waiting("http://slow:80") == 4 and not lim.should_defer("http://fast:80", 1.0)
    assert lim.should_defer("http://slow:80", 0.01)  # two running for 50 ms already, two waiting
    assert not lim.should_defer("http://slow:80", 5.0)
    release.set()
    await asyncio.gather(*tasks)
    assert lim.waiting("http://slow:80") == 0


async def test_endpoint_limiter_hands_slots_over_in_order_and_gives_up_after_max_wait():
    from hookpost.dispatcher.limits import EndpointBusyError, EndpointLimiter

    lim = EndpointLimiter(total=100, per_endpoint=1)
    key = "http://one:80"
    held = await lim.acquire(key)
    order: list[str] = []

    async def waiter(name: str, max_wait: float | None) -> None:
        token = await lim.acquire(key, max_wait=max_wait)
        order.append(name)
        lim.release(key, token)

    first = asyncio.create_task(waiter("first", None))
    second = asyncio.create_task(waiter("second", None))
    impatient = asyncio.create_task(waiter("impatient", 0.01))
    with pytest.raises(EndpointBusyError):
        await impatient  # nobody released within 10 ms
    cancelled = asyncio.create_task(waiter("cancelled", None))
    await asyncio.sleep(0)
    cancelled.cancel()
    lim.release(key, held)
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert cancelled.cancelled()
    # every slot came back: a new delivery gets one at once, and the limiter forgot the idle endpoint
    token = await asyncio.wait_for(lim.acquire(key, max_wait=0), 1)
    lim.release(key, token)
    assert lim.waiting(key) == 0 and lim.in_flight == 0


async def test_deferred_deliveries_count_as_ahead_until_they_are_back():
    from hookpost.dispatcher.limits import EndpointLimiter

    lim = EndpointLimiter(total=100, per_endpoint=1)
    key = "http://slow:80"
    token = await lim.acquire(key)
    lim.release(key, token)
    token = await lim.acquire(key)  # one request running; the endpoint's request time is known (a few µs)
    one_round = lim.expected_wait(key)
    for _ in range(5):
        lim.park(key, 0.2)
    assert lim.expected_wait(key) >= 6 * one_round  # 5 deferred ones ahead: 6 rounds
    await asyncio.sleep(0.25)  # the deferred ones are back: one round again (the running request's age, ~0.25 s)
    assert lim.expected_wait(key) < 0.6  # with the 5 still counted it would be 6 rounds, ≥ 1.5 s
    lim.release(key, token)
    assert lim.waiting(key) == 0 and lim.expected_wait(key) == 0.0
