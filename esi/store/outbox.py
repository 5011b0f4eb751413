"""The outbox: messages committed with their request, waiting for the relay to publish them (esi.bus.relay).

It answers the bus's `OutboxStore` port (esi.bus.ports): claim unsent rows for a lease, release them, mark them sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, func, or_, select, update

from esi.store import schema
from esi.store.database import Database, now_iso
from esi.store.records import OutboxRow, RequestStatus
from esi.store.statements import MARK_IN_PROGRESS, MARK_SENT


class Published(Protocol):
    """A row handed back to the outbox by the relay (its `OutboxRow`, or any message with these ids)."""

    @property
    def message_id(self) -> str: ...

    @property
    def request_id(self) -> str: ...


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending(self, limit: int = 500) -> list[OutboxRow]:
        """Up to `limit` outbox rows not yet published, oldest first."""
        o = schema.outbox
        query = (
            select(o.c.id, o.c.message_id, o.c.request_id, o.c.routing_key, o.c.body, o.c.trace_context)
            .where(o.c.sent_at.is_(None))
            .order_by(o.c.id)
            .limit(limit)
        )
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return [_row(r) for r in rows]

    async def claim(
        self, *, limit: int, fresh_s: float, lease_s: float, mine: list[str] | None = None
    ) -> list[OutboxRow]:
        """Claim for `lease_s` seconds up to `limit` unsent outbox rows that no sweep holds, oldest first.

        Rows younger than `fresh_s` are left to the fast path of the API process that committed them (its publish
        ends, confirmed or failed, within the publish timeout), except those of `mine` (message ids this process's
        fast path failed to publish). `FOR UPDATE SKIP LOCKED`: sweeps of several processes never claim one row
        twice (SQLite has one writer at a time anyway).
        """
        now = datetime.now(UTC)
        o = schema.outbox
        eligible = o.c.created_at < (now - timedelta(seconds=fresh_s)).isoformat(timespec="microseconds")
        if mine:
            eligible = or_(eligible, o.c.message_id.in_(mine))
        now_s = now.isoformat(timespec="microseconds")
        pick = (
            select(o.c.id)
            .where(o.c.sent_at.is_(None), or_(o.c.claimed_until.is_(None), o.c.claimed_until < now_s), eligible)
            .order_by(o.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(o)
            .where(o.c.id.in_(pick.scalar_subquery()))
            .values(claimed_until=(now + timedelta(seconds=lease_s)).isoformat(timespec="microseconds"))
            .returning(o.c.id, o.c.message_id, o.c.request_id, o.c.routing_key, o.c.body, o.c.trace_context)
        )
        rows = await self._db.write(lambda conn: conn.execute(claim).all())
        return [_row(r) for r in sorted(rows, key=lambda r: r.id)]

    async def release(self, rows: Sequence[Published]) -> None:
        """Give claimed rows back (their publish failed): the next sweep of any process takes them."""
        if not rows:
            return
        o = schema.outbox
        release = (
            update(o)
            .where(o.c.message_id.in_([r.message_id for r in rows]), o.c.sent_at.is_(None))
            .values(claimed_until=None)
        )
        await self._db.write(lambda conn: conn.execute(release))

    async def mark_sent(self, rows: Sequence[Published]) -> None:
        """These rows are published (confirmed): mark them sent and move their accepted requests to in progress."""
        if not rows:
            return
        now = now_iso()

        def write(conn: Connection) -> None:
            MARK_SENT.run(conn, [{"mid": r.message_id, "at": now} for r in rows])
            MARK_IN_PROGRESS.run(
                conn,
                [
                    {
                        "rid": r.request_id,
                        "at": now,
                        "from_st": RequestStatus.ACCEPTED.value,
                        "to_st": RequestStatus.IN_PROGRESS.value,
                    }
                    for r in rows
                ],
            )

        await self._db.write(write)

    async def backlog(self) -> int:
        """How many outbox rows wait to be published."""
        query = select(func.count()).select_from(schema.outbox).where(schema.outbox.c.sent_at.is_(None))
        return int(await self._db.read(lambda conn: conn.execute(query).scalar_one()))

    async def prune_sent(self, older_than: str) -> int:
        """Forget rows sent before `older_than` (ISO time); how many."""
        o = schema.outbox
        return int(
            await self._db.write(
                lambda conn: conn.execute(o.delete().where(o.c.sent_at.is_not(None), o.c.sent_at < older_than)).rowcount
            )
        )


def _row(r: Any) -> OutboxRow:
    """An outbox row as the relay gets it."""
    return OutboxRow(id=r.id, message_id=r.message_id, request_id=r.request_id, routing_key=r.routing_key, body=r.body,
                     trace_context=r.trace_context)  # fmt: skip
