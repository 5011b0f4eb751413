"""Events esi took (`esi_event_log`) and, per subscriber, the version of each record it was given
(`esi_event_versions`).

Taking an event writes its log row and its outbox row in one transaction, as accepting a request does: the event id
derives from (source, type, record id, version), so a repeat of one change (the webhook called twice, the poller
finding what the webhook already brought) finds its row and writes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, select, update
from sqlalchemy.exc import IntegrityError

from esi.store import schema
from esi.store.database import Database, now_iso
from esi.store.statements import INSERT_OUTBOX


class EventLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(
        self,
        *,
        event_id: str,
        message_id: str,
        source: str,
        event_type: str,
        record_id: str,
        version: str,
        keys: list[str],
        via: str,
        routing_key: str,
        body: bytes,
    ) -> bool:
        """Record the event and its outgoing message; False (and nothing written) when it was taken before."""
        now = now_iso()

        def write(conn: Connection) -> None:
            conn.execute(
                schema.event_log.insert().values(
                    event_id=event_id,
                    message_id=message_id,
                    source=source,
                    event_type=event_type,
                    record_id=record_id[:255],
                    version=version,
                    keys=" ".join(keys)[:2000] or None,
                    via=via,
                    received_at=now,
                )
            )
            INSERT_OUTBOX.run(
                conn,
                {
                    "message_id": message_id,
                    "request_id": event_id,
                    "routing_key": routing_key,
                    "body": body,
                    "created_at": now,
                    "sent_at": None,
                    "trace_context": None,
                },
            )

        try:
            await self._db.write(write)
        except IntegrityError:
            if await self.get(event_id) is None:  # pragma: no cover - not a duplicate: a real failure
                raise
            return False
        return True

    async def get(self, event_id: str) -> dict[str, Any] | None:
        e = schema.event_log
        row = await self._db.read(lambda conn: conn.execute(select(e).where(e.c.event_id == event_id)).first())
        return None if row is None else _entry(row)

    async def recent(
        self, *, limit: int = 100, source: str | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest events, newest first; of one source, or carrying a business key (or record id)."""
        e = schema.event_log
        query = select(e).order_by(e.c.id.desc()).limit(limit)
        if source:
            query = query.where(e.c.source == source)
        if key:
            query = query.where((e.c.record_id == key) | e.c["keys"].contains(key))
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return [_entry(r) for r in rows]

    async def prune(self, older_than: str) -> int:
        """Forget the events taken before `older_than` (ISO time) and their timelines; how many. A change handed in
        again after that is taken again (and superseded where a subscriber holds a newer version)."""
        e, t = schema.event_log, schema.events

        def write(conn: Connection) -> int:
            old = select(e.c.event_id).where(e.c.received_at < older_than)
            conn.execute(t.delete().where(t.c.request_id.in_(old.scalar_subquery())))
            return int(conn.execute(e.delete().where(e.c.received_at < older_than)).rowcount)

        return int(await self._db.write(write))

    # --- per subscriber: the version of each record it was given ------------------------------------------------

    async def given_version(self, subscriber: str, stream: str, record_id: str) -> tuple[str, str] | None:
        """The version of the record `subscriber` was last given, and the message that gave it."""
        v = schema.event_versions
        query = select(v.c.version, v.c.message_id).where(
            and_(v.c.subscriber == subscriber, v.c.stream == stream, v.c.record_id == record_id[:255])
        )
        row = await self._db.read(lambda conn: conn.execute(query).first())
        return None if row is None else (row.version, row.message_id)

    async def record_given(self, subscriber: str, stream: str, record_id: str, version: str, message_id: str) -> None:
        """`subscriber` was given `version` of the record; an older version never replaces a newer one."""
        v = schema.event_versions
        key = and_(v.c.subscriber == subscriber, v.c.stream == stream, v.c.record_id == record_id[:255])
        values = {"version": version, "message_id": message_id, "at": now_iso()}

        def write(conn: Connection) -> None:
            if conn.execute(update(v).where(key, v.c.version < version).values(**values)).rowcount:
                return
            if conn.execute(select(v.c.version).where(key)).first() is None:
                conn.execute(
                    v.insert().values(subscriber=subscriber, stream=stream, record_id=record_id[:255], **values)
                )

        try:
            await self._db.write(write)
        except IntegrityError:  # a concurrent first delivery of the same record: compare again
            await self._db.write(write)


def _entry(row: Any) -> dict[str, Any]:
    return {
        "event_id": row.event_id,
        "message_id": row.message_id,
        "source": row.source,
        "type": row.event_type,
        "record_id": row.record_id,
        "version": row.version,
        "keys": (row.keys or "").split(),
        "via": row.via,
        "received_at": row.received_at,
    }
