"""The consumer loop: the one place that acts on ack, retry or dead-letter.

For each delivery it decodes the envelope, validates the payload against the catalog, runs the handler, publishes
what the handler returned (waiting for every confirm), records the message in the inbox and only then acks (the
acks of one loop turn leave together: `esi.bus.acks`).
A failure is handed to `esi.bus.decision.decide`, a pure function that chooses from its class (`esi.errors`) what
becomes of the delivery; the loop carries that out (publishing, acking, rejecting, tracking, events, metrics):

- `TransientError` (and any unexpected exception): republish the original bytes to the next hold queue of the retry
  ladder with the attempt count (our own header) raised, then ack; after `max_attempts` tries, dead-letter.
- `PermanentError`: dead-letter at once. A `BusinessError` on a request is also answered to its source with an
  error response, so the requester learns why its request failed.

Dead letters are republished (confirmed) to the queue's dead-letter exchange with the story in headers, body
untouched, and only then is the original acked. If even that publish fails, the delivery is rejected back to the
queue after a pause (`REQUEUE_PAUSE_S`), where the quorum queue's delivery limit is the last backstop: every return
counts against it, so a delivery must not churn through reject and redelivery while the broker cannot take its
retry.

One job in one module, though over 400 lines: the loop's handling of a delivery and the carrying out of each
decision share the delivery's state (the message, its envelope, its acks) and are read together when a guarantee is
in doubt; the decision itself is elsewhere (`esi.bus.decision`), as are the acks' batching and the ports.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from esi import metrics, tracing
from esi.bus.acks import AckBatcher
from esi.bus.dead_letters import letter_id
from esi.bus.decision import Ack, DeadLetter, Decision, GiveBack, Retry, RetryPolicy, decide, not_yet
from esi.bus.headers import (
    ATTEMPT_HEADER,
    H_DEAD_LETTERED_AT,
    H_NOT_BEFORE,
    H_ORIGINAL_EXCHANGE,
    H_ORIGINAL_ROUTING_KEY,
    H_REPLAY_COUNT,
)
from esi.bus.ports import Inbox, NullRecorder, Recorder, Tracker
from esi.bus.publisher import Publisher
from esi.bus.topology import WorkQueue
from esi.errors import EsiError, InvalidMessage
from esi.logs import log_context
from esi.messages import Catalog, Envelope, ErrorInfo, Handler, Kind, decode_envelope

log = logging.getLogger(__name__)

#: how long a delivery whose retry or dead letter could not be published is held before it goes back to its queue
REQUEUE_PAUSE_S = 1.0

_COPIED_PROPERTIES = ("content_type", "content_encoding", "message_id", "correlation_id", "type", "app_id", "timestamp")


class Consumer:
    """Consumes one work queue with up to `prefetch` messages handled concurrently."""

    def __init__(
        self,
        *,
        service: str,
        queue: WorkQueue,
        channel: AbstractChannel,
        publisher: Publisher,
        catalog: Catalog,
        handlers: Mapping[str, Handler],
        max_attempts: int,
        tracker: Tracker | None = None,
        inbox: Inbox | None = None,
        queue_arguments: dict[str, Any] | None = None,
        events: Recorder | None = None,
        keys: Callable[[Mapping[str, object] | None], list[str]] | None = None,
    ) -> None:
        self.service = service
        self.queue = queue
        self._channel = channel
        self._publisher = publisher
        self._catalog = catalog
        self._handlers = dict(handlers)
        #: what `decide` needs of the settings and the topology, built once
        self._policy = RetryPolicy(max_attempts, queue.retry_steps)
        self._tracker = tracker
        self._inbox = inbox
        self._queue_arguments = queue_arguments
        self._events: Recorder = events or NullRecorder()
        #: the business keys of a payload, for the dead-letter index (the registry's)
        self._keys = keys
        self._amqp_queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: acks of one loop turn go out together (the consume channel carries this consumer alone)
        self._acks = AckBatcher()
        #: paused: no deliveries taken (the external system is down or in maintenance); see `pause`
        self._paused = False
        self._switching = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        # declared (not merely looked up) on the robust channel, so that a reconnection restores it and its consumer
        self._amqp_queue = await self._channel.declare_queue(
            self.queue.name, durable=True, arguments=self._queue_arguments, passive=self._queue_arguments is None
        )
        async with self._switching:
            if self._paused:  # paused before it started (a system in maintenance): `resume` consumes
                log.info("%s declared; consuming it is paused", self.queue.name)
                return
            self._consumer_tag = await self._amqp_queue.consume(self._on_message, no_ack=False)
        log.info("consuming %s as %s", self.queue.name, self.service)

    @property
    def paused(self) -> bool:
        return self._paused

    async def pause(self) -> None:
        """Stop taking deliveries (basic.cancel): messages wait in the queue, where waiting costs nothing. The
        deliveries in hand finish (a call refused by an open breaker puts its message back untried)."""
        async with self._switching:
            if self._paused:
                return
            self._paused = True
            await self._cancel()
            log.info("paused consuming %s", self.queue.name)

    async def resume(self) -> None:
        """Take deliveries again after `pause`."""
        async with self._switching:
            if not self._paused:
                return
            self._paused = False
            if self._amqp_queue is not None and self._consumer_tag is None:
                self._consumer_tag = await self._amqp_queue.consume(self._on_message, no_ack=False)
            log.info("resumed consuming %s", self.queue.name)

    async def _cancel(self) -> None:
        if self._amqp_queue is not None and self._consumer_tag is not None:
            try:
                # bounded: on a connection that is reconnecting, the robust channel would wait for it forever
                await asyncio.wait_for(self._amqp_queue.cancel(self._consumer_tag), 5)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - the channel may already be gone
                log.debug("cancel of %s failed: %s", self.queue.name, exc)
            self._consumer_tag = None

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - the caller's own deadline, as asyncio's wait_for takes one
        """Stop taking new messages and let the ones in hand finish."""
        async with self._switching:
            self._paused = True
            await self._cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "%d messages still in flight on %s after %ss; they will be redelivered",
                len(self._tasks),
                self.queue.name,
                timeout,
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._acks.delivered(message)
        task = asyncio.create_task(self.handle(message))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def handle(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        attempt = _int(headers.get(ATTEMPT_HEADER), 1)
        original_key, original_exchange = headers.get(H_ORIGINAL_ROUTING_KEY), headers.get(H_ORIGINAL_EXCHANGE)
        routing_key = original_key if isinstance(original_key, str) and original_key else message.routing_key
        with log_context(
            message_id=message.message_id,
            request_id=message.correlation_id,
            routing_key=routing_key,
            service=self.service,
        ):
            started = time.perf_counter()
            if tracing.enabled:  # a CONSUMER span, child of the publish whose context the headers carry
                with tracing.consuming(
                    message,
                    headers,
                    queue=self.queue.name,
                    routing_key=routing_key,
                    exchange=original_exchange
                    if isinstance(original_exchange, str) and original_exchange
                    else message.exchange,
                    attempt=attempt,
                ) as span:
                    outcome_label, envelope = await self._handle(message, headers, attempt)
                    tracing.settle(span, outcome_label)
            else:
                outcome_label, envelope = await self._handle(message, headers, attempt)
            message_type = envelope.message_type if envelope is not None else "unknown"
            metrics.child(metrics.CONSUMED, self.queue.name, message_type, outcome_label).inc()
            metrics.child(metrics.HANDLER_DURATION, self.queue.name, message_type).observe(
                time.perf_counter() - started
            )

    async def _handle(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], attempt: int
    ) -> tuple[str, Envelope | None]:
        envelope: Envelope | None = None
        if H_NOT_BEFORE in headers:  # rare: only a message back early from a long Retry-After carries it
            step = not_yet(headers, self._policy, datetime.now(UTC))
            if step is not None:
                await self._park_again(message, headers, step.queue)
                return "parked", None
        try:
            envelope = decode_envelope(message.body)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("message body: %s", message.body[:4000])
            # an event has no target: whichever subscriber's events queue it reached is where it belongs
            if not self.queue.events and envelope.target_system != self.queue.system:
                raise InvalidMessage(
                    f"message for {envelope.target_system!r} reached {self.queue.name}", code="wrong_queue"
                )
            handler = self._handlers.get(envelope.message_type)
            if handler is None:
                self._catalog.get(envelope.message_type)  # unknown to esi at all → names the known ones
                raise InvalidMessage(
                    f"{self.service} does not handle {envelope.message_type!r}", code="unknown_message_type"
                )
            payload = self._catalog.validate_payload(envelope)
            if (
                self._inbox is not None
                and getattr(message, "redelivered", False)
                and await self._inbox.seen(self.service, dead_lettered_key(envelope.message_id, headers))
            ):
                # dead-lettered already, but its ack was lost with the channel: a second dead letter (and a second
                # call of the system that refused it) would be a duplicate; a replay from the DLQ is a new publish,
                # never `redelivered`, and carries a new replay count anyway
                log.info(
                    "%s %s was dead-lettered already: redelivery acknowledged",
                    envelope.message_type,
                    envelope.message_id,
                )
                self._event(envelope, "duplicate_ignored", attempt=attempt)
                await self._ack(message)
                return "duplicate", envelope
            if self._inbox is not None and await self._inbox.seen(self.service, envelope.message_id):
                log.info("duplicate %s %s acknowledged without effect", envelope.message_type, envelope.message_id)
                self._event(envelope, "duplicate_ignored", attempt=attempt)
                await self._ack(message)
                return "duplicate", envelope
            self._event(envelope, "consumed", attempt=attempt, queue=self.queue.name)
            if envelope.request_id != message.correlation_id:  # the envelope's says which request: the log too
                with log_context(request_id=envelope.request_id):
                    outgoing = await handler(envelope, payload)
                    await self._publish_all(outgoing)
            else:
                outgoing = await handler(envelope, payload)
                await self._publish_all(outgoing)
            if self._inbox is not None:
                await self._inbox.record(self.service, envelope.message_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure, a bug included: `decide` chooses, this loop carries it out
            if not isinstance(exc, EsiError):
                log.exception("unexpected error handling a message from %s", self.queue.name)
            decision = decide(
                exc,
                attempt,
                self._policy,
                adapter=self.service,
                headers=headers,
                exchange=message.exchange,
                routing_key=message.routing_key,
                now=datetime.now(UTC),
                answer_with=self._response_type(envelope),
            )
            await self._carry_out(decision, message, envelope)
            return decision.outcome, envelope
        # success: acked straight away, without going through `decide` (it would only answer ACK)
        await self._ack(message)
        return "ok", envelope

    async def _carry_out(self, decision: Decision, message: AbstractIncomingMessage, envelope: Envelope | None) -> None:
        match decision:
            case Retry():
                await self._retry(message, envelope, decision)
            case DeadLetter():
                await self._dead_letter(message, envelope, decision)
            case GiveBack():
                await self._give_back(message, envelope, decision)
            case Ack():
                await self._ack(message)
            case _:  # a decision this loop does not know how to carry out yet: a bug, never a silent ack
                raise TypeError(f"no way to carry out {decision!r}")

    def _event(self, envelope: Envelope | None, event: str, **detail: Any) -> None:
        if envelope is not None:
            self._events.record(
                envelope.request_id,
                event,
                service=self.service,
                message_id=envelope.message_id,
                causation_id=envelope.causation_id,
                message_type=envelope.message_type,
                **detail,
            )

    async def _publish_all(self, outgoing: list[Envelope]) -> None:
        if not outgoing:
            return
        stamped = [self._catalog.outgoing(env) for env in outgoing]
        outgoing, keys = [env for env, _ in stamped], [key for _, key in stamped]
        sent_at = datetime.now(UTC)
        # the hops so far (this one's publish included) are written before the messages leave: whoever they reach
        # may settle the request, and a request read as settled shows every hop that led there
        for env, key in zip(outgoing, keys):
            self._event(
                env, "published", at=sent_at, routing_key=key, **({"error": env.error.message} if env.error else {})
            )
        await self._events.durable()
        try:
            if len(outgoing) == 1:  # the common case: one answer, awaited without a task of its own
                await self._publisher.publish(outgoing[0], keys[0])
            else:
                await asyncio.gather(*(self._publisher.publish(env, key) for env, key in zip(outgoing, keys)))
        except Exception as exc:
            for env in outgoing:  # the timeline says so: the delivery goes back or retries (the caller decides)
                self._event(env, "publish_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            raise
        for env in outgoing:
            metrics.published(env.message_type)

    @staticmethod
    def _properties(message: AbstractIncomingMessage) -> dict[str, Any]:
        return {name: getattr(message, name) for name in _COPIED_PROPERTIES if getattr(message, name, None) is not None}

    async def _retry(self, message: AbstractIncomingMessage, envelope: Envelope | None, decision: Retry) -> None:
        log.warning(
            "attempt %d/%d of %s failed (%s); retrying in %ss",
            decision.attempt,
            self._policy.max_attempts,
            _label(envelope),
            decision.reason,
            decision.delay_s,
        )
        try:
            await self._publisher.publish_raw(
                "", decision.queue, message.body, headers=decision.headers, properties=self._properties(message)
            )
        except Exception as exc:  # noqa: BLE001 - whatever stopped the publish, the delivery goes back (logged)
            log.error("could not park %s for retry (%s); returning it to %s", _label(envelope), exc, self.queue.name)
            await self._reject_requeue(message)
            return
        await self._ack(message)
        metrics.RETRIED.labels(self.queue.name, envelope.message_type if envelope else "unknown").inc()
        self._event(
            envelope, "retry_scheduled", attempt=decision.attempt, delay_s=decision.delay_s, error=decision.reason
        )
        if envelope is not None and self._tracker is not None:
            await self._track(
                self._tracker.retrying(envelope.request_id, attempt=decision.attempt, error=decision.reason)
            )

    async def _park_again(self, message: AbstractIncomingMessage, headers: dict[str, Any], queue: str) -> None:
        """Back to a hold queue, untried: the system asked for a longer wait than the ladder's rungs."""
        try:
            await self._publisher.publish_raw(
                "", queue, message.body, headers=headers, properties=self._properties(message)
            )
        except Exception as exc:  # noqa: BLE001 - whatever stopped the publish, the delivery goes back (logged)
            log.error("could not park message %s again (%s); returning the delivery", message.message_id, exc)
            await self._reject_requeue(message)
            return
        await self._ack(message)

    async def _give_back(self, message: AbstractIncomingMessage, envelope: Envelope | None, decision: GiveBack) -> None:
        """Back to the work queue as it came (confirmed), then acked: no try spent, no delivery count raised."""
        log.debug("%s goes back to %s untried: %s", _label(envelope), self.queue.name, decision.reason)
        try:
            await self._publisher.publish_raw(
                "", self.queue.name, message.body, headers=decision.headers, properties=self._properties(message)
            )
        except Exception as exc:  # noqa: BLE001 - whatever stopped the publish, the delivery goes back (logged)
            log.error(
                "could not put %s back on %s (%s); returning the delivery", _label(envelope), self.queue.name, exc
            )
            await self._reject_requeue(message)
            return
        await self._ack(message)
        self._event(envelope, "waiting", attempt=decision.attempt, error=decision.reason)
        if envelope is not None and self._tracker is not None:
            await self._track(self._tracker.waiting(envelope.request_id, error=decision.reason))

    async def _dead_letter(
        self, message: AbstractIncomingMessage, envelope: Envelope | None, decision: DeadLetter
    ) -> None:
        key = dead_lettered_key(envelope.message_id, dict(message.headers or {})) if envelope is not None else None
        if self._inbox is not None and key is not None and await self._dead_lettered_already(key):
            # a copy of a message dead-lettered before (the relay published it twice: a lost confirm): its answer
            # and its dead letter are out already
            log.info("%s was dead-lettered already: this copy is acknowledged", _label(envelope))
            self._event(envelope, "duplicate_ignored", attempt=decision.attempt)
            await self._ack(message)
            return
        log.error("dead-lettering %s after %d attempt(s): %s", _label(envelope), decision.attempt, decision.reason)
        reply = self._error_reply(envelope, decision)
        try:
            if reply is not None:
                await self._publish_all([reply])
            await self._publisher.publish_raw(
                self.queue.dead_letter_exchange,
                "",
                message.body,
                headers=decision.headers,
                properties=self._properties(message),
            )
        except Exception as exc:  # noqa: BLE001 - whatever stopped the publish, the delivery goes back (logged)
            log.error("could not dead-letter %s (%s); returning it to %s", _label(envelope), exc, self.queue.name)
            await self._reject_requeue(message)
            return
        if self._inbox is not None and key is not None:
            # remembered before the ack: if the ack is lost, the redelivery is recognised (`_handle`), and so is a
            # copy of the message (here)
            try:
                await self._inbox.record(self.service, key)
            except Exception as exc:  # noqa: BLE001 - at worst a redelivery is dead-lettered twice (logged)
                log.warning("could not record that %s was dead-lettered (%s)", _label(envelope), exc)
        await self._ack(message)
        metrics.DEAD_LETTERED.labels(
            self.queue.name, envelope.message_type if envelope else "unknown", type(decision.error).__name__
        ).inc()
        self._event(
            envelope,
            "dead_lettered",
            attempt=decision.attempt,
            queue=self.queue.dead_letter_queue,
            error=decision.reason,
        )
        if self._tracker is not None:
            settle = envelope is not None and reply is None
            if settle:
                await self._events.durable()  # the request's state says parked: its hops are there first
            # the index row of the dead letter, with the request's state (when it settles it) in one transaction
            await self._track(
                self._tracker.dead_lettered(
                    envelope.request_id if envelope is not None else None,
                    error=decision.reason,
                    queue=self.queue.dead_letter_queue,
                    letter=self._letter(message, envelope, decision),
                    settle=settle,
                )
            )

    def _letter(
        self, message: AbstractIncomingMessage, envelope: Envelope | None, decision: DeadLetter
    ) -> dict[str, Any]:
        """The dead letter's row of the index (`esi.store.dead_letters.index_row` takes these)."""
        error = decision.error
        payload = envelope.payload if envelope is not None else None
        return {
            "letter_id": letter_id(message.message_id, message.body),
            "queue": self.queue.dead_letter_queue,
            "system": self.queue.system,
            "message_type": envelope.message_type if envelope is not None else None,
            "reason_class": type(error).__name__,
            "reason_code": error.code,
            "reason": error.message,
            "keys": self._keys(payload) if self._keys is not None else [],
            "request_id": envelope.request_id if envelope is not None else message.correlation_id,
            "routing_key": str(decision.headers.get(H_ORIGINAL_ROUTING_KEY) or message.routing_key or ""),
            "attempts": decision.attempt,
            "dead_lettered_at": str(decision.headers.get(H_DEAD_LETTERED_AT) or "") or None,
            "size": len(message.body),
        }

    async def _dead_lettered_already(self, key: str) -> bool:
        assert self._inbox is not None  # noqa: S101 - the caller checked; narrows for mypy
        try:
            return await self._inbox.seen(self.service, key)
        except Exception as exc:  # noqa: BLE001 - the store is down: dead-letter (at worst a copy), never block
            log.warning("could not check whether a message was dead-lettered already (%s)", exc)
            return False

    def _response_type(self, envelope: Envelope | None) -> str | None:
        """The message type answering the delivery, if it is a request (what `decide` may tell us to answer with)."""
        if envelope is None:
            return None
        try:
            spec = self._catalog.get(envelope.message_type)
        except InvalidMessage:  # a type unknown to esi: nobody waits for an answer to it
            return None
        return spec.response_type if spec.kind is Kind.REQUEST else None

    @staticmethod
    def _error_reply(envelope: Envelope | None, decision: DeadLetter) -> Envelope | None:
        """The error response `decision` says the requester gets, so that its request ends `failed` with a reason."""
        if envelope is None or decision.answer_with is None:
            return None
        error = decision.error
        info = ErrorInfo(code=error.code, message=error.message, error_class=type(error).__name__, system=error.system)
        return envelope.reply(decision.answer_with, error=info)

    async def _track(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as exc:  # noqa: BLE001 - tracking must never block the flow of messages
            log.error("could not record a request's state: %s", exc)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            # bounded: an ack on the channel of a connection that died must not hold the message's task forever
            async with asyncio.timeout(10):  # inline: no task per ack, as wait_for would make
                await self._acks.ack(message)
        except Exception as exc:  # noqa: BLE001 - channel gone: the broker redelivers it and the inbox absorbs the duplicate
            log.warning("ack failed (%s); the message will be redelivered", exc)

    async def _reject_requeue(self, message: AbstractIncomingMessage) -> None:
        await asyncio.sleep(REQUEUE_PAUSE_S)  # back-pressure, not synchronisation: see the module's docstring
        try:
            async with asyncio.timeout(10):
                await message.reject(requeue=True)
        except Exception as exc:  # noqa: BLE001 - a dead channel: the broker redelivers it
            log.warning("reject failed (%s); the message will be redelivered", exc)
        else:
            self._acks.settled(message)


def dead_lettered_key(message_id: str, headers: dict[str, Any]) -> str:
    """The inbox id recording that this delivery of `message_id` was dead-lettered: one per replay of it (a replay
    from the DLQ carries the next `x-esi-replay-count`), of a fixed length whatever the message id's."""
    replay = _int(headers.get(H_REPLAY_COUNT), 0)
    digest = hashlib.sha256(f"{message_id}\n{replay}".encode()).hexdigest()[:48]
    return f"dead-lettered:{digest}"


def _int(value: Any, default: int) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def _label(envelope: Envelope | None) -> str:
    if envelope is None:
        return "an undecodable message"
    return f"{envelope.message_type} {envelope.message_id} (request {envelope.request_id})"
