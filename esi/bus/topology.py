"""The broker topology as data, declared idempotently at start-up by every service.

One work queue per registered system, and one events queue per subscriber (the registry's `queues()`, built into a
topology by `build_topology`); with the built-in systems:

    main_exchange (topic)
      ├─ *.request.dms.*                      → dms_queue  (quorum)
      ├─ *.request.crm.*, *.response.crm.*    → crm_queue  (quorum)
      ├─ *.response.1c.*                      → 1c_queue   (quorum)
      ├─ crm.event.order_changed, dms.event.policy_issued, ...  → 1c_events_queue  (quorum, 1C's copy)
      └─ dms.event.policy_issued, ...         → crm_events_queue (quorum, Creatio's copy)
    <queue>_dlx (fanout) → <queue>'s dead-letter queue, e.g. dms_dead_letter_queue (quorum)
    <queue>.retry.<delay> (quorum, queue-level TTL) ──expires──▶ default exchange ─▶ <queue>

Every queue that holds a message is a quorum queue, replicated on `QUORUM_GROUP_SIZE` nodes (all of them on a
smaller cluster; one on a single node): the loss of one node of three loses no message and stops no flow. The retry
ladder uses queue-level TTLs (never per-message expiration in a shared queue, which would make a short wait queue
up behind a long one); quorum queues expire messages from RabbitMQ 3.10 on, and dead-letter them at least once
(a classic hold queue dead-letters at most once).

Declaring is idempotent. A queue that exists with other arguments (declared by an earlier version: classic
dead-letter and hold queues) is refused by the broker; `declare` raises `QueueMismatch`, naming the migration.
A work queue created before the group size was declared is taken as it is (the size only matters at creation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelPreconditionFailed

MAIN_EXCHANGE = "main_exchange"
#: replicas of each queue: a majority of three survives one node's loss; RabbitMQ places it on every node of a
#: cluster with fewer nodes (one, on a single node), so this is min(3, nodes)
QUORUM_GROUP_SIZE = 3
#: the dead-letter queues' delivery limit: looking at a dead letter returns it to its queue, which a quorum queue
#: counts as a delivery (and RabbitMQ 4 drops a message past a default limit of 20): inspecting must never cost one
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000
GROUP_SIZE_ARGUMENT = "x-quorum-initial-group-size"
MIGRATION_HINT = "docs/rabbitmq-cluster.md, section 'Migrating queues to quorum'"


class QueueMismatch(RuntimeError):
    """A queue exists on the broker with other arguments than this version declares."""


def _format_delay(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class RetryStep:
    queue: str
    delay_s: float


@dataclass(frozen=True)
class WorkQueue:
    """One system's work queue with everything hanging off it."""

    system: str
    name: str
    bindings: tuple[str, ...]
    retry_delays: tuple[float, ...] = ()
    #: a subscriber's events queue (its copy of each event it subscribes to), beside its work queue
    events: bool = False

    @property
    def label(self) -> str:
        """What operators call it: the system's code, `<code>_events` for its events queue."""
        return f"{self.system}_events" if self.events else self.system

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.name}_dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.label}_dead_letter_queue"

    @property
    def retry_steps(self) -> tuple[RetryStep, ...]:
        return tuple(RetryStep(f"{self.name}.retry.{_format_delay(d)}", d) for d in self.retry_delays)

    def retry_step(self, attempt: int) -> RetryStep:
        """The hold queue a message waits in after its `attempt`-th try failed (1-based; last step repeats)."""
        steps = self.retry_steps
        return steps[min(attempt, len(steps)) - 1]


