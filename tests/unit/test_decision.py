"""The consumer's decision, without a broker: every error class, attempts around the limit, ladder shapes, headers.

The last section drives `Consumer` with a fake message and publisher, to pin that the loop only carries decisions
out, and that a success never reaches `decide`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esi.bus import consumer as consumer_module
from esi.bus.consumer import Consumer
from esi.bus.decision import (
    ACK,
    MAX_ERROR_MESSAGE,
    Ack,
    DeadLetter,
    Decision,
    GiveBack,
    Retry,
    RetryPolicy,
    classify,
    decide,
    failure_headers,
    not_yet,
)
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
    H_REPLAY_COUNT,
)
from esi.bus.topology import RetryStep, build_topology
from esi.errors import (
    BusinessError,
    CircuitOpen,
    EsiError,
    InvalidMessage,
    NotFound,
    PermanentError,
    SessionExpired,
    TransientError,
)
from esi.messages import Envelope
from esi.systems.registry import load_registry

NOW = datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
NOW_ISO = "2025-03-01T10:00:00.123+00:00"
EARLIER_ISO = "2025-03-01T09:59:00.000+00:00"

LADDERS: dict[str, tuple[RetryStep, ...]] = {
    "one step": (RetryStep("q.retry.1s", 1.0),),
    "several": (RetryStep("q.retry.1s", 1.0), RetryStep("q.retry.5s", 5.0), RetryStep("q.retry.30s", 30.0)),
}

TRANSIENT = [
    TransientError("dms timed out", code="dms_timeout", system="dms"),
    SessionExpired("session gone", system="crm"),
    EsiError("a bare EsiError is not permanent"),
]
PERMANENT = [PermanentError("4xx", code="dms_rejected", system="dms"), InvalidMessage("bad json", code="bad_json")]
BUSINESS = [
    BusinessError("unknown status", code="unknown_status", system="crm"),
    NotFound("no such order", code="order_not_found", system="crm"),
]
UNEXPECTED = [ValueError("boom"), KeyError("k"), RuntimeError("oops"), ZeroDivisionError("division by zero")]


def _decide(
    failure: BaseException | None,
    attempt: int,
    *,
    max_attempts: int = 3,
    ladder: Sequence[RetryStep] = LADDERS["several"],
    headers: dict[str, Any] | None = None,
    answer_with: str | None = None,
) -> Decision:
    return decide(
        failure,
        attempt,
        RetryPolicy(max_attempts, ladder),
        adapter="dms",
        headers=headers or {},
        exchange="main_exchange",
        routing_key="1c.request.dms.create_user",
        now=NOW,
        answer_with=answer_with,
    )


# --- a system known down, and one that asks for a wait ------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 50])
def test_a_call_refused_by_an_open_breaker_gives_the_message_back_untried(attempt: int) -> None:
    headers = {ATTEMPT_HEADER: attempt, "x-custom": "kept"}
    decision = _decide(
        CircuitOpen("dms is unavailable (circuit open)", system="dms"), attempt, max_attempts=3, headers=headers
    )
    assert isinstance(decision, GiveBack)
    assert decision.outcome == "given_back"
    # not a retry, whatever the attempt: the same headers, the same attempt, no failure story
    assert decision.headers == headers
    assert decision.headers is not headers
    assert decision.attempt == attempt


@pytest.mark.parametrize(
    ("retry_after", "attempt", "queue"),
    [
        (None, 1, "q.retry.1s"),
        (0.5, 1, "q.retry.1s"),
        (1.0, 1, "q.retry.1s"),
        (3, 1, "q.retry.5s"),
        (5, 1, "q.retry.5s"),
        (6, 1, "q.retry.30s"),
        (3, 2, "q.retry.5s"),
        (3, 3, "q.retry.30s"),
    ],
)
def test_retry_after_takes_the_nearest_rung_at_or_above_it(retry_after: float | None, attempt: int, queue: str) -> None:
    error = TransientError("429", code="http_429", system="dms", retry_after=retry_after)
    decision = _decide(error, attempt, max_attempts=10)
    assert isinstance(decision, Retry)
    assert decision.queue == queue
    assert H_NOT_BEFORE not in decision.headers  # a rung is long enough


def test_a_retry_after_beyond_the_longest_rung_parks_the_message_again_until_then() -> None:
    error = TransientError("503", code="http_503", system="dms", retry_after=100)
    policy = RetryPolicy(10, LADDERS["several"])
    decision = _decide(error, 1, max_attempts=10)
    assert isinstance(decision, Retry)
    assert decision.queue == "q.retry.30s"
    not_before = decision.headers[H_NOT_BEFORE]
    assert not_before == int((NOW.timestamp() + 100) * 1000)
    # back after 30 s: 70 s to go, the longest rung again; after 90 s: 10 s to go, the 30 s rung; then it may go
    assert not_yet(decision.headers, policy, NOW + timedelta(seconds=30)).queue == "q.retry.30s"  # type: ignore[union-attr]
    assert not_yet(decision.headers, policy, NOW + timedelta(seconds=96)).queue == "q.retry.5s"  # type: ignore[union-attr]
    assert not_yet(decision.headers, policy, NOW + timedelta(seconds=100)) is None
    assert not_yet({}, policy, NOW) is None
    assert not_yet({H_NOT_BEFORE: "junk"}, policy, NOW) is None


# --- success ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 50])
def test_success_is_the_one_ack_whatever_the_attempt(attempt: int) -> None:
    decision = _decide(None, attempt)
    assert decision is ACK
    assert isinstance(decision, Ack)
    assert decision.outcome == "ok"


# --- every error class × attempts below, at and above the limit ------------------------------------------------------


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("attempt", [1, 2])
def test_transient_below_the_limit_is_retried(error: EsiError, attempt: int) -> None:
    decision = _decide(error, attempt, max_attempts=3)
    assert isinstance(decision, Retry)
    assert decision.outcome == "retried"
    assert decision.error is error
    assert decision.attempt == attempt
    assert decision.headers[ATTEMPT_HEADER] == attempt + 1


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("attempt", [3, 4, 100])
def test_transient_at_or_above_the_limit_is_dead_lettered(error: EsiError, attempt: int) -> None:
    decision = _decide(error, attempt, max_attempts=3, answer_with="user_created")
    assert isinstance(decision, DeadLetter)
    assert decision.outcome == "dead_lettered"
    assert decision.error is error
    assert decision.attempt == attempt
    assert decision.answer_with is None  # only a business refusal is answered


@pytest.mark.parametrize("error", PERMANENT + BUSINESS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_permanent_is_dead_lettered_on_any_attempt(error: EsiError, attempt: int) -> None:
    decision = _decide(error, attempt, max_attempts=3)
    assert isinstance(decision, DeadLetter)
    assert decision.error is error
    assert decision.attempt == attempt


@pytest.mark.parametrize("error", BUSINESS, ids=lambda e: type(e).__name__)
def test_a_business_refusal_is_answered_when_there_is_an_answer(error: EsiError) -> None:
    answered = _decide(error, 1, answer_with="user_created")
    assert isinstance(answered, DeadLetter)
    assert answered.answer_with == "user_created"
    not_a_request = _decide(error, 1, answer_with=None)
    assert isinstance(not_a_request, DeadLetter)
    assert not_a_request.answer_with is None


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_other_permanent_failures_are_not_answered(error: EsiError) -> None:
    decision = _decide(error, 1, answer_with="user_created")
    assert isinstance(decision, DeadLetter)
    assert decision.answer_with is None


@pytest.mark.parametrize("exc", UNEXPECTED, ids=lambda e: type(e).__name__)
def test_an_unexpected_exception_is_transient_with_code_unexpected_error(exc: Exception) -> None:
    retried = _decide(exc, 1, max_attempts=2)
    assert isinstance(retried, Retry)
    assert type(retried.error) is TransientError
    assert retried.error.code == "unexpected_error"
    assert retried.error.message == f"unexpected {type(exc).__name__}: {exc}"
    assert retried.headers[H_ERROR_CLASS] == "TransientError"
    assert retried.headers[H_ERROR_CODE] == "unexpected_error"
    parked = _decide(exc, 2, max_attempts=2, answer_with="user_created")
    assert isinstance(parked, DeadLetter)
    assert parked.error.code == "unexpected_error"
    assert parked.answer_with is None


def test_classify_keeps_an_esi_error_as_it_is() -> None:
    for error in TRANSIENT + PERMANENT + BUSINESS:
        assert classify(error) is error
    assert isinstance(classify(OSError("x")), TransientError)


def test_max_attempts_of_one_dead_letters_the_first_transient_failure() -> None:
    decision = _decide(TransientError("down"), 1, max_attempts=1)
    assert isinstance(decision, DeadLetter)


@pytest.mark.parametrize("attempt", [0, -3])
def test_an_attempt_below_one_counts_as_the_first(attempt: int) -> None:
    decision = _decide(TransientError("down"), attempt)
    assert isinstance(decision, Retry)
    assert decision.attempt == 1
    assert decision.headers[H_ATTEMPTS] == 1
    assert decision.headers[ATTEMPT_HEADER] == 2
    assert decision.queue == LADDERS["several"][0].queue


# --- ladder shapes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LADDERS)
def test_each_attempt_waits_on_its_own_step_and_beyond_the_ladder_on_the_last(shape: str) -> None:
    ladder = LADDERS[shape]
    for attempt in range(1, 12):
        decision = _decide(TransientError("down"), attempt, max_attempts=20, ladder=ladder)
        assert isinstance(decision, Retry)
        expected = ladder[min(attempt, len(ladder)) - 1]
        assert (decision.queue, decision.delay_s) == (expected.queue, expected.delay_s), attempt


def test_the_ladder_is_the_topology_s_own() -> None:
    work = build_topology(load_registry().queues(), retry_delays=[0.5, 2, 60]).queue_for("dms")
    policy = RetryPolicy(5, work.retry_steps)
    for attempt in range(1, 5):
        decision = decide(
            TransientError("down"),
            attempt,
            policy,
            adapter="dms",
            headers={},
            exchange="main_exchange",
            routing_key="1c.request.dms.create_user",
            now=NOW,
        )
        assert isinstance(decision, Retry)
        step = work.retry_step(attempt)
        assert (decision.queue, decision.delay_s) == (step.queue, step.delay_s)


def test_a_policy_needs_an_attempt_and_a_ladder_to_retry_on() -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(0, LADDERS["one step"])
    with pytest.raises(ValueError, match="needs at least one hold queue"):
        RetryPolicy(2, ())
    assert RetryPolicy(1, ()).max_attempts == 1  # never retries: needs no ladder
    assert isinstance(RetryPolicy(3, list(LADDERS["several"])).ladder, tuple)


# --- headers ---------------------------------------------------------------------------------------------------------


def test_a_first_failure_writes_the_whole_story() -> None:
    error = TransientError("dms timed out", code="dms_timeout", system="dms")
    incoming = {ATTEMPT_HEADER: 1, "x-custom": "kept"}
    decision = _decide(error, 1, headers=incoming)
    assert isinstance(decision, Retry)
    assert decision.headers == {
        "x-custom": "kept",
        ATTEMPT_HEADER: 2,
        H_FIRST_FAILURE: NOW_ISO,
        H_LAST_FAILURE: NOW_ISO,
        H_ORIGINAL_EXCHANGE: "main_exchange",
        H_ORIGINAL_ROUTING_KEY: "1c.request.dms.create_user",
        H_ERROR_CLASS: "TransientError",
        H_ERROR_CODE: "dms_timeout",
        H_ERROR_MESSAGE: "dms timed out",
        H_ADAPTER: "dms",
        H_ATTEMPTS: 1,
    }
    assert incoming == {ATTEMPT_HEADER: 1, "x-custom": "kept"}  # the delivery's own headers are left alone


def test_a_later_failure_keeps_the_first_failure_and_the_original_route() -> None:
    # back from a hold queue: it arrives through the default exchange, under the work queue's name
    earlier = {
        ATTEMPT_HEADER: 3,
        H_FIRST_FAILURE: EARLIER_ISO,
        H_LAST_FAILURE: EARLIER_ISO,
        H_ORIGINAL_EXCHANGE: "main_exchange",
        H_ORIGINAL_ROUTING_KEY: "1c.request.dms.create_user",
        H_ERROR_CLASS: "TransientError",
        H_ERROR_CODE: "dms_timeout",
        H_ERROR_MESSAGE: "old",
        H_ATTEMPTS: 2,
    }
    decision = decide(
        NotFound("no such user", code="user_not_found"),
        3,
        RetryPolicy(5, LADDERS["several"]),
        adapter="dms",
        headers=earlier,
        exchange="",
        routing_key="dms_queue",
        now=NOW,
    )
    assert isinstance(decision, DeadLetter)
    headers = decision.headers
    assert headers[H_FIRST_FAILURE] == EARLIER_ISO
    assert headers[H_LAST_FAILURE] == NOW_ISO
    assert headers[H_ORIGINAL_EXCHANGE] == "main_exchange"
    assert headers[H_ORIGINAL_ROUTING_KEY] == "1c.request.dms.create_user"
    assert (headers[H_ERROR_CLASS], headers[H_ERROR_CODE], headers[H_ERROR_MESSAGE]) == (
        "NotFound",
        "user_not_found",
        "no such user",
    )
    assert headers[H_ATTEMPTS] == 3
    assert headers[H_DEAD_LETTERED_AT] == NOW_ISO
    assert headers[ATTEMPT_HEADER] == 3  # a dead letter keeps the count it came with


def test_a_dead_letter_is_stamped_when_it_failed_last_and_a_retry_is_not() -> None:
    parked = _decide(TransientError("down"), 3, max_attempts=3)
    assert isinstance(parked, DeadLetter)
    assert parked.headers[H_DEAD_LETTERED_AT] == parked.headers[H_LAST_FAILURE] == NOW_ISO
    retried = _decide(TransientError("down"), 1, max_attempts=3)
    assert H_DEAD_LETTERED_AT not in retried.headers  # type: ignore[attr-defined]


def test_the_error_message_is_truncated() -> None:
    long = "x" * (MAX_ERROR_MESSAGE * 3)
    decision = _decide(PermanentError(long), 1)
    assert isinstance(decision, DeadLetter)
    assert decision.headers[H_ERROR_MESSAGE] == "x" * MAX_ERROR_MESSAGE
    assert decision.error.message == long  # only the header is cut


def test_a_delivery_without_exchange_or_routing_key_records_empty_ones() -> None:
    headers = failure_headers(
        {}, TransientError("x"), attempt=1, adapter="crm", exchange=None, routing_key=None, now=NOW
    )
    assert headers[H_ORIGINAL_EXCHANGE] == ""
    assert headers[H_ORIGINAL_ROUTING_KEY] == ""
    assert headers[H_ADAPTER] == "crm"


def test_decisions_are_values() -> None:
    error = TransientError("down")
    decision = _decide(error, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.queue = "elsewhere"  # type: ignore[misc, attr-defined]
    assert decision == _decide(error, 1)  # same failure, same moment: same decision
    assert isinstance(decision, Retry)
    assert decision.reason == "TransientError: down"


# --- properties ------------------------------------------------------------------------------------------------------

ERRORS = st.sampled_from(TRANSIENT + PERMANENT + BUSINESS + UNEXPECTED)
STEPS = st.lists(
    st.builds(RetryStep, st.text("abc.", min_size=1, max_size=8), st.floats(0.001, 3600, allow_nan=False)),
    min_size=1,
    max_size=8,
)
HEADER_VALUES = st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none())
#: foreign headers, and sometimes those an earlier failure left
HEADERS = st.builds(
    lambda foreign, earlier: {**foreign, **earlier},
    st.dictionaries(st.text("x-abcdef", min_size=1, max_size=12), HEADER_VALUES, max_size=6),
    st.fixed_dictionaries(
        {},
        optional={
            ATTEMPT_HEADER: st.integers(1, 9),
            H_FIRST_FAILURE: st.just(EARLIER_ISO),
            H_ORIGINAL_ROUTING_KEY: st.just("1c.request.crm.update_order_status"),
        },
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    error=ERRORS,
    attempt=st.integers(-5, 200),
    max_attempts=st.integers(1, 100),
    ladder=STEPS,
    headers=HEADERS,
    answer_with=st.sampled_from([None, "user_created"]),
    now=st.datetimes(timezones=st.just(UTC)),
)
def test_the_decision_follows_the_rules(
    error: BaseException,
    attempt: int,
    max_attempts: int,
    ladder: list[RetryStep],
    headers: dict[str, Any],
    answer_with: str | None,
    now: datetime,
) -> None:
    before = dict(headers)
    decision = decide(
        error,
        attempt,
        RetryPolicy(max_attempts, ladder),
        adapter="crm",
        headers=headers,
        exchange="main_exchange",
        routing_key="rk",
        now=now,
        answer_with=answer_with,
    )
    assert headers == before
    tried = max(attempt, 1)
    permanent = isinstance(error, PermanentError)
    if permanent or tried >= max_attempts:
        assert isinstance(decision, DeadLetter)
        assert decision.headers[H_DEAD_LETTERED_AT] == decision.headers[H_LAST_FAILURE]
        assert decision.answer_with == (answer_with if isinstance(error, BusinessError) else None)
        assert decision.headers.get(ATTEMPT_HEADER) == headers.get(ATTEMPT_HEADER)
    else:
        assert isinstance(decision, Retry)
        step = ladder[min(tried, len(ladder)) - 1]
        assert (decision.queue, decision.delay_s) == (step.queue, step.delay_s)
        assert decision.headers[ATTEMPT_HEADER] == tried + 1
        assert H_DEAD_LETTERED_AT not in decision.headers
    assert decision.attempt == tried
    assert decision.headers[H_ATTEMPTS] == tried
    assert decision.headers[H_LAST_FAILURE] == now.isoformat(timespec="milliseconds")
    assert decision.headers[H_FIRST_FAILURE] == headers.get(H_FIRST_FAILURE, decision.headers[H_LAST_FAILURE])
    assert decision.headers[H_ORIGINAL_ROUTING_KEY] == headers.get(H_ORIGINAL_ROUTING_KEY, "rk")
    assert decision.headers[H_ERROR_CLASS] == type(decision.error).__name__
    assert decision.headers[H_ERROR_CODE] == decision.error.code
    assert len(decision.headers[H_ERROR_MESSAGE]) <= MAX_ERROR_MESSAGE
    for name, value in headers.items():  # everything else the delivery carried travels on
        if not name.startswith("x-esi-"):
            assert decision.headers[name] == value


@settings(max_examples=100, deadline=None)
@given(
    first=st.datetimes(timezones=st.just(UTC)),
    gap=st.timedeltas(timedelta(0), timedelta(days=3)),
    attempts=st.integers(2, 10),
)
def test_the_story_accumulates_over_a_chain_of_failures(first: datetime, gap: timedelta, attempts: int) -> None:
    """Each retry's headers are the next delivery's: the first failure stays, the last one moves on."""
    policy = RetryPolicy(attempts, LADDERS["several"])
    headers: dict[str, Any] = {ATTEMPT_HEADER: 1}
    attempt, now, decision = 1, first, None
    while True:
        decision = decide(
            TransientError(f"try {attempt}"),
            attempt,
            policy,
            adapter="dms",
            headers=headers,
            exchange="" if attempt > 1 else "main_exchange",
            routing_key="dms_queue" if attempt > 1 else "1c.request.dms.create_user",
            now=now,
        )
        if isinstance(decision, DeadLetter):
            break
        assert isinstance(decision, Retry)
        headers, attempt, now = decision.headers, decision.headers[ATTEMPT_HEADER], now + gap
    assert attempt == attempts
    assert decision.headers[H_FIRST_FAILURE] == first.isoformat(timespec="milliseconds")
    assert decision.headers[H_LAST_FAILURE] == now.isoformat(timespec="milliseconds")
    assert decision.headers[H_ORIGINAL_ROUTING_KEY] == "1c.request.dms.create_user"
    assert decision.headers[H_ERROR_MESSAGE] == f"try {attempts}"


# --- the consumer carries decisions out ------------------------------------------------------------------------------


class _FakePublisher:
    def __init__(self) -> None:
        self.raw: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.envelopes: list[tuple[Envelope, str]] = []

    async def publish(self, envelope: Envelope, routing_key: str, **_: Any) -> None:
        self.envelopes.append((envelope, routing_key))

    async def publish_raw(
        self, exchange: str, routing_key: str, body: bytes, *, headers: Any, properties: Any = None
    ) -> None:
        self.raw.append((exchange, routing_key, body, dict(headers)))


def _consumer(handler: Any, publisher: _FakePublisher, *, max_attempts: int = 3) -> tuple[Consumer, list[Any]]:
    work = build_topology(load_registry().queues(), retry_delays=[1, 5]).queue_for("dms")
    consumer = Consumer(
        service="dms",
        queue=work,
        channel=None,
        publisher=publisher,  # type: ignore[arg-type]
        catalog=load_registry().catalog,
        handlers={"create_user": handler},
        max_attempts=max_attempts,
    )
    acked: list[Any] = []

    async def ack(message: Any) -> None:
        acked.append(message)

    consumer._ack = ack  # type: ignore[method-assign]
    return consumer, acked


def _message(attempt: int = 1) -> Any:
    envelope = Envelope(
        message_id=uuid.uuid4().hex,
        request_id="REQ-1",
        source_system="1c",
        target_system="dms",
        message_type="create_user",
        timestamp=NOW,
        payload={"user_id": "U1", "name": "Иван", "email": "ivan@example.com"},
    )
    return SimpleNamespace(
        body=envelope.encode(),
        headers={ATTEMPT_HEADER: attempt},
        exchange="main_exchange",
        routing_key="1c.request.dms.create_user",
        message_id=envelope.message_id,
        correlation_id="REQ-1",
        content_type="application/json",
        content_encoding="utf-8",
        type="create_user",
        app_id="esi",
        timestamp=None,
        delivery_tag=1,
        channel=None,
    )


async def test_a_success_never_reaches_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decision(*args: Any, **kwargs: Any) -> Decision:
        raise AssertionError("decide called on the success path")

    monkeypatch.setattr(consumer_module, "decide", no_decision)

    async def handler(envelope: Envelope, payload: Any) -> list[Envelope]:
        return []

    publisher = _FakePublisher()
    consumer, acked = _consumer(handler, publisher)
    message = _message()
    await consumer.handle(message)
    assert acked == [message]
    assert publisher.raw == []


async def test_a_transient_failure_is_parked_as_decided() -> None:
    async def handler(envelope: Envelope, payload: Any) -> list[Envelope]:
        raise TransientError("dms down", code="dms_down")

    publisher = _FakePublisher()
    consumer, acked = _consumer(handler, publisher)
    message = _message(attempt=2)
    await consumer.handle(message)
    [(exchange, queue, body, headers)] = publisher.raw
    assert (exchange, queue, body) == ("", "dms_queue.retry.5s", message.body)
    assert headers[ATTEMPT_HEADER] == 3
    assert headers[H_ERROR_CODE] == "dms_down"
    assert acked == [message]


async def test_a_business_refusal_is_answered_then_dead_lettered() -> None:
    async def handler(envelope: Envelope, payload: Any) -> list[Envelope]:
        raise BusinessError("user refused", code="user_refused", system="dms")

    publisher = _FakePublisher()
    consumer, acked = _consumer(handler, publisher)
    message = _message()
    await consumer.handle(message)
    [(reply, key)] = publisher.envelopes
    assert reply.message_type == "user_created"
    assert reply.error is not None
    assert reply.error.code == "user_refused"
    assert key == "dms.response.1c.user_created"
    [(exchange, _, body, headers)] = publisher.raw
    assert exchange == "dms_queue_dlx"
    assert body == message.body
    assert headers[H_ERROR_CLASS] == "BusinessError"
    assert acked == [message]


class _Inbox:
    """The store's inbox, in memory."""

    def __init__(self) -> None:
        self.ids: set[tuple[str, str]] = set()

    async def seen(self, consumer: str, message_id: str) -> bool:
        return (consumer, message_id) in self.ids

    async def record(self, consumer: str, message_id: str) -> None:
        self.ids.add((consumer, message_id))


