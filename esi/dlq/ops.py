"""What the API, the console and the CLI do with dead letters, over the index (listing, counting, grouping) and the
queues (a body, read only when one letter is opened, replayed, edited or exported)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from esi.bus.dead_letters import DeadLetter, DeadLetters
from esi.config import parse_duration
from esi.store import Store
from esi.store.dead_letters import IndexedLetter, IndexFilter
from esi.store.dlq_jobs import JobRecord

__all__ = ["CountChanged", "DeadLetterOps", "parse_time", "start_job"]


def parse_time(text: str, *, name: str) -> str:
    """An ISO time as the store keeps times, from an ISO time or a duration back from now (`15m`: 15 minutes ago)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        seconds = parse_duration(text, name=name)
        when = datetime.now(UTC) - timedelta(seconds=seconds)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class DeadLetterOps:
    def __init__(self, dead_letters: DeadLetters | None, store: Store) -> None:
        self.dead_letters = dead_letters
        self.store = store

    def queue_name(self, queue: str | None) -> str | None:
        """A DLQ's name from its name or its system's code (`dms`); ValueError for an unknown one."""
        if not queue:
            return None
        if self.dead_letters is None:
            return queue if queue.endswith("_dead_letter_queue") else f"{queue}_dead_letter_queue"
        return self.dead_letters.queues(queue)[0]

    def filter(
        self,
        *,
        queue: str | None = None,
        reason: str | None = None,
        since: str | None = None,
        until: str | None = None,
        system: str | None = None,
        message_type: str | None = None,
        code: str | None = None,
        key: str | None = None,
        ids: list[str] | tuple[str, ...] | None = None,
    ) -> IndexFilter:
        """The index's filter; ValueError naming a bad value."""
        return IndexFilter(
            queue=self.queue_name(queue),
            reason=reason or None,
            since=parse_time(since, name="since") if since else None,
            until=parse_time(until, name="until") if until else None,
            system=system or None,
            message_type=message_type or None,
            code=code or None,
            key=key or None,
            ids=tuple(ids or ()),
        )

    async def page(
        self, filters: IndexFilter, *, after: int | None = None, limit: int = 50
    ) -> tuple[list[IndexedLetter], int | None]:
        return await self.store.dead_letters.page(filters, after=after, limit=limit)

    async def count(self, filters: IndexFilter) -> int:
        return await self.store.dead_letters.count(filters)

    async def indexed(self, ident: str) -> IndexedLetter | None:
        return await self.store.dead_letters.get(ident)

    async def open(self, ident: str) -> DeadLetter | None:
        """One dead letter with its body, read from its queue (the index says which)."""
        if self.dead_letters is None:
            return None
        row = await self.store.dead_letters.get(ident)
        if row is not None:
            for attempt in range(3):  # its queue's messages may be held for a moment by another reader
                found = await self.dead_letters.find(row.queue, ident)
                if found is not None or row.state != "parked":
                    return found
                if attempt < 2:
                    await asyncio.sleep(0.5)  # back-off between looks, not synchronisation
            return None
        return await self.dead_letters.show(ident)  # not indexed yet (the sweep has not come by): every queue


async def start_job(
    store: Store, kind: str, filters: IndexFilter, *, by: str, rate: int | None, expect: int | None = None
) -> JobRecord:
    """A replay or purge job of the letters `filters` matches, in the audit log with who, what filter and how many.

    `expect`: the count the caller saw and confirms (a purge's): a job choosing another count is cancelled at once
    and `CountChanged` raised with the count now."""
    if kind not in ("replay", "purge"):
        raise ValueError(f"a job replays or purges, not {kind!r}")
    job = await store.dlq_jobs.create(kind, filters, created_by=by, rate=rate)
    if expect is not None and job.total != expect:
        await store.dlq_jobs.finish(job.id, "cancelled", error=f"{job.total} matched, not the {expect} confirmed")
        raise CountChanged(job.total)
    await store.audit.record(
        f"dlq.{kind}",
        client_id=by,
        subject=f"job {job.id}",
        count=job.total,
        detail={"job": job.id, "filter": filters.as_dict(), "rate": rate},
    )
    return job


class CountChanged(Exception):
    def __init__(self, now: int) -> None:
        super().__init__(f"{now} dead letters match now")
        self.now = now