@dataclass(frozen=True)
class Topology:
    work_queues: tuple[WorkQueue, ...]
    delivery_limit: int = 20
    max_length: int = 1_000_000
    exchange: str = MAIN_EXCHANGE
    _by_system: dict[str, WorkQueue] = field(default_factory=dict, compare=False, repr=False)
    #: work queues found created without the group size (by an earlier version): declared without it from then on
    _legacy: set[str] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_system.update({q.system: q for q in self.work_queues if not q.events})

    def queue_for(self, system: str) -> WorkQueue:
        return self._by_system[system]

    def events_queue_for(self, system: str) -> WorkQueue | None:
        """`system`'s events queue, if it subscribes to any event."""
        return next((q for q in self.work_queues if q.events and q.system == system), None)

    def work_queue_arguments(self, queue: WorkQueue) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": queue.dead_letter_exchange,
            # at-least-once dead-lettering needs reject-publish overflow (with drop-head it silently is at-most-once)
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": self.max_length,
            # backstop against a consumer that crashes mid-message again and again
            "x-delivery-limit": self.delivery_limit,
        }
        if queue.name not in self._legacy:
            arguments[GROUP_SIZE_ARGUMENT] = QUORUM_GROUP_SIZE
        return arguments

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        # no dead-letter exchange of its own: a parked message stays until an operator replays or purges it
        return {
            "x-queue-type": "quorum",
            GROUP_SIZE_ARGUMENT: QUORUM_GROUP_SIZE,
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
            "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT,
        }

    def retry_queue_arguments(self, queue: WorkQueue, step: RetryStep) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            GROUP_SIZE_ARGUMENT: QUORUM_GROUP_SIZE,
            "x-message-ttl": round(step.delay_s * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue.name,
            # expired messages go back to the work queue at least once (confirmed), never dropped on the way
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": self.max_length,
        }

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare everything; safe to run again and from several services at once.

        Raises `QueueMismatch` when a queue exists with other arguments; a refused declare closes the channel, so
        give a channel of its own (`Bus.open` does).
        """
        opened: list[AbstractChannel] = []
        try:
            await self._declare(channel, opened)
        finally:
            for extra in opened:
                if not extra.is_closed:
                    await extra.close()

    async def _declare(self, channel: AbstractChannel, opened: list[AbstractChannel]) -> None:
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for queue in self.work_queues:
            dlx = await channel.declare_exchange(queue.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
            dlq = await _declare_queue(channel, queue.dead_letter_queue, self.dead_letter_queue_arguments())
            await dlq.bind(dlx, routing_key="")
            try:
                work = await _declare_queue(channel, queue.name, self.work_queue_arguments(queue))
            except QueueMismatch as exc:
                if f"'{GROUP_SIZE_ARGUMENT}'" not in str(exc) or queue.name in self._legacy:
                    raise
                # created by an earlier version without the group size: everything else must still match
                self._legacy.add(queue.name)
                channel = await _reopen(channel)
                opened.append(channel)
                work = await _declare_queue(channel, queue.name, self.work_queue_arguments(queue))
            for key in queue.bindings:
                await work.bind(exchange, routing_key=key)
            for step in queue.retry_steps:
                await _declare_queue(channel, step.queue, self.retry_queue_arguments(queue, step))


async def _declare_queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> Any:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as exc:
        raise QueueMismatch(
            f"queue {name!r} exists on the broker with other arguments than this version of esi declares "
            f"({exc.args[0] if exc.args else exc}); it was created by an earlier version or by hand. Migrate it as "
            f"{MIGRATION_HINT} says: until then esi cannot use it"
        ) from exc


async def _reopen(channel: AbstractChannel) -> AbstractChannel:
    """A refused declare closed `channel`: another one, plain (a robust one would restore itself meanwhile)."""
    connection = getattr(channel, "_connection", None)
    if connection is None:  # pragma: no cover - a stand-in channel
        raise RuntimeError("cannot open another channel to declare on")
    return await aio_pika.Channel(connection=connection, publisher_confirms=False)


#: the retry ladder's delays in seconds, by default (`ESI_RETRY_DELAYS`)
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1, 5, 30, 120, 600)


def build_topology(
    queues: Iterable[tuple[str, str, Sequence[str]] | tuple[str, str, Sequence[str], bool]],
    *,
    retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    delivery_limit: int = 20,
    max_length: int = 1_000_000,
) -> Topology:
    """The topology of the given `(system, work queue, bindings[, events])` (the registry of systems lists them:
    its `queues()`), each with the retry ladder of `retry_delays`."""
    delays = tuple(float(d) for d in retry_delays)
    return Topology(
        work_queues=tuple(
            WorkQueue(q[0], q[1], tuple(q[2]), delays, events=bool(q[3]) if len(q) > 3 else False) for q in queues
        ),
        delivery_limit=delivery_limit,
        max_length=max_length,
    )
