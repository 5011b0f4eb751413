"""What becomes of a delivery, decided as a pure function of how its handling ended.

`decide` looks at the failure (or its absence), the try it was and the retry policy, and returns a `Decision`:

- `Ack` — handled (the consumer acks the success path itself, without asking: see `ACK`);
- `Retry` — park the original bytes in a hold queue of the ladder, attempt header raised, story in headers;
- `DeadLetter` — move it to the dead-letter exchange with its story, and say whether a business refusal is
  answered to the requester;
- `GiveBack` — the external system is known down or paused (`CircuitOpen`): put the original bytes back on the work
  queue as they came, without spending a try (our attempt header unchanged) and without returning the delivery to
  the broker (a quorum queue counts every return toward its `x-delivery-limit`).

Nothing here does I/O, reads a clock or touches a message: the consumer (`esi.bus.consumer`) carries the decision
out. A decision is a small frozen value; a new kind of decision (say, giving a delivery back without spending a try
while a circuit breaker knows the external system is down) is a new `Decision` subclass, a new branch in `decide`
and a new case where the consumer carries decisions out — the existing ones stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from esi.bus.headers import (
    ATTEMPT_HEADER,
    H_ADAPTER,
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_NOT_BEFORE,
    H_ORIGINAL_EXCHANGE,
    H_ORIGINAL_ROUTING_KEY,
)
from esi.errors import BusinessError, CircuitOpen, EsiError, PermanentError, TransientError

#: longest error message carried in a header (a whole HTML error page has no place there)
MAX_ERROR_MESSAGE = 2000


class HoldStep(Protocol):
    """One rung of the retry ladder: a hold queue and the time a message waits in it (`topology.RetryStep`)."""

    @property
    def queue(self) -> str: ...

    @property
    def delay_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The settings a decision depends on: how many tries a message gets, and the ladder it waits on between them."""

    max_attempts: int
    ladder: tuple[HoldStep, ...]

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_attempts > 1 and not self.ladder:
            raise ValueError("a retry policy with more than one attempt needs at least one hold queue")
        object.__setattr__(self, "ladder", tuple(self.ladder))  # a list passed in must not change under us

    def step(self, attempt: int, *, at_least: float | None = None) -> HoldStep:
        """The hold queue a message waits in after its `attempt`-th try failed (1-based; the last step repeats).

        `at_least`: seconds the system asked us to wait (`Retry-After`): the nearest rung at or above it, if the
        attempt's own rung is shorter (the last rung when none is that long).
        """
        step = self.ladder[min(max(attempt, 1), len(self.ladder)) - 1]
        if at_least is None or step.delay_s >= at_least:
            return step
        return next((rung for rung in self.ladder if rung.delay_s >= at_least), self.ladder[-1])


class Decision:
    """What the consumer does with one delivery. Subclasses are frozen dataclasses; `outcome` labels the metric."""

    __slots__ = ()

    #: the `outcome` label of `esi_messages_consumed_total`
    outcome: ClassVar[str]


@dataclass(frozen=True, slots=True)
class Ack(Decision):
    """Handled: acknowledge the delivery."""

    outcome: ClassVar[str] = "ok"


#: the one `Ack`: deciding a success builds nothing
ACK = Ack()


@dataclass(frozen=True, slots=True)
class Retry(Decision):
    """Republish the original bytes to `queue` (a hold queue) with `headers`, then ack the delivery.

    `headers` are the delivery's own plus the failure's story, with the attempt header raised to the next try.
    """

    error: EsiError
    #: the try that failed
    attempt: int
    queue: str
    delay_s: float
    headers: dict[str, Any]

    outcome: ClassVar[str] = "retried"

    @property
    def reason(self) -> str:
        return reason(self.error)


@dataclass(frozen=True, slots=True)
class DeadLetter(Decision):
    """Republish the original bytes to the queue's dead-letter exchange with `headers`, then ack the delivery.

    `answer_with`, when set, is the message type of the error response the requester is sent first (a business
    refusal of a request), so that its request ends `failed` with the reason.
    """

    error: EsiError
    #: the try that failed (the last one)
    attempt: int
    headers: dict[str, Any]
    answer_with: str | None = None

    outcome: ClassVar[str] = "dead_lettered"

    @property
    def reason(self) -> str:
        return reason(self.error)


@dataclass(frozen=True, slots=True)
class GiveBack(Decision):
    """Republish the original bytes to the work queue itself with its headers unchanged (no try spent), then ack.

    The consumer has stopped (or is about to stop) taking deliveries from that queue while the system is down, so
    the message waits there, not in the ladder or the dead-letter queue, until the breaker lets calls through again.
    """

    error: EsiError
    #: the try that was not made (it stays the message's next try)
    attempt: int
    headers: dict[str, Any]

    outcome: ClassVar[str] = "given_back"

    @property
    def reason(self) -> str:
        return reason(self.error)


