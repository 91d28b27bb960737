"""Per-endpoint flow control: adaptive limits, first-come-first-served slots, and when a delivery is parked."""

import asyncio
import time

import pytest

from hookpost.dispatcher.limits import EndpointBusyError, EndpointLimiter, endpoint_key

A, B = "http://a:80", "http://b:80"


def test_endpoint_key_is_scheme_host_port():
    assert endpoint_key("https://x.example/hook?q=1") == "https://x.example:443"
    assert endpoint_key("http://x.example:8080/a") == "http://x.example:8080"


async def test_slots_are_handed_over_first_come_first_served():
    lim = EndpointLimiter(total=100, per_endpoint=1)
    first = await lim.acquire(A)
    order: list[str] = []

    async def waiter(name: str) -> None:
        token = await lim.acquire(A)
        order.append(name)
        lim.release(A, token)

    tasks = [asyncio.create_task(waiter(n)) for n in "xyz"]
    await asyncio.sleep(0)
    assert lim.waiting(A) == 4
    lim.release(A, first)
    await asyncio.gather(*tasks)
    assert order == ["x", "y", "z"] and lim.waiting(A) == 0


async def test_a_backlog_of_a_healthy_endpoint_waits_its_turn_instead_of_being_parked():
    lim = EndpointLimiter(total=100, per_endpoint=2, window=50)
    tokens = [await lim.acquire(A), await lim.acquire(A)]
    waiters = []
    for _ in range(40):  # far more than its limit, and no other endpoint is active
        assert not lim.should_defer(A)
        waiters.append(asyncio.create_task(lim.acquire(A)))
    await asyncio.sleep(0)
    for t in tokens:
        lim.release(A, t)
    for w in waiters:
        lim.release(A, await w)
    assert lim.waiting(A) == 0


async def test_an_endpoint_holding_its_share_of_the_window_is_parked_while_others_are_active():
    lim = EndpointLimiter(total=100, per_endpoint=2, window=20)
    held = [await lim.acquire(A), await lim.acquire(A)]
    waiters = [asyncio.create_task(lim.acquire(A)) for _ in range(8)]
    await asyncio.sleep(0)
    other = await lim.acquire(B)  # another endpoint becomes active: A's share is 20 / 2 = 10
    lim._active_at = 0.0  # recount the active endpoints now rather than within half a second
    assert lim.should_defer(A)  # A holds 10
    assert not lim.should_defer(B)
    lim.release(B, other)
    for t in held:
        lim.release(A, t)
    for w in waiters:
        lim.release(A, await w)


async def test_waiting_deliveries_are_parked_when_their_endpoint_starts_hanging():
    lim = EndpointLimiter(total=100, per_endpoint=1, hang_after=0.1)
    running = await lim.acquire(A)
    waiter = asyncio.create_task(lim.acquire(A))
    assert not lim.hanging(A)
    with pytest.raises(EndpointBusyError):
        await asyncio.wait_for(waiter, 2)  # the watchdog noticed the request running past hang_after
    assert lim.hanging(A) and lim.should_defer(A)
    lim.release(A, running)
    assert not lim.hanging(A) and not lim.should_defer(A)


async def test_a_timeout_shrinks_the_limit_and_parks_the_waiters_answers_grow_it_back():
    lim = EndpointLimiter(total=100, per_endpoint=10)
    tokens = [await lim.acquire(A) for _ in range(10)]
    waiter = asyncio.create_task(lim.acquire(A))
    await asyncio.sleep(0)
    lim.release(A, tokens.pop(), timed_out=True)
    with pytest.raises(EndpointBusyError):
        await waiter
    assert lim.limit(A) == 8 and lim.hanging(A)
    for t in tokens:
        lim.release(A, t)
    assert not lim.hanging(A)
    for _ in range(60):
        lim.release(A, await lim.acquire(A))
    assert lim.limit(A) == 10  # answers in the usual time grow it back to the cap, never above


async def test_a_request_far_slower_than_usual_shrinks_the_limit():
    lim = EndpointLimiter(total=100, per_endpoint=10)
    for _ in range(5):
        lim.release(A, await lim.acquire(A))
    token = await lim.acquire(A)
    lim._endpoints[A].running[token] = time.monotonic() - 1.0  # a connect that waited for a SYN retransmit
    lim.release(A, token)
    assert lim.limit(A) == 8


async def test_expected_wait_counts_parked_deliveries_until_they_are_back():
    lim = EndpointLimiter(total=100, per_endpoint=1)
    token = await lim.acquire(A)
    lim._endpoints[A].latency = 0.25
    assert lim.expected_wait(A) == 0.25  # one round ahead
    for _ in range(4):
        lim.park(A, 0.2)
    assert lim.expected_wait(A) == 1.25
    await asyncio.sleep(0.25)
    assert lim.expected_wait(A) == 0.25
    lim.release(A, token)
