"""The way every call to an external system goes: limited, through its breaker, timed, counted and recorded.

    handler ──▶ Guarded(client).method(...) ──▶ Limiter (calls at once, calls per second) ──▶ Breaker ──▶ client

`Limiter` protects the system: whatever the prefetch, at most `max_concurrency` calls are under way at once per
adapter process (messages beyond it wait their turn while those whose call is done publish their answer and are
acked, so with a prefetch above the limit the limit stays busy), and, when the system publishes a quota, at most
`rate_limit` calls start per second (aiolimiter's leaky bucket). `Breaker` (esi.systems.breaker) refuses calls while
the system is known to be down or paused. `Guarded` wraps a client: every public coroutine method passes the limiter
and the breaker, is timed (the call's own duration, not the wait), its failures counted by class and told to the
breaker, and the call recorded in the timeline of the request being handled (taken from the log context).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

from esi import metrics, tracing
from esi.errors import CircuitOpen, TransientError
from esi.logs import current_context
from esi.systems.breaker import Breaker

if TYPE_CHECKING:
    from esi.store.events import EventRecorder

#: methods of a client that are not calls to the system
_NOT_CALLS = frozenset({"aclose", "check"})


class Limiter:
    """At most `max_concurrency` calls under way at once to one system, and at most `rate_limit` started per second
    (None: no rate limit); the waiting ones counted in a gauge."""

    def __init__(self, *, system: str, max_concurrency: int, rate_limit: float | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        self.system = system
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self._slots = asyncio.Semaphore(max_concurrency)
        # a bucket of one second's calls: a burst up to the rate, then the rate
        self._rate = AsyncLimiter(rate_limit, 1.0) if rate_limit else None
        self._waiting = metrics.EXTERNAL_WAITING.labels(system)

    async def acquire(self) -> None:
        rate = self._rate
        if self._slots.locked() or (rate is not None and not rate.has_capacity()):
            self._waiting.inc()
            try:
                await self._slots.acquire()
                if rate is not None:
                    await _rated(rate, self._slots)
            finally:
                self._waiting.dec()
        else:
            await self._slots.acquire()
            if rate is not None:
                await _rated(rate, self._slots)

    def release(self) -> None:
        self._slots.release()


async def _rated(rate: AsyncLimiter, slots: asyncio.Semaphore) -> None:
    """Take a token of the rate, giving the slot back if cancelled while waiting for it."""
    try:
        await rate.acquire()
    except BaseException:
        slots.release()
        raise


class Guarded:
    """A client whose every call to the system passes `limiter` and `breaker`, and is timed, counted and recorded."""

    def __init__(
        self,
        client: object,
        *,
        system: str,
        limiter: Limiter | None = None,
        breaker: Breaker | None = None,
        events: EventRecorder | None = None,
        service: str = "",
    ) -> None:
        self._client = client
        self._system = system
        self._limiter = limiter
        self._breaker = breaker
        self._events = events
        self._service = service or system

    @property
    def wrapped(self) -> object:
        return self._client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr) or name in _NOT_CALLS:
            return attr
        call = self._guard(name, attr)
        # kept on this instance: later lookups find it without coming back here (a wrapper built per call costs
        # CPU on every call: docs/performance.md)
        self.__dict__[name] = call
        return call

    def _guard(self, name: str, attr: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        system, events, service, limiter, breaker = (
            self._system,
            self._events,
            self._service,
            self._limiter,
            self._breaker,
        )
        in_flight = metrics.EXTERNAL_IN_FLIGHT.labels(system)
        duration = metrics.EXTERNAL_DURATION.labels(system, name)

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if limiter is not None:
                await limiter.acquire()
            try:
                # after the slot: a breaker that opened while this call waited for one refuses it (CircuitOpen)
                trial = await breaker.guard() if breaker is not None else False
                in_flight.inc()
                started = time.perf_counter()
                outcome = "ok"
                try:
                    result = await attr(*args, **kwargs)
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"[:300]
                    metrics.EXTERNAL_ERRORS.labels(system, name, type(exc).__name__).inc()
                    if breaker is not None:
                        breaker.failure(exc, trial)
                        if trial and isinstance(exc, TransientError) and not isinstance(exc, CircuitOpen):
                            # the trial was a question about the system, answered "still down" (the breaker is
                            # open again): the message it carried goes back untried, as the calls refused while the
                            # breaker was open do. Else one message met the outage's first failures on two adapters
                            # and a trial a second later, and was dead-lettered in a minute-long outage. A message
                            # that fails on its own is not held: the next trial is another message, which closes
                            # the breaker, and then this one's failures count as any other's.
                            raise CircuitOpen(
                                f"{system} is unavailable (circuit open): the trial call failed: {exc}", system=system
                            ) from exc
                    raise
                except BaseException:  # cancelled: says nothing of the system
                    outcome = "cancelled"
                    if breaker is not None:
                        breaker.abandon(trial)
                    raise
                finally:
                    in_flight.dec()
                    elapsed = time.perf_counter() - started
                    duration.observe(elapsed)
                    if events is not None:
                        context = current_context()
                        events.record(
                            context.get("request_id"),
                            "external_call",
                            service=service,
                            message_id=context.get("message_id"),
                            system=system,
                            operation=name,
                            outcome=outcome,
                            duration_ms=round(elapsed * 1000, 1),
                        )
                if breaker is not None:
                    breaker.success(trial)
                return result
            finally:
                if limiter is not None:
                    limiter.release()

        # decided once per method (this wrapper is kept): with tracing off, the call pays nothing for it
        return tracing.traced_call(call, system, name) if tracing.enabled else call
