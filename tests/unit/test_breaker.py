"""The circuit breaker's state machine (esi.systems.breaker), without a broker: every transition and what it lets by."""

from __future__ import annotations

import asyncio
import time

import pytest

from esi import metrics
from esi.errors import BusinessError, InvalidMessage, PermanentError, TransientError
from esi.systems.breaker import Breaker, CircuitOpen, State


def _transient(n: int = 0) -> TransientError:
    return TransientError(f"dms create_user: HTTP 503 ({n})", code="http_503")


class Probe:
    """A probe that fails `failures` times, recording when it was called."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def __call__(self) -> None:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise TransientError("still down")


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def _value(metric, *labels: str) -> float:  # type: ignore[no-untyped-def]
    return metric.labels(*labels)._value.get()


async def test_transient_failures_in_a_row_open_it_and_calls_are_then_refused() -> None:
    breaker = Breaker(system="bk-open", failure_threshold=3)
    changes: list[tuple[State, State]] = []
    breaker.on_change(lambda old, new: changes.append((old, new)))
    opened_before = _value(metrics.CIRCUIT_TRANSITIONS, "bk-open", "open")
    for n in range(2):
        assert await breaker.guard() is False
        breaker.failure(_transient(n))
    assert breaker.state is State.CLOSED
    assert _value(metrics.CIRCUIT_OPEN, "bk-open") == 0
    breaker.failure(_transient(2))
    assert breaker.state is State.OPEN
    assert "3 transient failures in a row" in (breaker.reason or "")
    assert changes == [(State.CLOSED, State.OPEN)]
    assert _value(metrics.CIRCUIT_OPEN, "bk-open") == 1
    assert _value(metrics.CIRCUIT_TRANSITIONS, "bk-open", "open") == opened_before + 1
    with pytest.raises(CircuitOpen) as refused:
        await breaker.guard()
    assert isinstance(refused.value, TransientError)
    assert refused.value.code == "circuit_open"
    assert breaker.report()["state"] == "open"
    assert breaker.report()["since"]


@pytest.mark.parametrize(
    "answer",
    [PermanentError("HTTP 400"), BusinessError("user exists"), InvalidMessage("bad payload"), ValueError("a bug")],
)
async def test_answers_and_bugs_never_open_it_and_end_a_run_of_failures(answer: Exception) -> None:
    breaker = Breaker(system="bk-answers", failure_threshold=2)
    for _ in range(10):
        breaker.failure(answer)
    assert breaker.state is State.CLOSED
    breaker.failure(_transient())
    breaker.failure(answer)  # the system answered between two timeouts: not two in a row
    breaker.failure(_transient())
    assert breaker.state is State.CLOSED
    breaker.failure(_transient())
    assert breaker.state is State.OPEN


async def test_a_success_ends_a_run_of_failures() -> None:
    breaker = Breaker(system="bk-success", failure_threshold=2)
    breaker.failure(_transient())
    breaker.success()
    breaker.failure(_transient())
    assert breaker.state is State.CLOSED


async def test_it_probes_with_growing_backoff_and_goes_half_open_when_the_probe_answers() -> None:
    probe = Probe(failures=3)
    breaker = Breaker(system="bk-probe", probe=probe, failure_threshold=1, probe_initial=0.02, probe_max=0.08)
    opened = time.monotonic()
    breaker.failure(_transient())
    assert _value(metrics.CIRCUIT_OPEN, "bk-probe") == 1
    await _until(lambda: breaker.state is State.HALF_OPEN)
    assert _value(metrics.CIRCUIT_OPEN, "bk-probe") == 0.5  # consuming again: not an outage for the alert
    assert len(probe.calls) == 4
    gaps = [b - a for a, b in zip([opened, *probe.calls], probe.calls)]
    # 0.02, 0.04, 0.08, 0.08: doubling up to the cap (sleeps last at least as long as asked)
    for gap, least in zip(gaps, (0.02, 0.04, 0.08, 0.08)):
        assert gap >= least * 0.9, gaps
    assert gaps[-1] < 0.5, gaps


async def test_half_open_lets_one_trial_through_and_the_others_wait_for_its_outcome() -> None:
    breaker = Breaker(system="bk-trial", probe=Probe(failures=0), failure_threshold=1, probe_initial=0.01)
    breaker.failure(_transient())
    await _until(lambda: breaker.state is State.HALF_OPEN)
    assert await breaker.guard() is True  # the trial
    waiting = [asyncio.create_task(breaker.guard()) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert not any(task.done() for task in waiting)
    breaker.success(trial=True)
    assert breaker.state is State.CLOSED
    assert await asyncio.gather(*waiting) == [False, False, False]


async def test_a_failed_trial_opens_it_again_and_the_waiting_calls_are_refused() -> None:
    probe = Probe(failures=0)
    breaker = Breaker(system="bk-trial-fails", probe=probe, failure_threshold=1, probe_initial=0.01, probe_max=1)
    breaker.failure(_transient())
    await _until(lambda: breaker.state is State.HALF_OPEN)
    assert await breaker.guard() is True
    waiting = asyncio.create_task(breaker.guard())
    await asyncio.sleep(0.01)
    breaker.failure(_transient(), trial=True)
    assert breaker.state is State.OPEN
    assert "trial call failed" in (breaker.reason or "")
    with pytest.raises(CircuitOpen):
        await waiting
    # the next round of probes waits longer than the first one did
    reopened = time.monotonic()
    await _until(lambda: breaker.state is State.HALF_OPEN)
    assert probe.calls[-1] - reopened >= 0.018
    await breaker.aclose()


async def test_a_pause_refuses_calls_without_probing_until_resumed() -> None:
    probe = Probe(failures=0)
    breaker = Breaker(system="bk-pause", probe=probe, failure_threshold=1, probe_initial=0.01)
    changes: list[tuple[State, State]] = []
    breaker.on_change(lambda old, new: changes.append((old, new)))
    breaker.failure(_transient())  # open, probing
    breaker.pause("nightly maintenance")
    await asyncio.sleep(0.05)
    assert breaker.state is State.PAUSED
    assert probe.calls == []
    with pytest.raises(CircuitOpen, match="paused for maintenance: nightly maintenance"):
        await breaker.guard()
    assert _value(metrics.CIRCUIT_OPEN, "bk-pause") == 1
    breaker.resume()
    assert breaker.state is State.CLOSED
    assert await breaker.guard() is False
    assert changes == [(State.CLOSED, State.OPEN), (State.OPEN, State.PAUSED), (State.PAUSED, State.CLOSED)]
    assert _value(metrics.CIRCUIT_OPEN, "bk-pause") == 0


async def test_a_listener_that_fails_does_not_stop_the_transition() -> None:
    breaker = Breaker(system="bk-listener", failure_threshold=1)

    def broken(_old: State, _new: State) -> None:
        raise RuntimeError("listener bug")

    seen: list[State] = []
    breaker.on_change(broken)
    breaker.on_change(lambda _old, new: seen.append(new))
    breaker.failure(_transient())
    assert breaker.state is State.OPEN
    assert seen == [State.OPEN]


async def test_without_a_probe_the_next_call_after_the_wait_is_the_trial() -> None:
    breaker = Breaker(system="bk-no-probe", failure_threshold=1, probe_initial=0.01)
    breaker.failure(_transient())
    assert breaker.state is State.OPEN
    await _until(lambda: breaker.state is State.HALF_OPEN)
    assert await breaker.guard() is True
    breaker.success(trial=True)
    assert breaker.state is State.CLOSED
