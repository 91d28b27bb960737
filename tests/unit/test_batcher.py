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
