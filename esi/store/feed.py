"""The pull feed: messages for a subscriber that reads them by cursor (1C's scheduled job, on sites that open no
port into 1C), kept in the store until it acknowledges them, so that a reader away for a day misses nothing.

The cursor is the feed's sequence number: `read(after=c)` gives the entries after `c` in order; `ack(c)` says every
entry up to `c` is handled (entries acknowledged are pruned after the retention time). Appending is idempotent on
the message id: a redelivered message takes no second place in the feed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, update
from sqlalchemy.exc import IntegrityError

from esi.store import schema
from esi.store.database import Database, loads, now_iso


class Feed:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self, subscriber: str, *, message_id: str, message_type: str, source: str, record_key: str | None, body: str
    ) -> bool:
        """Add a message to `subscriber`'s feed; False when it is there already."""
        values = {
            "subscriber": subscriber,
            "message_id": message_id,
            "message_type": message_type,
            "source": source,
            "record_key": (record_key or "")[:255] or None,
            "body": body,
            "created_at": now_iso(),
        }
        try:
            await self._db.write(lambda conn: conn.execute(schema.feed.insert().values(**values)))
        except IntegrityError:
            return False
        return True

    async def read(self, subscriber: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        """The entries after the cursor `after`, oldest first, at most `limit`."""
        f = schema.feed
        query = (
            select(f.c.seq, f.c.message_id, f.c.message_type, f.c.source, f.c.record_key, f.c.body, f.c.created_at)
            .where(and_(f.c.subscriber == subscriber, f.c.seq > after))
            .order_by(f.c.seq)
            .limit(limit)
        )
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return [
            {
                "cursor": r.seq,
                "message_id": r.message_id,
                "type": r.message_type,
                "source": r.source,
                "key": r.record_key,
                "created_at": r.created_at,
                "body": loads(r.body),
            }
            for r in rows
        ]

    async def ack(self, subscriber: str, cursor: int) -> int:
        """Every entry up to `cursor` is handled; the acknowledged cursor (it never goes back)."""
        c = schema.feed_cursors
        now = now_iso()

        def write(conn: Connection) -> int:
            found = conn.execute(select(c.c.acked).where(c.c.subscriber == subscriber)).first()
            if found is None:
                conn.execute(c.insert().values(subscriber=subscriber, acked=cursor, acked_at=now))
                return cursor
            if cursor > found.acked:
                conn.execute(update(c).where(c.c.subscriber == subscriber).values(acked=cursor, acked_at=now))
                return cursor
            return int(found.acked)

        return int(await self._db.write(write))

    async def lag(self, subscriber: str) -> dict[str, Any]:
        """How far the reader is behind: entries not acknowledged, the age in seconds of the oldest one, the
        acknowledged cursor and the newest one."""
        f, c = schema.feed, schema.feed_cursors

        def read(conn: Connection) -> dict[str, Any]:
            acked = conn.execute(select(c.c.acked).where(c.c.subscriber == subscriber)).scalar() or 0
            pending = and_(f.c.subscriber == subscriber, f.c.seq > acked)
            count, oldest = conn.execute(select(func.count(), func.min(f.c.created_at)).where(pending)).one()
            last = conn.execute(select(func.max(f.c.seq)).where(f.c.subscriber == subscriber)).scalar() or 0
            return {"acked": int(acked), "last": int(last), "pending": int(count), "oldest": oldest}

        report = await self._db.read(read)
        oldest = report.pop("oldest")
        age = (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return {**report, "oldest_age_s": round(max(age, 0.0), 3)}

    async def prune_acked(self, older_than: str) -> int:
        """Forget acknowledged entries written before `older_than` (ISO time); how many."""
        f, c = schema.feed, schema.feed_cursors

        def write(conn: Connection) -> int:
            removed = 0
            for subscriber, acked in conn.execute(select(c.c.subscriber, c.c.acked)).all():
                removed += conn.execute(
                    f.delete().where(f.c.subscriber == subscriber, f.c.seq <= acked, f.c.created_at < older_than)
                ).rowcount
            return removed

        return int(await self._db.write(write))
