"""A circuit breaker per external system and adapter process: ride out an outage instead of burning retries on it.

    closed ──(N transient failures in a row)──▶ open ──(probe answers)──▶ half-open ──(trial call succeeds)──▶ closed
       ▲                                          ▲                           │
       └──────────── resume ── paused ◀── pause ──┴──(trial call fails)───────┘

- Only transient failures count (timeouts, connection errors, 5xx, 429, 408: `TransientError`); permanent errors and
  business refusals are answers, and say nothing about the system being down.
- While open, calls are refused at once with `CircuitOpen` (a `TransientError`): the consumer gives the message back
  to its queue without spending an attempt, and stops taking deliveries (`on_change`), so that messages wait in the
  queue rather than in the retry ladder or the dead-letter queue. A probe (the client's cheap `check()`: DMS health,
  Creatio login) runs with backoff (1 s doubling up to 30 s); when it answers, the breaker is half-open: consumption
  resumes and one trial call goes through, the others wait for its outcome.
- `pause()` / `resume()`: planned maintenance, set by an operator for every replica (the store holds it); a paused
  system behaves as open, without probes, until resumed.

Neither purgatory nor aiobreaker fits: both go half-open after a fixed time on the next call, while a consumer that
stopped consuming makes no next call; what is needed here is an active probe with backoff and a hook that pauses
consumption — the state machine itself is the small part below.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from esi import metrics
from esi.errors import CircuitOpen, TransientError

log = logging.getLogger(__name__)


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    PAUSED = "paused"


#: esi_circuit_open by state: 1 not consuming (open, paused), 0.5 half-open, 0 closed
_GAUGE = {State.CLOSED: 0.0, State.HALF_OPEN: 0.5, State.OPEN: 1.0, State.PAUSED: 1.0}


Probe = Callable[[], Awaitable[None]]
Listener = Callable[[State, State], None]


class Breaker:
    """The breaker of one system in one process. `guard()` before a call, `success()` / `failure()` after it."""

    def __init__(
        self,
        *,
        system: str,
        probe: Probe | None = None,
        failure_threshold: int = 5,
        probe_initial: float = 1.0,
        probe_max: float = 30.0,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.system = system
        self._probe = probe
        self.failure_threshold = failure_threshold
        self.probe_initial = probe_initial
        self.probe_max = probe_max
        self.state = State.CLOSED
        self.since = time.time()
        #: why it is open or paused (the last failure, or the operator's reason)
        self.reason: str | None = None
        self._failures = 0
        self._trial: asyncio.Future[None] | None = None
        #: where the next round of probes starts: after a failed trial, not at 1 s again
        self._next_delay = probe_initial
        self._listeners: list[Listener] = []
        self._prober: asyncio.Task[None] | None = None
        self._gauge = metrics.CIRCUIT_OPEN.labels(system)
        self._gauge.set(0)

    # --- what callers see ---------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.state in (State.CLOSED, State.HALF_OPEN)

    def on_change(self, listener: Listener) -> None:
        """Call `listener(old, new)` on every transition (the consumer pauses and resumes its consumption)."""
        self._listeners.append(listener)

    async def guard(self) -> bool:
        """Before a call: return whether this call is the half-open trial; raise `CircuitOpen` if none may go."""
        while True:
            if self.state is State.CLOSED:
                return False
            if self.state is State.HALF_OPEN:
                if self._trial is None:
                    self._trial = asyncio.get_running_loop().create_future()
                    return True
                # another call is the trial: wait for its outcome rather than pile onto a system just back
                await asyncio.shield(self._trial)
                continue
            raise CircuitOpen(f"{self.system} is {self.describe()}", system=self.system)

    def success(self, trial: bool = False) -> None:
        self._failures = 0
        if trial or self.state is State.HALF_OPEN:
            self._next_delay = self.probe_initial
            self._transition(State.CLOSED, None)
        self._end_trial(trial)

    def failure(self, error: BaseException, trial: bool = False) -> None:
        """Count a failed call; only transient failures count, anything else is the system answering."""
        if isinstance(error, CircuitOpen):
            self._end_trial(trial)
            return
        if not isinstance(error, TransientError):  # the system answered: it is up
            self.success(trial)
            return
        self._failures += 1
        if self.state is State.CLOSED and self._failures >= self.failure_threshold:
            self._open(f"{self._failures} transient failures in a row, the last: {error}")
        elif trial or self.state is State.HALF_OPEN:
            self._open(f"the trial call failed: {error}")
        self._end_trial(trial)

    def abandon(self, trial: bool) -> None:
        """A call given up (cancelled) says nothing of the system; a trial given up lets another be the trial."""
        self._end_trial(trial)

    def describe(self) -> str:
        what = {
            State.CLOSED: "closed",
            State.OPEN: "unavailable (circuit open)",
            State.HALF_OPEN: "half-open",
            State.PAUSED: "paused for maintenance",
        }[self.state]
        return what + (f": {self.reason}" if self.reason else "")

    def report(self) -> dict[str, object]:
        """For /readyz: the state, since when, and why."""
        return {"state": self.state.value, "since": _iso(self.since), "reason": self.reason}

    # --- maintenance --------------------------------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        if self.state is not State.PAUSED:
            self._stop_probing()
            self._transition(State.PAUSED, reason)
        else:
            self.reason = reason

    def resume(self) -> None:
        """End a pause: the system is assumed up (a failing one opens the breaker again on its own)."""
        if self.state is State.PAUSED:
            self._failures = 0
            self._transition(State.CLOSED, None)

    async def aclose(self) -> None:
        self._stop_probing()
        if self._trial is not None and not self._trial.done():
            self._trial.set_result(None)

    # --- inside -------------------------------------------------------------------------------------------------

    def _open(self, reason: str) -> None:
        self._transition(State.OPEN, reason)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name=f"breaker-probe-{self.system}"
            )

    async def _probe_until_up(self) -> None:
        """Probe with backoff while open; half-open when the system answers (without a probe: when the wait is
        over, and the trial call is the probe)."""
        delay = self._next_delay
        while self.state is State.OPEN:
            await asyncio.sleep(delay)
            if self.state is not State.OPEN:
                return
            try:
                if self._probe is not None:
                    await self._probe()
            except Exception as exc:  # noqa: BLE001 - still down: wait longer
                log.debug("%s probe failed: %s", self.system, exc)
                delay = min(delay * 2, self.probe_max)
                continue
            # a trial that fails opens it again: the next round of probes starts where this one stopped
            self._next_delay = min(delay * 2, self.probe_max)
            self._transition(State.HALF_OPEN, "the probe answered; one trial call decides")
            return

    def _end_trial(self, trial: bool) -> None:
        if trial and self._trial is not None:
            if not self._trial.done():
                self._trial.set_result(None)
            self._trial = None

    def _stop_probing(self) -> None:
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
        self._prober = None

    def _transition(self, new: State, reason: str | None) -> None:
        old = self.state
        if old is new:
            return
        self.state, self.since, self.reason = new, time.time(), reason
        # half-open is consuming again, its next call deciding: an idle replica may stay there until a message comes
        # (its peers took them all), which is not an outage — so not 1, which the alert on long-open breakers reads
        self._gauge.set(_GAUGE[new])
        metrics.CIRCUIT_TRANSITIONS.labels(self.system, new.value).inc()
        level = logging.INFO if new in (State.CLOSED, State.HALF_OPEN, State.PAUSED) else logging.WARNING
        log.log(level, "%s circuit %s -> %s%s", self.system, old.value, new.value, f": {reason}" if reason else "")
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:  # a listener must not break the breaker
                log.exception("a listener of the %s circuit failed", self.system)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
