"""Replay and purge jobs, run by the API service (`JobRunner.run_forever`), resumable after a restart.

A job (`esi.store.dlq_jobs`) chose its letters in the index when it was created. The process holding its lease
reads each DLQ with letters of the job from the head, a batch at a time, for as many messages as the queue held when
the pass began:

- a letter of the job still parked: replayed (republished, confirmed, to its original exchange and routing key,
  attempt count reset) or purged; then marked in the index with the job's counts (one transaction), then acked;
- a letter of the job already settled (the process died between the mark and the ack): acked, not replayed again;
- any other message: put back at the tail of its queue (republished, confirmed, then acked), untouched.

So a replay survives `kill -9` at any point: a letter is republished again only if the process died between its
republish being confirmed and the mark's commit (a window of one batch), and then the consumer's inbox gives the
second copy no effect (same message id). Letters of the job not met in a whole pass are counted failed (`missing`).

The lease is renewed while the job runs; a process that died leaves its lease to run out, and whichever API
process claims the job next (the same one, restarted) resumes it with the letters still parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aiolimiter import AsyncLimiter
from aiormq.exceptions import ChannelNotFoundEntity

from esi.bus.channels import short_lived_channel
from esi.bus.dead_letters import DeadLetter, replay_headers
from esi.bus.publisher import Publisher
from esi.bus.topology import Topology
from esi.store import Store
from esi.store.dead_letters import PARKED
from esi.store.dlq_jobs import JobRecord, process_owner

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)

#: messages taken from a queue at a time (one index read, one commit, one round of confirms for all of them)
BATCH = 50
#: a queue that delivers nothing while it should (someone looks at it, holding its messages): how often to wait,
#: and how long each time, before the pass ends
EMPTY_RETRIES, EMPTY_PAUSE_S = 60, 0.5


class _Stop(Exception):
    """The job stops here: cancelled, or its lease is not ours any more."""


class JobRunner:
    """Claims jobs from the store and runs them, one at a time, in this process."""

    def __init__(
        self,
        *,
        connection: AbstractConnection,
        store: Store,
        topology: Topology,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._connection = connection
        self._store = store
        self._topology = topology
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._timeout = timeout
        self.owner = process_owner()
        self._renewed = 0.0

    async def run_forever(self) -> None:
        while True:
            try:
                job = await self._store.dlq_jobs.claim(self.owner, self._lease_s)
                if job is not None:
                    await self.run(job)
                    continue
            except Exception as exc:  # noqa: BLE001 - the job's lease runs out and it is resumed later
                log.warning("a dead-letter job stopped on an error (it resumes once its lease runs out): %s", exc)
            await asyncio.sleep(self._poll_s)

    async def run(self, job: JobRecord) -> JobRecord | None:
        """Run `job` (leased to this runner) to its end: done, cancelled, or stopped (the lease was lost)."""
        log.info("running dead-letter job %d (%s of %d letters, %d done)", job.id, job.kind, job.total, job.done)
        jobs = self._store.dlq_jobs
        limiter = AsyncLimiter(job.rate, 1) if job.rate else None
        self._renewed = time.monotonic()
        try:
            for queue, left in (await jobs.parked(job.id)).items():
                left = await self._pass(job, queue, left, limiter)
                if left:
                    missing = await jobs.missing(job.id, queue)
                    log.warning("job %d: %d letter(s) of %s were not found in it", job.id, missing, queue)
            await self._check(job)
        except _Stop as stop:
            if str(stop) == "cancelled":
                finished = await jobs.finish(job.id, "cancelled")
                await self._audit(finished)
                return finished
            log.warning("job %d: its lease went to another process; leaving it", job.id)
            return None
        finished = await jobs.finish(job.id, "done")
        await self._audit(finished)
        return finished

    async def _check(self, job: JobRecord) -> None:
        """Renew the lease (a third of it gone) and look for a cancel."""
        if time.monotonic() - self._renewed < self._lease_s / 3:
            return
        now = await self._store.dlq_jobs.renew(job.id, self.owner, self._lease_s)
        self._renewed = time.monotonic()
        if now is None:
            raise _Stop("lost")
        if now.cancel_requested:
            raise _Stop("cancelled")

    async def _pass(self, job: JobRecord, queue: str, left: int, limiter: AsyncLimiter | None) -> int:
        """One pass over `queue`; the job's letters still parked in it after the pass.

        The queue is consumed (basic.consume, `BATCH` × 2 unacked at most) rather than polled message by message:
        one round trip per message would cap a job far below its rate on a busy broker. A pass sees as many
        messages as the queue held when it began (those put back at its tail come round again after that)."""
        channel = await short_lived_channel(self._connection)
        publish_channel = await short_lived_channel(self._connection, publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(publish_channel, exchange=self._topology.exchange, timeout=self._timeout)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        try:
            try:
                amqp_queue = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return left
            depth = amqp_queue.declaration_result.message_count or 0
            if not depth:
                return left
            await channel.set_qos(prefetch_count=BATCH * 2)
            await amqp_queue.consume(inbox.put, no_ack=False)
            seen = empties = 0
            while left > 0 and seen < depth:
                await self._check(job)
                size = min(BATCH, job.rate or BATCH, depth - seen)
                try:
                    batch = [await asyncio.wait_for(inbox.get(), EMPTY_PAUSE_S)]
                except TimeoutError:  # someone holds the queue's messages for a moment (a look at it): wait
                    empties += 1
                    if empties > EMPTY_RETRIES:
                        break
                    continue
                empties = 0
                while len(batch) < size and not inbox.empty():
                    batch.append(inbox.get_nowait())
                seen += len(batch)
                left -= await self._batch(job, queue, batch, publisher, limiter)
            return left
        finally:
            for open_channel in (channel, publish_channel):  # what was delivered and not acked goes back
                if not open_channel.is_closed:
                    with contextlib.suppress(Exception):
                        await open_channel.close()

    async def _batch(
        self,
        job: JobRecord,
        queue: str,
        batch: list[AbstractIncomingMessage],
        publisher: Publisher,
        limiter: AsyncLimiter | None,
    ) -> int:
        """Settle the job's letters among `batch`, put the others back; how many letters of the job it settled."""
        letters = [DeadLetter.from_message(queue, m) for m in batch]
        rows = await self._store.dead_letters.states(queue, [d.id for d in letters])
        mine = {d.id for d in letters if d.id in rows and rows[d.id].job_id == job.id}
        todo = [(m, d) for m, d in zip(batch, letters) if d.id in mine and rows[d.id].state == PARKED]
        if limiter is not None and todo:
            await limiter.acquire(min(len(todo), limiter.max_rate))
        settled: list[tuple[int, str]] = []
        events: list[dict[str, Any]] = []
        publishes = []
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        unroutable: set[str] = set()
        for _message, letter in todo:
            row = rows[letter.id]
            if job.kind == "replay" and not letter.routing_key:  # nowhere to replay it: it stays, counted failed
                settled.append((row.id, "unroutable"))
                unroutable.add(letter.id)
                continue
            if job.kind == "replay":
                publishes.append(
                    publisher.publish_raw(
                        letter.exchange,
                        letter.routing_key,
                        letter.body,
                        headers=replay_headers(letter.headers),
                        properties=letter.properties,
                    )
                )
            settled.append((row.id, "replayed" if job.kind == "replay" else "purged"))
            if row.request_id:
                events.append(
                    {
                        "request_id": row.request_id,
                        "at": at,
                        "event": "replayed" if job.kind == "replay" else "purged",
                        "service": "dlq-job",
                        "message_id": letter.id,
                        "causation_id": None,
                        "message_type": row.message_type,
                        "detail": orjson.dumps({"job": job.id, "by": job.created_by}).decode(),
                    }
                )
        # the others (not the job's) go back to the tail, untouched: republished before they are acked
        others = [(m, d) for m, d in zip(batch, letters) if d.id not in mine or d.id in unroutable]
        for _, letter in others:
            publishes.append(
                publisher.publish_raw(
                    "", queue, letter.body, headers=dict(letter.headers), properties=letter.properties
                )
            )
        await asyncio.gather(*publishes)  # every confirm, or the batch stays unacked and goes back as it was
        count = await self._store.dlq_jobs.settle(job.id, settled, events=events) if settled else 0
        for message in batch:  # the job's, settled now or before a restart; the others, republished
            await message.ack()
        return count

    async def _audit(self, job: JobRecord | None) -> None:
        if job is None:
            return
        with contextlib.suppress(Exception):
            await self._store.audit.record(
                f"dlq.{job.kind}.finished",
                client_id=job.created_by,
                subject=f"job {job.id}",
                count=job.done,
                detail={
                    "job": job.id,
                    "state": job.state,
                    "failed": job.failed,
                    "total": job.total,
                    "filter": job.filter,
                },
            )
