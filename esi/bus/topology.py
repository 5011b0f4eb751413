"""The broker topology as data, declared idempotently at start-up by every service.

One work queue per registered system (`esi.systems.registry.Registry.topology`); with the built-in systems:

    main_exchange (topic)
      ├─ *.request.dms.*                      → dms_queue  (quorum)
      ├─ *.request.crm.*, *.response.crm.*    → crm_queue  (quorum)
      └─ *.response.1c.*                      → 1c_queue   (quorum)
    <queue>_dlx (fanout) → <queue>'s dead-letter queue, e.g. dms_dead_letter_queue (classic, durable)
    <queue>.retry.<delay> (classic, queue-level TTL) ──expires──▶ default exchange ─▶ <queue>

The retry ladder uses queue-level TTLs (never per-message expiration in a shared queue, which would make a short
wait queue up behind a long one); hold queues are classic because quorum queues only accept a message TTL from
RabbitMQ 3.12 on, and this ladder has to work on 3.10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

MAIN_EXCHANGE = "main_exchange"


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

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.name}_dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.system}_dead_letter_queue"

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

    def __post_init__(self) -> None:
        self._by_system.update({q.system: q for q in self.work_queues})

    def queue_for(self, system: str) -> WorkQueue:
        return self._by_system[system]

    def work_queue_arguments(self, queue: WorkQueue) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": queue.dead_letter_exchange,
            # at-least-once dead-lettering needs reject-publish overflow (with drop-head it silently is at-most-once)
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": self.max_length,
            # backstop against a consumer that crashes mid-message again and again
            "x-delivery-limit": self.delivery_limit,
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        # classic, durable: a quorum queue counts every peek (get, then return) as a delivery, and from RabbitMQ 4.0
        # drops a message past its delivery limit — inspecting a DLQ must never cost a message
        return {"x-queue-type": "classic", "x-max-length": self.max_length, "x-overflow": "reject-publish"}

    @staticmethod
    def retry_queue_arguments(queue: WorkQueue, step: RetryStep) -> dict[str, Any]:
        return {
            "x-queue-type": "classic",
            "x-message-ttl": round(step.delay_s * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue.name,
        }

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare everything; safe to run again and from several services at once."""
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for queue in self.work_queues:
            dlx = await channel.declare_exchange(queue.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
            dlq = await channel.declare_queue(
                queue.dead_letter_queue, durable=True, arguments=self.dead_letter_queue_arguments()
            )
            await dlq.bind(dlx, routing_key="")
            work = await channel.declare_queue(queue.name, durable=True, arguments=self.work_queue_arguments(queue))
            for key in queue.bindings:
                await work.bind(exchange, routing_key=key)
            for step in queue.retry_steps:
                await channel.declare_queue(step.queue, durable=True, arguments=self.retry_queue_arguments(queue, step))


def build_topology(*, work_queues: Sequence[WorkQueue], delivery_limit: int = 20,
                   max_length: int = 1_000_000) -> Topology:
    """The topology of the given work queues (the registry of systems derives them: `Registry.topology`)."""
    return Topology(work_queues=tuple(work_queues), delivery_limit=delivery_limit, max_length=max_length)
