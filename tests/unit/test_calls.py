"""The way calls to external systems go: the limiter, timing, errors (esi.systems.calls)."""

from __future__ import annotations

import asyncio

import pytest

from esi.errors import TransientError
from esi.metrics import EXTERNAL_ERRORS, EXTERNAL_IN_FLIGHT, EXTERNAL_WAITING
from esi.systems.calls import Guarded, Limiter


class SlowSystem:
    """A client whose calls last until the test lets them finish."""

    def __init__(self) -> None:
        self.under_way = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def call(self, n: int) -> int:
        self.under_way += 1
        self.peak = max(self.peak, self.under_way)
        try:
            await self.release.wait()
            return n * 2
        finally:
            self.under_way -= 1

    async def fail(self) -> None:
        raise TransientError("down for now")


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_calls_beyond_the_limit_wait_their_turn_and_all_complete() -> None:
    system = SlowSystem()
    client = Guarded(system, system="limited-test", limiter=Limiter(system="limited-test", max_concurrency=3))
    calls = [asyncio.create_task(client.call(i)) for i in range(10)]
    await _until(lambda: system.under_way == 3 and EXTERNAL_WAITING.labels("limited-test")._value.get() == 7)
    assert EXTERNAL_IN_FLIGHT.labels("limited-test")._value.get() == 3
    system.release.set()
    assert await asyncio.gather(*calls) == [i * 2 for i in range(10)]
    assert system.peak == 3
    assert EXTERNAL_IN_FLIGHT.labels("limited-test")._value.get() == 0
    assert EXTERNAL_WAITING.labels("limited-test")._value.get() == 0


async def test_without_a_limit_every_call_goes_at_once_and_failures_are_counted() -> None:
    system = SlowSystem()
    client = Guarded(system, system="unlimited-test")
    calls = [asyncio.create_task(client.call(i)) for i in range(25)]
    await _until(lambda: system.under_way == 25)
    system.release.set()
    await asyncio.gather(*calls)
    before = EXTERNAL_ERRORS.labels("unlimited-test", "fail", "TransientError")._value.get()
    with pytest.raises(TransientError):
        await client.fail()
    assert EXTERNAL_ERRORS.labels("unlimited-test", "fail", "TransientError")._value.get() == before + 1
    assert EXTERNAL_IN_FLIGHT.labels("unlimited-test")._value.get() == 0


async def test_a_call_cancelled_while_waiting_or_under_way_gives_its_slot_back() -> None:
    system = SlowSystem()
    client = Guarded(system, system="cancel-test", limiter=Limiter(system="cancel-test", max_concurrency=2))
    assert client.call is client.call  # the wrapper is built once
    under_way = [asyncio.create_task(client.call(i)) for i in range(2)]
    waiting = asyncio.create_task(client.call(99))
    await _until(lambda: system.under_way == 2 and EXTERNAL_WAITING.labels("cancel-test")._value.get() == 1)
    waiting.cancel()
    under_way[0].cancel()
    await asyncio.gather(waiting, under_way[0], return_exceptions=True)
    system.release.set()
    assert await under_way[1] == 2
    # both slots are free again: two calls are under way at once
    system.release.clear()
    again = [asyncio.create_task(client.call(i)) for i in (1, 2)]
    await _until(lambda: system.under_way == 2)
    system.release.set()
    assert await asyncio.gather(*again) == [2, 4]
    assert EXTERNAL_IN_FLIGHT.labels("cancel-test")._value.get() == 0
    assert EXTERNAL_WAITING.labels("cancel-test")._value.get() == 0


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    from esi.systems.http import MAX_RETRY_AFTER_S, retry_after

    assert retry_after("3") == 3.0
    assert retry_after(" 120 ") == 120.0
    assert retry_after(None) is None
    assert retry_after("") is None
    assert retry_after("soon") is None
    assert retry_after("-5") is None  # not delay-seconds
    assert retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0  # in the past: at once
    assert retry_after("99999999") == MAX_RETRY_AFTER_S


def test_a_429_or_503_carries_its_retry_after() -> None:
    import httpx

    from esi.systems.http import error_for_status

    for status in (429, 503):
        error = error_for_status(httpx.Response(status, headers={"Retry-After": "3"}), system="dms", operation="x")
        assert isinstance(error, TransientError)
        assert error.retry_after == 3.0
        assert error.code == f"http_{status}"
    assert error_for_status(httpx.Response(502), system="dms", operation="x").retry_after is None  # type: ignore[attr-defined]


async def test_an_open_breaker_refuses_calls_before_they_reach_the_system() -> None:
    from esi.errors import CircuitOpen
    from esi.systems.breaker import Breaker, State

    system = SlowSystem()
    breaker = Breaker(system="guarded-breaker", failure_threshold=3)
    client = Guarded(
        system, system="guarded-breaker", breaker=breaker, limiter=Limiter(system="guarded-breaker", max_concurrency=2)
    )
    for _ in range(3):
        with pytest.raises(TransientError):
            await client.fail()
    assert breaker.state is State.OPEN
    system.release.set()
    with pytest.raises(CircuitOpen):
        await client.call(1)
    assert system.peak == 0  # the call never reached the system
    # the refused call gave its slot back: two more can wait for the breaker
    assert EXTERNAL_IN_FLIGHT.labels("guarded-breaker")._value.get() == 0


async def test_a_rate_limit_spaces_the_calls_out() -> None:
    import time

    system = SlowSystem()
    system.release.set()
    client = Guarded(system, system="rated", limiter=Limiter(system="rated", max_concurrency=50, rate_limit=20))
    started = time.monotonic()
    assert await asyncio.gather(*(client.call(i) for i in range(40))) == [i * 2 for i in range(40)]
    # a bucket of 20 at once, then 20 per second: the 40th call starts about a second in
    assert 0.85 <= time.monotonic() - started < 3.0


async def test_a_failed_trial_call_gives_its_message_back_untried() -> None:
    """The half-open trial that fails raises `CircuitOpen` (the consumer gives the message back without spending a
    try) and opens the breaker again; a failure while the breaker is closed stays the system's own error."""
    from datetime import UTC, datetime

    from esi.bus.decision import GiveBack, RetryPolicy, decide
    from esi.bus.topology import RetryStep
    from esi.errors import CircuitOpen
    from esi.systems.breaker import Breaker, State

    system = SlowSystem()
    breaker = Breaker(system="guarded-trial", failure_threshold=1, probe_initial=0.01)
    client = Guarded(system, system="guarded-trial", breaker=breaker)
    with pytest.raises(TransientError) as first:
        await client.fail()  # closed: the call's own failure, a try spent
    assert not isinstance(first.value, CircuitOpen)
    assert breaker.state is State.OPEN
    await _until(lambda: breaker.state is State.HALF_OPEN)
    with pytest.raises(CircuitOpen) as trial:
        await client.fail()  # the trial
    assert isinstance(trial.value.__cause__, TransientError)
    assert "trial call failed" in str(trial.value)
    assert breaker.state is State.OPEN
    policy = RetryPolicy(3, (RetryStep("dms_retry_1s", 1.0),))
    decision = decide(
        trial.value,
        2,
        policy,
        adapter="dms",
        headers={},
        exchange="main_exchange",
        routing_key="1c.request.dms.create_user",
        now=datetime.now(UTC),
    )
    assert isinstance(decision, GiveBack)  # the second try of three is not spent: no dead letter at the third
