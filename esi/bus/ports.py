"""The bus's ports: what it asks of the rest of esi, as small protocols it defines and others implement.

The store implements them (`esi.store.requests`, `outbox`, `inbox`, `events`); the bus imports no store module. A
part used without a store (a test, a tool) passes nothing, or `NullRecorder`.

    OutboxStore   the relay's source: claim unsent messages for a lease, release them, mark them sent
    Outgoing      one message of the outbox, ready to publish
    Tracker       where the consumer loop reports what became of a business request (retrying, waiting, parked)
    Inbox         the messages a consumer has fully handled, so that a redelivery has no second effect
    Recorder      the timeline: every hop of a request, recorded off the hot path
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol


class Outgoing(Protocol):
    """A message committed to the outbox with its request, ready to publish."""

    @property
    def message_id(self) -> str: ...

    @property
    def request_id(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    #: the W3C trace context of the request that wrote it (JSON), with tracing on (esi.tracing)
    @property
    def trace_context(self) -> str | None: ...


class OutboxStore(Protocol):
    """Where the relay finds what to publish (several relays may sweep one outbox: claims are leases)."""

    async def claim(
        self, *, limit: int, fresh_s: float, lease_s: float, mine: list[str] | None = None
    ) -> Sequence[Outgoing]: ...

    async def release(self, rows: Sequence[Outgoing]) -> None: ...

    async def mark_sent(self, rows: Sequence[Outgoing]) -> None: ...


class Tracker(Protocol):
    """Where the consumer loop reports what happened to a business request."""

    async def retrying(self, request_id: str, *, attempt: int, error: str) -> None: ...

    async def dead_lettered(
        self,
        request_id: str | None,
        *,
        error: str,
        queue: str,
        letter: Mapping[str, Any] | None = None,
        settle: bool = True,
    ) -> None:
        """A message was parked in `queue`: index `letter` (the dead-letter index's row: `esi.store.dead_letters`)
        and, with `settle` and a `request_id`, mark the request dead-lettered, in one transaction."""
        ...

    async def waiting(self, request_id: str, *, error: str) -> None: ...


class Inbox(Protocol):
    """The ids of messages a consumer has fully handled (for deduplication of redeliveries)."""

    async def seen(self, consumer: str, message_id: str) -> bool: ...

    async def record(self, consumer: str, message_id: str) -> None: ...


class Recorder(Protocol):
    """What records a request's hops: the store's `EventRecorder`, or `NullRecorder` where there is no store."""

    def record(
        self,
        request_id: str | None,
        event: str,
        *,
        service: str,
        message_id: str | None = None,
        causation_id: str | None = None,
        message_type: str | None = None,
        at: datetime | None = None,
        **detail: Any,
    ) -> None: ...

    async def durable(self) -> None:
        """Return once the hops recorded so far are written (before their outcome can be seen elsewhere)."""
        ...


class NullRecorder:
    """Records nothing (for parts used without a store)."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def durable(self) -> None:
        return None