def reason(error: EsiError) -> str:
    """How a failure reads in logs, timelines and the request's state: `Class: message`."""
    return f"{type(error).__name__}: {error.message}"


def classify(exc: BaseException) -> EsiError:
    """The `EsiError` an exception stands for: itself, or — a bug, or a library's surprise — a transient one."""
    if isinstance(exc, EsiError):
        return exc
    return TransientError(f"unexpected {type(exc).__name__}: {exc}", code="unexpected_error")


def failure_headers(
    headers: Mapping[str, Any],
    error: EsiError,
    *,
    attempt: int,
    adapter: str,
    exchange: str | None,
    routing_key: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The delivery's headers with the failure's story added (a new dict; `headers` is left as it was).

    The first failure, the original exchange and routing key are kept from an earlier failure's headers: a message
    coming back from a hold queue arrives through the default exchange, under the work queue's name.
    """
    at = now.isoformat(timespec="milliseconds")
    out = dict(headers)
    out.setdefault(H_FIRST_FAILURE, at)
    out[H_LAST_FAILURE] = at
    out.setdefault(H_ORIGINAL_EXCHANGE, exchange or "")
    out.setdefault(H_ORIGINAL_ROUTING_KEY, routing_key or "")
    out[H_ERROR_CLASS] = type(error).__name__
    out[H_ERROR_CODE] = error.code
    out[H_ERROR_MESSAGE] = error.message[:MAX_ERROR_MESSAGE]
    out[H_ADAPTER] = adapter
    out[H_ATTEMPTS] = attempt
    return out


def decide(
    failure: BaseException | None,
    attempt: int,
    policy: RetryPolicy,
    *,
    adapter: str,
    headers: Mapping[str, Any],
    exchange: str | None,
    routing_key: str | None,
    now: datetime,
    answer_with: str | None = None,
) -> Decision:
    """What to do with a delivery whose handling ended with `failure` (None: it succeeded) on its `attempt`-th try.

    - success → `ACK`;
    - `PermanentError` → `DeadLetter` at once; a `BusinessError` carries `answer_with` (the response type of the
      delivery when it is a request, given by the caller), so that the requester is answered;
    - `CircuitOpen` (the call was not made: the system is known down or paused) → `GiveBack`, whatever the attempt;
    - `TransientError`, or any other exception (as transient, code `unexpected_error`) → `Retry` in the ladder's
      hold queue for this attempt (the last one for attempts beyond the ladder; the nearest one at or above the
      error's `retry_after`, when the system asked for a wait), until the `max_attempts`-th try fails: then
      `DeadLetter`.

    `headers`, `exchange` and `routing_key` are the delivery's; `adapter` names the service deciding; `now` stamps
    the failure. An attempt below 1 counts as the first.
    """
    if failure is None:
        return ACK
    error = classify(failure)
    attempt = max(attempt, 1)
    if isinstance(error, CircuitOpen):
        return GiveBack(error, attempt, dict(headers))
    story = failure_headers(
        headers, error, attempt=attempt, adapter=adapter, exchange=exchange, routing_key=routing_key, now=now
    )
    if isinstance(error, PermanentError) or attempt >= policy.max_attempts:
        story[H_DEAD_LETTERED_AT] = story[H_LAST_FAILURE]
        return DeadLetter(error, attempt, story, answer_with if isinstance(error, BusinessError) else None)
    retry_after = error.retry_after if isinstance(error, TransientError) else None
    step = policy.step(attempt, at_least=retry_after)
    story[ATTEMPT_HEADER] = attempt + 1
    if retry_after is not None and retry_after > step.delay_s:
        # longer than any rung: the message comes back early and is parked again, untried, until then
        story[H_NOT_BEFORE] = int((now.timestamp() + retry_after) * 1000)
    return Retry(error, attempt, step.queue, step.delay_s, story)


def not_yet(headers: Mapping[str, Any], policy: RetryPolicy, now: datetime) -> HoldStep | None:
    """For a message back early from the ladder (a `Retry-After` beyond its longest rung): the rung to wait in
    again, without a try; None when it may be tried now."""
    value = headers.get(H_NOT_BEFORE)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not policy.ladder:
        return None
    remaining = value / 1000 - now.timestamp()
    if remaining <= 0.01:
        return None
    return policy.step(1, at_least=remaining)
