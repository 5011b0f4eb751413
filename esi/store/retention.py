"""Retention: requests in a final state, with their business keys and timelines, deleted once they are old.

`ESI_REQUEST_RETENTION` (30 days by default) says how old; the process that runs the origin's service (the 1C API)
runs a pass every `ESI_RETENTION_INTERVAL`, and `esi retention run` runs one at once. A pass deletes in bounded
batches, each its own short transaction outside the store's group commits, and yields between batches for as long
as the batch took, so that the API's writes (on SQLite, queued on the same writer thread) wait for one batch at
most, never for the whole pass.

Only requests created and settled (completed, failed or dead-lettered) before the cutoff go, and never one with an
outbox row still unpublished; they are found by their creation time (index `ix_esi_requests_created_at`, migration
7). Sent outbox rows of a deleted request go with it (the inbox and outbox pruning,
`ESI_INBOX_RETENTION`, removes the others).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Select, and_, bindparam, delete, exists, select

from esi import metrics
from esi.store import Store, schema
from esi.store.records import RequestStatus

log = logging.getLogger(__name__)

#: the final states: nothing more happens to such a request (a replayed dead letter's answer for a deleted request
#: is logged and dropped by the 1C side)
FINAL = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value, RequestStatus.DEAD_LETTERED.value)
#: requests per transaction
BATCH = 1000


@dataclass
class Deleted:
    """What a retention pass deleted, by kind of row."""

    requests: int = 0
    keys: int = 0
    events: int = 0
    outbox: int = 0
    batches: int = 0
    seconds: float = 0.0
    cutoff: str = ""

    def add(self, other: Deleted) -> None:
        self.requests += other.requests
        self.keys += other.keys
        self.events += other.events
        self.outbox += other.outbox
        self.batches += other.batches

    def as_dict(self) -> dict[str, int | float | str]:
        return {
            "requests": self.requests,
            "keys": self.keys,
            "events": self.events,
            "outbox": self.outbox,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "cutoff": self.cutoff,
        }


def cutoff_for(retention_s: float, *, now: datetime | None = None) -> str:
    """The store's time (ISO 8601, UTC) before which a settled request has expired."""
    moment = (now or datetime.now(UTC)) - timedelta(seconds=retention_s)
    return moment.isoformat(timespec="microseconds")


def _expired(limit: int) -> Select[tuple[str]]:
    r, o = schema.requests, schema.outbox
    unsent = exists().where(o.c.request_id == r.c.request_id, o.c.sent_at.is_(None))
    return (
        select(r.c.request_id)
        .where(
            r.c.created_at < bindparam("cutoff"), r.c.updated_at < bindparam("cutoff"), r.c.status.in_(FINAL), ~unsent
        )
        .order_by(r.c.created_at)
        .limit(limit)
    )


def delete_batch(conn: Connection, cutoff: str, limit: int = BATCH) -> Deleted:
    """Delete up to `limit` expired requests and what belongs to them, in the caller's transaction."""
    r, k, e, o = schema.requests, schema.request_keys, schema.events, schema.outbox
    candidates = [row[0] for row in conn.execute(_expired(limit), {"cutoff": cutoff})]
    if not candidates:
        return Deleted()
    # the conditions again on the rows themselves: a dead letter replayed meanwhile (in progress again) stays
    gone = [
        row[0]
        for row in conn.execute(
            delete(r)
            .where(
                r.c.request_id.in_(candidates),
                r.c.status.in_(FINAL),
                r.c.updated_at < cutoff,
                ~exists().where(and_(o.c.request_id == r.c.request_id, o.c.sent_at.is_(None))),
            )
            .returning(r.c.request_id)
        )
    ]
    if not gone:
        return Deleted(batches=1)
    keys = conn.execute(delete(k).where(k.c.request_id.in_(gone))).rowcount
    events = conn.execute(delete(e).where(e.c.request_id.in_(gone))).rowcount
    outbox = conn.execute(delete(o).where(o.c.request_id.in_(gone), o.c.sent_at.is_not(None))).rowcount
    return Deleted(requests=len(gone), keys=keys, events=events, outbox=outbox, batches=1)


async def run_pass(
    store: Store, *, retention_s: float, batch: int = BATCH, max_batches: int | None = None, now: datetime | None = None
) -> Deleted:
    """Delete every request expired under `retention_s`, `batch` at a time; what was deleted."""
    total = Deleted(cutoff=cutoff_for(retention_s, now=now))
    started = time.perf_counter()
    while max_batches is None or total.batches < max_batches:
        batch_started = time.perf_counter()
        done = await store.database.write_alone(lambda conn: delete_batch(conn, total.cutoff, batch))
        total.add(done)
        for table, count in (
            ("requests", done.requests),
            ("request_keys", done.keys),
            ("events", done.events),
            ("outbox", done.outbox),
        ):
            if count:
                metrics.RETENTION_DELETED.labels(table).inc(count)
        if done.requests < batch:  # the last of them (or a few that changed meanwhile: the next pass takes them)
            break
        # yield: the store's other writers get at least as much time as this batch took
        await asyncio.sleep(max(time.perf_counter() - batch_started, 0.005))
    total.seconds = time.perf_counter() - started
    return total


@dataclass
class RetentionTask:
    """The origin process's background pass: every `interval_s`, the first one `first_delay_s` after start."""

    store: Store
    retention_s: float
    interval_s: float
    first_delay_s: float = 10.0
    passes: list[Deleted] = field(default_factory=list)

    async def run_forever(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                done = await run_pass(self.store, retention_s=self.retention_s)
                if done.requests:
                    log.info(
                        "retention: deleted %d requests, %d keys, %d timeline events, %d outbox rows "
                        "settled before %s, in %d batches, %.1f s",
                        done.requests,
                        done.keys,
                        done.events,
                        done.outbox,
                        done.cutoff,
                        done.batches,
                        done.seconds,
                    )
            except Exception as exc:  # noqa: BLE001 - the store is away: the next pass tries again
                log.warning("retention pass failed: %s", exc)
            await asyncio.sleep(self.interval_s)
