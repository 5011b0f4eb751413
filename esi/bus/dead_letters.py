"""Inspecting, replaying and purging dead letters without ever losing one.

Reading a dead-letter queue takes its messages without acking them on a channel of our own; closing that channel
returns every message we did not act on to the queue, in order. A replayed message is acked (leaves the DLQ) only
after its republish was confirmed; a purged one only when the operator asked for it with `--yes`.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from esi.bus import headers as h
from esi.bus.channels import short_lived_channel
from esi.bus.publisher import Publisher
from esi.bus.topology import Topology

log = logging.getLogger(__name__)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def letter_id(message_id: str | None, body: bytes) -> str:
    """The id a dead letter goes by (in the index, `esi dlq show ID`): its message id, else a hash of its body."""
    return message_id or hashlib.sha256(body).hexdigest()[:32]


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = _text(value)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class DeadLetter:
    """One parked message and its story."""

    id: str
    queue: str
    exchange: str
    routing_key: str
    reason: str
    error_class: str | None
    attempts: int
    dead_lettered_at: datetime | None
    headers: dict[str, Any]
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def age_s(self) -> float | None:
        if self.dead_lettered_at is None:
            return None
        return (datetime.now(UTC) - self.dead_lettered_at).total_seconds()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "reason": self.reason,
            "error_class": self.error_class,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at.isoformat() if self.dead_lettered_at else None,
            "age_s": round(self.age_s, 1) if self.age_s is not None else None,
        }

    def detail(self) -> dict[str, Any]:
        body_text = self.body.decode("utf-8", "replace")
        return {
            **self.summary(),
            "headers": {k: _jsonable(v) for k, v in self.headers.items()},
            "properties": {k: _jsonable(v) for k, v in self.properties.items()},
            "body": body_text,
        }

    @classmethod
    def from_message(cls, queue: str, message: AbstractIncomingMessage) -> DeadLetter:
        headers = dict(message.headers or {})
        deaths = headers.get(h.H_DEATH) or []
        first_death = deaths[-1] if isinstance(deaths, list) and deaths else {}
        exchange = _text(headers.get(h.H_ORIGINAL_EXCHANGE))
        routing_key = _text(headers.get(h.H_ORIGINAL_ROUTING_KEY))
        if exchange is None and isinstance(first_death, dict):  # dead-lettered by the broker itself
            exchange = _text(first_death.get("exchange"))
            keys = first_death.get("routing-keys") or []
            routing_key = _text(keys[0]) if isinstance(keys, list) and keys else None
        reason = _text(headers.get(h.H_ERROR_MESSAGE))
        if reason is None and isinstance(first_death, dict):
            reason = f"broker: {_text(first_death.get('reason'))} in {_text(first_death.get('queue'))}"
        when = _parse_time(headers.get(h.H_DEAD_LETTERED_AT))
        if when is None and isinstance(first_death, dict):
            when = _parse_time(first_death.get("time"))
        ident = letter_id(_text(message.message_id), message.body)
        properties = {
            name: getattr(message, name)
            for name in (
                "content_type",
                "content_encoding",
                "message_id",
                "correlation_id",
                "type",
                "app_id",
                "timestamp",
            )
            if getattr(message, name, None) is not None
        }
        attempts = 0
        raw_attempts = headers.get(h.H_ATTEMPTS) or 0
        if isinstance(raw_attempts, int | float | str | bytes | bytearray | Decimal):
            try:
                attempts = int(raw_attempts)
            except ValueError:
                pass
        return cls(
            id=ident,
            queue=queue,
            exchange=exchange or "",
            routing_key=routing_key or "",
            reason=reason or "unknown",
            error_class=_text(headers.get(h.H_ERROR_CLASS)),
            attempts=attempts,
            dead_lettered_at=when,
            headers=headers,
            body=message.body,
            properties=properties,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Filters:
    queue: str | None = None
    reason: str | None = None
    since: timedelta | None = None
    ids: tuple[str, ...] = ()

    def match(self, letter: DeadLetter) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.reason and self.reason.lower() not in f"{letter.reason} {letter.error_class or ''}".lower():
            return False
        if self.since is not None:
            age = letter.age_s
            if age is None or age > self.since.total_seconds():
                return False
        return True


class DeadLetters:
    """The dead-letter queues of a topology, on an open connection."""

    def __init__(self, connection: AbstractConnection, topology: Topology, *, timeout: float = 10.0) -> None:
        self._connection = connection
        self._topology = topology
        self._timeout = timeout

    def queues(self, only: str | None = None) -> list[str]:
        names = [q.dead_letter_queue for q in self._topology.work_queues]
        if only is None:
            return names
        wanted = {only, f"{only}_dead_letter_queue", f"{only.removesuffix('_queue')}_dead_letter_queue"}
        chosen = [n for n in names if n in wanted]
        if not chosen:
            raise ValueError(f"unknown dead-letter queue {only!r}; known: {', '.join(names)}")
        return chosen

    async def depths(self) -> dict[str, dict[str, int]]:
        """By system code: messages ready in its work queue (`ready`), waiting in its retry hold queues
        (`retrying`) and parked in its dead-letter queue (`dead_lettered`). Passive declares: nothing is read; a
        queue not declared yet counts 0."""
        depths: dict[str, dict[str, int]] = {}
        channel = await short_lived_channel(self._connection)

        async def count(name: str) -> int:
            nonlocal channel
            try:
                declared = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:  # the broker closed the channel: go on with another
                channel = await short_lived_channel(self._connection)
                return 0
            return int(declared.declaration_result.message_count or 0)

        try:
            for work in self._topology.work_queues:
                depths[work.label] = {
                    "ready": await count(work.name),
                    "retrying": sum([await count(step.queue) for step in work.retry_steps]),
                    "dead_lettered": await count(work.dead_letter_queue),
                }
        finally:
            await _close(channel)
        return depths

    async def _take_all(self, channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
        """Every message of the queue, unacked (they return to the queue when the channel closes)."""
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            log.info("%s does not exist yet (no esi service has declared the topology): nothing to read", queue)
            return []
        count = amqp_queue.declaration_result.message_count
        taken: list[AbstractIncomingMessage] = []
        for _ in range(count or 0):
            message = await amqp_queue.get(no_ack=False, fail=False, timeout=self._timeout)
            if message is None:
                break
            taken.append(message)
        return taken

    async def list(self, filters: Filters | None = None, *, limit: int | None = None) -> list[DeadLetter]:
        """Look without touching: everything is returned to its queue as it was."""
        filters = filters or Filters()
        found: list[DeadLetter] = []
        for queue in self.queues(filters.queue):
            channel = await short_lived_channel(self._connection)
            try:
                for message in await self._take_all(channel, queue):
                    letter = DeadLetter.from_message(queue, message)
                    if filters.match(letter):
                        found.append(letter)
            finally:
                await _close(channel)  # every message taken goes back, unacked
        found.sort(key=lambda d: d.dead_lettered_at or datetime.min.replace(tzinfo=UTC))
        return found[:limit] if limit else found

    async def scan(self, queue: str, *, limit: int) -> builtins.list[DeadLetter]:
        """Up to `limit` messages of `queue` from its head, looked at and all put back (the index's sweep)."""
        channel = await short_lived_channel(self._connection)
        found: list[DeadLetter] = []
        try:
            try:
                amqp_queue = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return []
            for _ in range(min(limit, amqp_queue.declaration_result.message_count or 0)):
                message = await amqp_queue.get(no_ack=False, fail=False, timeout=self._timeout)
                if message is None:
                    break
                found.append(DeadLetter.from_message(queue, message))
        finally:
            await _close(channel)  # every message taken goes back, unacked
        return found

    async def find(self, queue: str, ident: str) -> DeadLetter | None:
        """One message of `queue` by its id, read from the head until found; everything goes back as it was."""
        channel = await short_lived_channel(self._connection)
        try:
            try:
                amqp_queue = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return None
            for _ in range(amqp_queue.declaration_result.message_count or 0):
                message = await amqp_queue.get(no_ack=False, fail=False, timeout=self._timeout)
                if message is None:
                    return None
                if letter_id(_text(message.message_id), message.body) == ident:
                    return DeadLetter.from_message(queue, message)
            return None
        finally:
            await _close(channel)

    async def republish_one(
        self, queue: str, ident: str, body: bytes, *, extra_headers: dict[str, Any] | None = None
    ) -> DeadLetter | None:
        """Replay the dead letter `ident` of `queue` with `body` in place of its own (an operator's edit): published
        (confirmed) to its original exchange and routing key, attempt count reset, then acked; None when it is not
        in the queue (or has no routing key), nothing published then."""
        channel = await short_lived_channel(self._connection)
        publish_channel = await short_lived_channel(self._connection, publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(publish_channel, exchange=self._topology.exchange, timeout=self._timeout)
        try:
            try:
                amqp_queue = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return None
            for _ in range(amqp_queue.declaration_result.message_count or 0):
                message = await amqp_queue.get(no_ack=False, fail=False, timeout=self._timeout)
                if message is None:
                    return None
                if letter_id(_text(message.message_id), message.body) != ident:
                    continue
                letter = DeadLetter.from_message(queue, message)
                if not letter.routing_key:
                    return None
                await publisher.publish_raw(
                    letter.exchange,
                    letter.routing_key,
                    body,
                    headers={**replay_headers(letter.headers), **(extra_headers or {})},
                    properties=letter.properties,
                )
                await message.ack()
                return letter
            return None
        finally:
            await _close(channel)  # the others go back, unacked
            await _close(publish_channel)

    async def depth(self, queue: str) -> int:
        """Messages in `queue` now (a passive declare; 0 for a queue not declared yet)."""
        channel = await short_lived_channel(self._connection)
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        except ChannelNotFoundEntity:
            return 0
        finally:
            await _close(channel)

    async def show(self, ident: str) -> DeadLetter | None:
        letters = await self.list(Filters(ids=(ident,)))
        return letters[0] if letters else None

    # builtins.list: in this class, `list` is the method above
    async def replay(
        self, filters: Filters, *, rate: float | None = None, dry_run: bool = False
    ) -> builtins.list[DeadLetter]:
        """Republish matching dead letters to their original exchange and routing key, attempt count reset.

        Each leaves its DLQ only once its republish is confirmed; anything that fails stays where it was.
        """
        replayed: list[DeadLetter] = []
        interval = 1.0 / rate if rate else 0.0
        for queue in self.queues(filters.queue):
            channel = await short_lived_channel(self._connection)
            publish_channel = await short_lived_channel(
                self._connection, publisher_confirms=True, on_return_raises=True
            )
            publisher = Publisher(publish_channel, exchange=self._topology.exchange, timeout=self._timeout)
            try:
                for message in await self._take_all(channel, queue):
                    letter = DeadLetter.from_message(queue, message)
                    if not filters.match(letter):
                        continue
                    if dry_run:
                        replayed.append(letter)
                        continue
                    if not letter.routing_key:
                        log.warning("dead letter %s has no original routing key; left in %s", letter.id, queue)
                        continue
                    await publisher.publish_raw(
                        letter.exchange,
                        letter.routing_key,
                        letter.body,
                        headers=replay_headers(letter.headers),
                        properties=letter.properties,
                    )
                    await message.ack()
                    replayed.append(letter)
                    log.info("replayed %s from %s to %s", letter.id, queue, letter.routing_key)
                    if interval:
                        await asyncio.sleep(interval)  # rate limit, not synchronisation
            finally:
                await _close(channel)
                await _close(publish_channel)
        return replayed

    # builtins.list: in this class, `list` is the method above
    async def purge(self, filters: Filters) -> builtins.list[DeadLetter]:
        """Delete matching dead letters for good."""
        purged: list[DeadLetter] = []
        for queue in self.queues(filters.queue):
            channel = await short_lived_channel(self._connection)
            try:
                for message in await self._take_all(channel, queue):
                    letter = DeadLetter.from_message(queue, message)
                    if filters.match(letter):
                        await message.ack()
                        purged.append(letter)
            finally:
                await _close(channel)
        return purged


def replay_headers(headers: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in headers.items() if k not in h.FAILURE_HEADERS}
    out[h.ATTEMPT_HEADER] = 1
    try:
        out[h.H_REPLAY_COUNT] = int(out.get(h.H_REPLAY_COUNT) or 0) + 1
    except (TypeError, ValueError):
        out[h.H_REPLAY_COUNT] = 1
    out[h.H_REPLAYED] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return out


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        await channel.close()
