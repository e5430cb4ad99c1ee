"""Provider back-pressure: a concurrency limit per backend and a circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from kunpay_worker.providers.errors import (
    ProviderCircuitOpen,
    ProviderNotReached,
    ProviderUnavailable,
)
from kunpay_worker.providers.http import CircuitBreaker, ProviderHttp

URL = "https://provider.test/status"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def http() -> AsyncIterator[ProviderHttp]:
    async with aiohttp.ClientSession() as session:
        yield ProviderHttp(
            "TEST",
            session,
            base_url="https://provider.test",
            timeout=aiohttp.ClientTimeout(total=5, connect=1),
            recorder=None,
        )


async def get(http: ProviderHttp) -> int:
    return (await http.request("GET", "/status", operation="status", transaction_id=None)).status


async def test_the_circuit_opens_after_repeated_failures_and_fails_fast(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("TEST", failures=3, cooldown=30, clock=clock)
    http.limit(max_concurrent=8, slot_wait=5, breaker=breaker)
    mocked.get(URL, status=503, repeat=True)
    for _ in range(3):
        assert await get(http) == 503
    assert breaker.state == "open"
    calls = len(mocked.requests[("GET", aiohttp.client.URL(URL))])
    with pytest.raises(ProviderCircuitOpen) as caught:
        await get(http)
    assert isinstance(caught.value, ProviderNotReached)  # nothing was sent
    assert caught.value.retry_after == pytest.approx(30)
    assert len(mocked.requests[("GET", aiohttp.client.URL(URL))]) == calls


async def test_after_the_cooldown_one_probe_closes_it_or_opens_it_again(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("TEST", failures=1, cooldown=10, clock=clock)
    http.limit(max_concurrent=8, slot_wait=5, breaker=breaker)
    mocked.get(URL, exception=aiohttp.ClientConnectionError("refused"))
    with pytest.raises(ProviderUnavailable):
        await get(http)
    assert breaker.state == "open"
    clock.now += 10
    assert breaker.state == "half-open"
    mocked.get(URL, status=500)  # the probe fails: open again for a full cooldown
    assert await get(http) == 500
    assert breaker.state == "open"
    clock.now += 10
    mocked.get(URL, status=200, payload={})
    assert await get(http) == 200
    assert breaker.state == "closed"


async def test_only_one_probe_goes_through_while_half_open(http: ProviderHttp) -> None:
    clock = Clock()
    breaker = CircuitBreaker("TEST", failures=1, cooldown=5, clock=clock)
    breaker.record(ok=False)
    clock.now += 5
    breaker.before_call()  # the probe
    with pytest.raises(ProviderCircuitOpen):
        breaker.before_call()


async def test_a_probe_that_never_reports_does_not_hold_the_circuit_open(
    http: ProviderHttp,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("TEST", failures=1, cooldown=5, clock=clock)
    breaker.record(ok=False)
    clock.now += 5
    breaker.before_call()  # the probe; its task is cancelled and never records anything
    clock.now += 4.9
    assert breaker.state == "open"
    with pytest.raises(ProviderCircuitOpen):
        breaker.before_call()
    clock.now += 0.1
    assert breaker.state == "half-open"
    breaker.before_call()  # another probe
    breaker.record(ok=True)
    assert breaker.state == "closed"


async def test_answers_below_500_keep_the_circuit_closed(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    breaker = CircuitBreaker("TEST", failures=2, cooldown=10, clock=Clock())
    http.limit(max_concurrent=8, slot_wait=5, breaker=breaker)
    for status in (404, 429, 400, 404):
        mocked.get(URL, status=status)
        await get(http)
    assert breaker.state == "closed"


async def test_no_more_calls_in_flight_than_the_limit(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    http.limit(max_concurrent=3, slot_wait=5, breaker=None)
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def slow(_url: Any, **_kwargs: Any) -> CallbackResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return CallbackResult(status=200, payload={})

    mocked.get(URL, callback=slow, repeat=True)
    calls = [asyncio.create_task(get(http)) for _ in range(10)]
    for _ in range(50):  # let every call that can start, start
        await asyncio.sleep(0)
    assert peak == 3
    release.set()
    assert await asyncio.gather(*calls) == [200] * 10
    assert peak == 3


async def test_a_call_that_waits_too_long_for_a_slot_is_not_sent(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    http.limit(max_concurrent=1, slot_wait=0.05, breaker=None)
    release = asyncio.Event()

    async def slow(_url: Any, **_kwargs: Any) -> CallbackResult:
        await release.wait()
        return CallbackResult(status=200, payload={})

    mocked.get(URL, callback=slow, repeat=True)
    first = asyncio.create_task(get(http))
    for _ in range(20):
        await asyncio.sleep(0)
    with pytest.raises(ProviderNotReached, match="slots stayed busy"):
        await get(http)
    assert len(mocked.requests[("GET", aiohttp.client.URL(URL))]) == 1  # only the first
    release.set()
    assert await first == 200
    assert await get(http) == 200  # the slot came back


async def test_calls_waiting_for_a_slot_meet_a_circuit_opened_meanwhile(
    http: ProviderHttp, mocked: aioresponses
) -> None:
    breaker = CircuitBreaker("TEST", failures=1, cooldown=30, clock=Clock())
    http.limit(max_concurrent=1, slot_wait=5, breaker=breaker)
    release = asyncio.Event()

    async def failing(_url: Any, **_kwargs: Any) -> CallbackResult:
        await release.wait()
        return CallbackResult(status=503)

    mocked.get(URL, callback=failing, repeat=True)
    first = asyncio.create_task(get(http))
    for _ in range(20):
        await asyncio.sleep(0)
    waiting = asyncio.create_task(get(http))
    for _ in range(20):
        await asyncio.sleep(0)
    release.set()
    assert await first == 503
    with pytest.raises(ProviderCircuitOpen):
        await waiting
    assert len(mocked.requests[("GET", aiohttp.client.URL(URL))]) == 1