async def test_a_dead_lettered_message_redelivered_after_its_ack_was_lost_is_not_dead_lettered_again() -> None:
    """Found by the chaos run (seed 20261207): a refusal's ack lost with its channel (a reset, a node killed) came
    back, called the DMS again and went to the DLQ a second time — two dead letters (and two error answers) for one
    message; so did a copy of it the outbox relay had published twice."""
    calls = []

    async def handler(envelope: Envelope, payload: Any) -> list[Envelope]:
        calls.append(envelope.message_id)
        raise BusinessError("user refused", code="user_refused", system="dms")

    publisher = _FakePublisher()
    consumer, acked = _consumer(handler, publisher)
    consumer._inbox = _Inbox()
    first = _message()
    await consumer.handle(first)
    assert len(publisher.raw) == 1
    # the ack never reached the broker: the same delivery comes back, marked redelivered
    again = SimpleNamespace(**{**vars(first), "redelivered": True})
    await consumer.handle(again)
    assert len(calls) == 1  # the DMS is not asked again
    assert len(publisher.raw) == 1  # one dead letter
    assert acked == [first, again]
    # a copy of the message (published twice by the relay after a lost confirm), not a redelivery: the refusal is
    # answered once and dead-lettered once
    copy = SimpleNamespace(**vars(first))
    await consumer.handle(copy)
    assert len(publisher.raw) == 1
    assert len(publisher.envelopes) == 1  # the error answer to 1C, sent once
    assert acked == [first, again, copy]
    # an operator's replay from the DLQ is a new publish with the next replay count: handled again
    replayed = SimpleNamespace(**{**vars(first), "headers": {ATTEMPT_HEADER: 1, H_REPLAY_COUNT: 1}})
    await consumer.handle(replayed)
    assert len(calls) == 3
    assert len(publisher.raw) == 2
    # and its own redelivery, once dead-lettered, is recognised in turn
    await consumer.handle(SimpleNamespace(**{**vars(replayed), "redelivered": True}))
    assert len(calls) == 3
    assert len(publisher.raw) == 2


async def test_a_decision_the_consumer_cannot_carry_out_is_an_error_not_an_ack() -> None:
    @dataclasses.dataclass(frozen=True)
    class GiveBack(Decision):  # the shape a later decision takes
        outcome = "given_back"

    consumer, acked = _consumer(None, _FakePublisher())
    with pytest.raises(TypeError):
        await consumer._carry_out(GiveBack(), _message(), None)
    assert acked == []
