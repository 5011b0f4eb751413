"""Replay and purge jobs: their filter, progress and the lease of the process running them (`esi.dlq.jobs`).

A job chooses its dead letters when it is created (the index's parked rows matching its filter get its id, in the
same transaction: `total`), and each letter it settles is marked in the index in one transaction with the job's
counts, so the counts always add up: `done + failed + remaining == total`. A lease (`lease_owner`, `lease_until`)
says which process runs it; a lease that ran out (the process died) lets another claim it, and the job resumes
with the letters still parked.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from esi.store import schema
from esi.store.database import Database, dumps, loads, now_iso
from esi.store.dead_letters import PARKED, IndexFilter

__all__ = ["ACTIVE", "FINISHED", "JobRecord", "Jobs", "process_owner"]

ACTIVE = ("pending", "running")
FINISHED = ("done", "cancelled", "failed")
#: what a letter a job could not settle is marked: not found in its queue, or without a routing key to replay to
FAILED_STATES = ("missing", "unroutable")


def process_owner() -> str:
    """A name for this process's leases: host, pid and a random part (a restarted process is another owner)."""
    import os

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    filter: dict[str, Any]
    state: str
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    rate: int | None
    total: int
    done: int
    failed: int
    cancel_requested: bool
    lease_owner: str | None
    lease_until: str | None
    error: str | None

    @classmethod
    def of(cls, row: Any) -> JobRecord:
        data = dict(row)
        data["filter"] = loads(data["filter"]) or {}
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)

    @property
    def remaining(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def progress(self) -> dict[str, Any]:
        """What `GET /dlq/jobs/{id}`, the console and the CLI show: counts, rate and ETA."""
        rate: float | None = None
        if self.started_at:
            end = datetime.fromisoformat(self.finished_at or now_iso())
            elapsed = (end - datetime.fromisoformat(self.started_at)).total_seconds()
            if elapsed > 0:
                rate = round((self.done + self.failed) / elapsed, 1)
        eta = round(self.remaining / rate, 1) if rate and not self.finished else None
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "filter": self.filter,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rate_limit": self.rate,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "remaining": self.remaining,
            "rate": rate,
            "eta_s": eta,
            "cancel_requested": self.cancel_requested,
            "error": self.error,
        }


