"""The outbox relay: publishes what the API committed to the store, with confirms, and marks it sent.

The API answers 202 once a request and its message are committed together; from there the relay owns delivery:

- the fast path: the API hands each freshly committed row to `submit`, which publishes it at once; confirmed rows
  are marked sent in batches;
- the sweep: every `idle_interval` (and after a failure, with backoff) it publishes whatever is still unsent and not
  in hand — rows of a relay that died, rows that failed while the broker was away.

Several API processes each run a relay, all sweeping one PostgreSQL outbox: a sweep claims the rows it publishes
for a lease (`esi.store.outbox.Outbox.claim`, `FOR UPDATE SKIP LOCKED`), so no two sweeps publish one row; a sweep
leaves rows younger than `fresh_s` to the fast path of the process that committed them (their publish ends,
confirmed or failed, within the publish timeout), except its own process's failed ones, which it retries at once.

A relay that dies mid-publish leaves rows unsent (or claimed until the lease ends) and they are published again:
the consumers' inbox absorbs the duplicate, so the effect still happens once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from esi import tracing
from esi.bus.headers import ATTEMPT_HEADER
from esi.bus.ports import OutboxStore, Outgoing, Recorder
from esi.bus.publisher import Publisher, envelope_properties
from esi.errors import TransientError

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        *,
        store: OutboxStore,
        publisher: Publisher,
        exchange: str = "main_exchange",
        batch_size: int = 500,
        idle_interval: float = 1.0,
        max_backoff: float = 5.0,
        mark_interval: float = 0.02,
        events: Recorder | None = None,
        fresh_s: float = 12.0,
        lease_s: float = 60.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._exchange = exchange
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._max_backoff = max_backoff
        self._mark_interval = mark_interval
        self._events = events
        self._fresh_s = fresh_s
        self._lease_s = lease_s
        #: rows of this process's fast path whose publish failed (message id → when): its sweep retries them at once
        self._failed: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._marked = asyncio.Event()
        #: message ids being published or confirmed but not yet marked sent: the sweep leaves them alone
        self._claimed: set[str] = set()
        self._to_mark: list[Outgoing] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: set while publishing fails (the broker is away); cleared by the next success
        self.last_error: str | None = None

    def submit(self, row: Outgoing) -> None:
        """Publish a just-committed row at once (the API's fast path)."""
        if self._stopping or row.message_id in self._claimed:
            return
        self._claimed.add(row.message_id)
        task = asyncio.create_task(self._publish_submitted(row))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweep_forever(), name="outbox-sweep"),
            asyncio.create_task(self._mark_forever(), name="outbox-mark"),
        ]

    async def stop(self) -> None:
        """Finish the publishes in hand and mark them; what is left unsent waits in the store for the next start."""
        self._stopping = True
        self._wakeup.set()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=15)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._flush_marks()
        except Exception as exc:  # noqa: BLE001 - they stay unsent and are published again: the inbox absorbs the duplicate
            log.warning("could not mark %d published messages as sent: %s", len(self._to_mark), exc)

    async def _publish_submitted(self, row: Outgoing) -> None:
        try:
            await self._publish_one(row)
        except Exception as exc:  # noqa: BLE001 - the row stays unsent: the sweep publishes it, with backoff
            self._failed[row.message_id] = time.monotonic()
            log.warning("publishing %s failed (%s); the sweep will retry it", row.message_id, exc)

    async def _publish_one(self, row: Outgoing) -> None:
        if tracing.enabled:  # a PRODUCER span, child of the API's span stored with the row (esi.tracing)
            with tracing.publishing(
                self._exchange, row.routing_key, row.message_id, request_id=row.request_id, parent=row.trace_context
            ):
                await self._publish_and_record(row)
            return
        await self._publish_and_record(row)

    async def _publish_and_record(self, row: Outgoing) -> None:
        sent_at = datetime.now(UTC)
        try:
            await self._publish(row)
        except Exception as exc:
            self._claimed.discard(row.message_id)
            self.last_error = str(exc)
            self._wakeup.set()  # the sweep takes it from here, with backoff
            raise
        self.last_error = None
        self._to_mark.append(row)
        if self._events is not None:
            self._events.record(
                row.request_id,
                "published",
                service="relay",
                message_id=row.message_id,
                routing_key=row.routing_key,
                at=sent_at,
            )

    async def _mark_forever(self) -> None:
        while True:
            await asyncio.sleep(self._mark_interval)
            try:
                await self._flush_marks()
            except Exception as exc:  # noqa: BLE001 - the marking loop retries whatever failed
                log.warning("marking published outbox rows failed (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def _flush_marks(self) -> None:
        if not self._to_mark:
            return
        rows, self._to_mark = self._to_mark, []
        try:
            await self._store.mark_sent(rows)
        except Exception:
            self._to_mark = rows + self._to_mark
            raise
        for row in rows:
            self._claimed.discard(row.message_id)

    async def _sweep_forever(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                sent = await self.drain_once()
                backoff = 0.2
                if sent >= self._batch_size:
                    continue  # more is waiting
            except Exception as exc:  # noqa: BLE001 - the relay outlives any one failing pass
                self.last_error = str(exc)
                log.warning("outbox relay pass failed (%s); next try in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._idle_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def drain_once(self) -> int:
        """Publish one batch of the unsent rows nobody holds; returns how many were confirmed."""
        self._wakeup.clear()
        # past `fresh_s`, any process's sweep may take a failed row: this one need not remember it any longer
        too_old = time.monotonic() - self._fresh_s
        self._failed = {mid: at for mid, at in self._failed.items() if at > too_old}
        claimed = await self._store.claim(
            limit=self._batch_size,
            fresh_s=self._fresh_s,
            lease_s=self._lease_s,
            mine=list(self._failed)[: self._batch_size],
        )
        rows = [r for r in claimed if r.message_id not in self._claimed]
        if not rows:
            return 0
        for row in rows:
            self._claimed.add(row.message_id)
            self._failed.pop(row.message_id, None)
        results = await asyncio.gather(*(self._publish_one(row) for row in rows), return_exceptions=True)
        failed = [row for row, result in zip(rows, results) if isinstance(result, BaseException)]
        if failed:
            try:  # back to every process's sweep at once, rather than when the lease ends
                await self._store.release(failed)
            except Exception as exc:  # noqa: BLE001 - best effort: the claim ends by itself
                log.warning(
                    "could not release %d claimed outbox rows (%s); their claim ends by itself", len(failed), exc
                )
            error = next(result for result in results if isinstance(result, BaseException))
            raise TransientError(f"{len(failed)} of {len(rows)} outbox messages not confirmed: {error}")
        return len(rows)

    async def _publish(self, row: Outgoing) -> None:
        headers: dict[str, Any] = {ATTEMPT_HEADER: 1}
        if tracing.enabled:
            tracing.inject(headers)
        await self._publisher.publish_message(
            self._exchange,
            row.routing_key,
            row.body,
            envelope_properties(row.message_id, row.request_id, row.routing_key.rsplit(".", 1)[-1], headers),
        )
