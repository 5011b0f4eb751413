"""The outbox relay: publishes what the API committed to the store, with confirms, and marks it sent.

The API answers 202 once a request and its message are committed together; from there the relay owns delivery.
A relay that dies mid-publish leaves the rows unsent and publishes them again on its next pass: the consumers'
inbox absorbs the duplicate, so the effect still happens once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Protocol

import aio_pika

from esi.bus.publisher import ATTEMPT_HEADER, Publisher
from esi.errors import TransientError
from esi.store.records import OutboxRow

log = logging.getLogger(__name__)


class OutboxStore(Protocol):
    async def outbox_pending(self, limit: int = 500) -> list[OutboxRow]: ...

    async def outbox_mark_sent(self, rows: list[OutboxRow]) -> None: ...


class OutboxRelay:
    def __init__(self, *, store: OutboxStore, publisher: Publisher, exchange: str = "main_exchange",
                 batch_size: int = 500, idle_interval: float = 1.0, max_backoff: float = 5.0,
                 events: Any = None) -> None:
        self._store = store
        self._publisher = publisher
        self._exchange = exchange
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._max_backoff = max_backoff
        self._events = events
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: set while the last pass could not publish (readiness and metrics read it)
        self.last_error: str | None = None

    def notify(self) -> None:
        """Something was committed to the outbox: publish it now rather than at the next poll."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 15)
            except asyncio.TimeoutError:
                self._task.cancel()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                sent = await self.drain_once()
                self.last_error = None
                backoff = 0.2
                if sent >= self._batch_size:
                    continue  # more is waiting
            except Exception as exc:
                self.last_error = str(exc)
                log.warning("outbox relay pass failed (%s); next try in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._idle_interval)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()

    async def drain_once(self) -> int:
        """Publish one batch of pending rows; returns how many were confirmed and marked sent."""
        self._wakeup.clear()
        rows = await self._store.outbox_pending(self._batch_size)
        if not rows:
            return 0
        sent_at = datetime.now(timezone.utc)
        results = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
        sent = [row for row, result in zip(rows, results) if result is None]
        failed = [result for result in results if result is not None]
        await self._store.outbox_mark_sent(sent)
        if self._events is not None:
            for row in sent:
                self._events.record(row.request_id, "published", service="relay", message_id=row.message_id,
                                    routing_key=row.routing_key, at=sent_at)
        if failed:
            raise TransientError(f"{len(failed)} of {len(rows)} outbox messages not confirmed: {failed[0]}")
        return len(sent)

    async def _publish(self, row: OutboxRow) -> None:
        message = aio_pika.Message(
            row.body, content_type="application/json", content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=row.message_id,
            correlation_id=row.request_id, type=row.routing_key.rsplit(".", 1)[-1], app_id="esi",
            headers={ATTEMPT_HEADER: 1},
        )
        await self._publisher.publish_message(self._exchange, row.routing_key, message)
