"""Maintenance pauses (one per system, for every adapter replica) and the circuit breakers' states as each adapter
process reports them: what `GET /systems` and the console show."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from esi.store import schema
from esi.store.database import Database, now_iso
from esi.store.records import BreakerReport, SystemPause


class Pauses:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pause_system(self, system: str, *, until: str | None, reason: str | None, paused_by: str) -> SystemPause:
        """Pause `system` for every adapter replica (until `until`, ISO time, or until resumed); pausing it again
        replaces the pause."""
        p = schema.system_pauses
        row = {"system": system, "paused_at": now_iso(), "until": until, "reason": reason, "paused_by": paused_by}

        def write(conn: Connection) -> None:
            conn.execute(p.delete().where(p.c.system == system))
            conn.execute(insert(p).values(**row))

        await self._db.write(write)
        return SystemPause.model_validate(row)

    async def resume_system(self, system: str) -> bool:
        """Lift `system`'s pause; whether there was one."""
        p = schema.system_pauses
        return bool(await self._db.write(lambda conn: conn.execute(p.delete().where(p.c.system == system)).rowcount))

    async def system_pauses(self, *, now: str | None = None) -> dict[str, SystemPause]:
        """The pauses in force (one that ran out is not: it lifts itself), by system."""
        p, now = schema.system_pauses, now or now_iso()
        query = select(p).where((p.c.until.is_(None)) | (p.c.until > now))
        rows = await self._db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return {row["system"]: SystemPause(**row) for row in rows}

    async def report_breaker(self, *, system: str, instance: str, state: str, since: str, reason: str | None) -> None:
        """Record a breaker's state as this process sees it (for `GET /systems` and the console)."""
        b = schema.breakers
        row = {
            "system": system,
            "instance": instance,
            "state": state,
            "since": since,
            "reason": reason,
            "updated_at": now_iso(),
        }

        def write(conn: Connection) -> None:
            conn.execute(b.delete().where(b.c.system == system, b.c.instance == instance))
            conn.execute(insert(b).values(**row))

        await self._db.write(write)

    async def forget_breakers(self, instance: str) -> None:
        """A process that stops takes its reports with it."""
        b = schema.breakers
        await self._db.write(lambda conn: conn.execute(b.delete().where(b.c.instance == instance)))

    async def breaker_states(self) -> list[BreakerReport]:
        query = select(schema.breakers).order_by(schema.breakers.c.system, schema.breakers.c.instance)
        rows = await self._db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return [BreakerReport(**row) for row in rows]
