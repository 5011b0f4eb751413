"""The timeline of a request: every hop recorded with its time, written in batches off the hot path.

Events are diagnostic: they are buffered and written together every `interval` seconds (or `batch` events), so
recording one costs a list append. A crash may lose the last fraction of a second of events, never a message.

Before a hop's outcome can be seen elsewhere — an adapter publishing its answer, the 1C side recording it — the
consumer makes the events recorded so far durable (`durable`): a request read as completed shows every hop that
led there. Concurrent callers share one write (it joins the store's group commit), so this costs a write per
batch of messages, not per message.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from esi import tracing

log = logging.getLogger(__name__)


class EventStore(Protocol):
    """Where the rows go (the store's `Requests`)."""

    async def add_events(self, rows: list[dict[str, Any]]) -> None: ...


class EventRecorder:
    """Buffers a request's hops and writes them in batches (it answers the bus's `Recorder` port)."""

    def __init__(self, store: EventStore, *, interval: float = 0.1, batch: int = 500, max_buffer: int = 100_000):
        self._store = store
        self._interval = interval
        self._batch = batch
        self._max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: events recorded and events written so far (`durable` waits until the second reaches the first)
        self._recorded = 0
        self._written = 0
        #: the write under way, shared by every caller that needs it
        self._writing: asyncio.Task[None] | None = None

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
    ) -> None:
        """Buffer one event; `at` (default: now) lets a caller stamp when the recorded act began."""
        if not request_id:
            return
        if len(self._buffer) >= self._max_buffer:
            return  # the store is far behind: drop diagnostics rather than memory
        if tracing.enabled:
            tracing.add_trace_id(detail)
        self._buffer.append(
            {
                "request_id": request_id,
                "at": (at or datetime.now(UTC)).isoformat(timespec="microseconds"),
                "event": event,
                "service": service,
                "message_id": message_id,
                "causation_id": causation_id,
                "message_type": message_type,
                "detail": orjson.dumps(detail, default=str).decode() if detail else None,
            }
        )
        self._recorded += 1
        if len(self._buffer) >= self._batch:
            self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-recorder")

    async def flush(self) -> None:
        """Write every buffered event (raises when the store refuses; they stay buffered)."""
        while self._buffer or (self._writing is not None and not self._writing.done()):
            await self._write_shared()

    async def durable(self) -> None:
        """Return once every event recorded before the call is written: what a hop's outcome, seen elsewhere,
        must not overtake. Best effort: when the store refuses, the events stay buffered and the caller goes on
        (they are diagnostics; the message's own state is written by its own path)."""
        target = self._recorded
        try:
            while self._written < target:
                await self._write_shared()
        except Exception as exc:  # noqa: BLE001 - diagnostics never stop a message: the events stay buffered
            log.debug("timeline events not yet written: %s", exc)

    async def _write_shared(self) -> None:
        """Join the write under way, or start one of the whole buffer."""
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_buffer(), name="event-recorder-write")
        await asyncio.shield(self._writing)

    async def _write_buffer(self) -> None:
        """Write what the buffer holds now, in chunks (what is recorded meanwhile waits for the next write: under a
        steady flow of events a write that chased the buffer to empty would never end, nor would its waiters)."""
        taken, self._buffer = self._buffer, []
        chunk = self._batch * 4
        for start in range(0, len(taken), chunk):
            rows = taken[start : start + chunk]
            try:
                await self._store.add_events(rows)
            except Exception as exc:
                log.warning("could not write %d timeline events: %s", len(taken) - start, exc)
                self._buffer = taken[start:] + self._buffer
                raise
            self._written += len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the store is away: retried after a pause
                await asyncio.sleep(1)

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - at shutdown, whatever failed is logged as lost
            log.warning("%d timeline events lost at shutdown", len(self._buffer))