class Jobs:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, kind: str, filters: IndexFilter, *, created_by: str, rate: int | None) -> JobRecord:
        """A pending job with the parked letters matching `filters` that no other job has (its `total`)."""
        j, d = schema.dlq_jobs, schema.dead_letters
        now = now_iso()

        def write(conn: Connection) -> Any:
            inserted = conn.execute(
                insert(j).values(
                    kind=kind,
                    filter=dumps(filters.as_dict()),
                    state="pending",
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                    rate=rate,
                    total=0,
                    done=0,
                    failed=0,
                    cancel_requested=0,
                )
            ).inserted_primary_key
            assert inserted is not None  # noqa: S101 - an insert has a key
            job_id = inserted[0]
            chosen = filters.apply(select(d.c.id)).where(d.c.job_id.is_(None))
            total = conn.execute(update(d).where(d.c.id.in_(chosen)).values(job_id=job_id)).rowcount
            conn.execute(update(j).where(j.c.id == job_id).values(total=total))
            return conn.execute(select(j).where(j.c.id == job_id)).one()._mapping

        return JobRecord.of(await self._db.write(write))

    async def get(self, job_id: int) -> JobRecord | None:
        j = schema.dlq_jobs
        row = await self._db.read(lambda conn: conn.execute(select(j).where(j.c.id == job_id)).first())
        return JobRecord.of(row._mapping) if row is not None else None

    async def recent(self, limit: int = 20) -> list[JobRecord]:
        j = schema.dlq_jobs
        query = select(j).order_by(j.c.id.desc()).limit(limit)
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return [JobRecord.of(r._mapping) for r in rows]

    async def claim(self, owner: str, lease_s: float, *, job_id: int | None = None) -> JobRecord | None:
        """The oldest active job (or job `job_id`) whose lease ran out (or that never had one), now leased to
        `owner`."""
        j = schema.dlq_jobs
        now = now_iso()
        free = and_(j.c.state.in_(ACTIVE), or_(j.c.lease_until.is_(None), j.c.lease_until < now))
        wanted = free if job_id is None else and_(free, j.c.id == job_id)
        first = select(j.c.id).where(wanted).limit(1)
        if await self._db.read(lambda conn: conn.execute(first).scalar()) is None:
            return None  # nothing to claim: no write (the runners of every API replica ask every second)

        def write(conn: Connection) -> Any:
            job_id = conn.execute(select(j.c.id).where(wanted).order_by(j.c.id).limit(1)).scalar()
            if job_id is None:
                return None
            taken = conn.execute(
                update(j)
                .where(j.c.id == job_id, free)
                .values(
                    lease_owner=owner,
                    lease_until=_later(lease_s),
                    state="running",
                    started_at=func.coalesce(j.c.started_at, now),
                    updated_at=now,
                )
            ).rowcount
            return conn.execute(select(j).where(j.c.id == job_id)).one()._mapping if taken else None

        row = await self._db.write(write)
        return JobRecord.of(row) if row is not None else None

    async def renew(self, job_id: int, owner: str, lease_s: float) -> JobRecord | None:
        """Keep the lease; the job as it stands (None: the lease is not ours any more)."""
        j = schema.dlq_jobs

        def write(conn: Connection) -> Any:
            taken = conn.execute(
                update(j)
                .where(j.c.id == job_id, j.c.lease_owner == owner, j.c.state == "running")
                .values(lease_until=_later(lease_s), updated_at=now_iso())
            ).rowcount
            return conn.execute(select(j).where(j.c.id == job_id)).one()._mapping if taken else None

        row = await self._db.write(write)
        return JobRecord.of(row) if row is not None else None

    async def settle(
        self, job_id: int, settled: Sequence[tuple[int, str]], *, events: Sequence[Mapping[str, Any]] = ()
    ) -> int:
        """Letters of the job are settled (`(letter_pk, state)`: replayed, purged, or a failure: missing,
        unroutable), counted and their requests' timeline events written, in one transaction; how many were still
        parked with this job (one settled before, by the same job before a restart, is not counted twice)."""
        j, d = schema.dlq_jobs, schema.dead_letters

        by_state: dict[str, list[int]] = {}
        for pk, state in settled:
            by_state.setdefault(state, []).append(pk)

        def write(conn: Connection) -> int:
            now = now_iso()
            done = failed = 0
            for state, pks in by_state.items():  # one statement per state (a batch is one or two)
                moved = conn.execute(
                    update(d)
                    .where(d.c.id.in_(pks), d.c.job_id == job_id, d.c.state == PARKED)
                    .values(state=state, settled_at=now)
                ).rowcount
                if state in FAILED_STATES:
                    failed += moved
                else:
                    done += moved
            conn.execute(
                update(j)
                .where(j.c.id == job_id)
                .values(done=j.c.done + done, failed=j.c.failed + failed, updated_at=now)
            )
            if events:
                conn.execute(insert(schema.events), list(events))
            return done + failed

        return await self._db.write(write)

    async def parked(self, job_id: int) -> dict[str, int]:
        """The job's letters still parked, by queue."""
        d = schema.dead_letters
        query = select(d.c.queue, func.count()).where(d.c.job_id == job_id, d.c.state == PARKED).group_by(d.c.queue)
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return {r[0]: int(r[1]) for r in rows}

    async def missing(self, job_id: int, queue: str) -> int:
        """The job's letters still parked in `queue` after a whole pass: not there (purged behind esi's back, or
        never in it); counted as failed."""
        j, d = schema.dlq_jobs, schema.dead_letters

        def write(conn: Connection) -> int:
            n = conn.execute(
                update(d)
                .where(d.c.job_id == job_id, d.c.queue == queue, d.c.state == PARKED)
                .values(state="missing", settled_at=now_iso())
            ).rowcount
            conn.execute(update(j).where(j.c.id == job_id).values(failed=j.c.failed + n, updated_at=now_iso()))
            return int(n)

        return await self._db.write(write)

    async def finish(self, job_id: int, state: str, *, error: str | None = None) -> JobRecord | None:
        """Done, cancelled or failed: its letters still parked are free for another job."""
        j, d = schema.dlq_jobs, schema.dead_letters

        def write(conn: Connection) -> Any:
            now = now_iso()
            conn.execute(update(d).where(d.c.job_id == job_id, d.c.state == PARKED).values(job_id=None))
            conn.execute(
                update(j)
                .where(j.c.id == job_id)
                .values(state=state, finished_at=now, updated_at=now, lease_owner=None, lease_until=None, error=error)
            )
            return conn.execute(select(j).where(j.c.id == job_id)).first()

        row = await self._db.write(write)
        return JobRecord.of(row._mapping) if row is not None else None

    async def cancel(self, job_id: int) -> JobRecord | None:
        """Ask the job to stop (its process stops within a message); a pending one stops at once."""
        j = schema.dlq_jobs
        await self._db.execute(
            update(j).where(j.c.id == job_id, j.c.state.in_(ACTIVE)).values(cancel_requested=1, updated_at=now_iso())
        )
        job = await self.get(job_id)
        if job is not None and job.state == "pending":
            return await self.finish(job_id, "cancelled")
        return job

    async def busy_queues(self) -> set[str]:
        """The queues an active job has letters in."""
        j, d = schema.dlq_jobs, schema.dead_letters
        query = (
            select(d.c.queue)
            .distinct()
            .where(d.c.state == PARKED, d.c.job_id.in_(select(j.c.id).where(j.c.state.in_(ACTIVE))))
        )
        return set(await self._db.read(lambda conn: list(conn.execute(query).scalars())))
