"""The audit log: what operators did (replays, purges, pauses, client changes), with who and how many."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from esi.store import schema
from esi.store.database import Database, dumps, loads, now_iso
from esi.store.records import AuditEntry


class Audit:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self,
        action: str,
        *,
        client_id: str,
        subject: str | None = None,
        count: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record what an operator did: `action` (dlq.replay, system.pause, ...), on what, how many."""
        row = {
            "at": now_iso(),
            "client_id": client_id,
            "action": action,
            "subject": subject,
            "count": count,
            "detail": dumps(detail),
        }
        await self._db.write(lambda conn: conn.execute(insert(schema.audit).values(**row)))

    async def entries(
        self, *, limit: int = 100, action: str | None = None, since: str | None = None, client_id: str | None = None
    ) -> list[AuditEntry]:
        """The newest entries first."""
        a = schema.audit
        query = select(a)
        if action:
            query = query.where(a.c.action == action)
        if since:
            query = query.where(a.c.at >= since)
        if client_id:
            query = query.where(a.c.client_id == client_id)
        query = query.order_by(a.c.id.desc()).limit(limit)
        rows = await self._db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return [AuditEntry(**{**row, "detail": loads(row["detail"])}) for row in rows]
