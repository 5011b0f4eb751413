"""The database every repository of the store shares: one backend (engines, group commits, threads), the
migrations, and the helpers the repositories use.

A repository (`esi.store.requests`, `outbox`, `inbox`, `pauses`, `audit`, `queries`, and a system's own tables:
`esi.systems.<code>.tables`) is a small class over one `Database`: its operations are plain functions over a
SQLAlchemy `Connection` that it hands to `write`, `write_alone` or `read`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from esi.store.backends import Backend, Notifications, PointRow, open_backend
from esi.store.migrations import Migrations, applied_versions, apply
from esi.store.statements import Statement

log = logging.getLogger(__name__)

T = TypeVar("T")


def now_iso() -> str:
    """The time now as the store keeps times: ISO 8601, UTC, microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


class Database:
    """One database, SQLite (default) or PostgreSQL, shared by every repository; an async context manager."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.is_sqlite = backend.dialect == "sqlite"

    @classmethod
    def open(cls, url: str, *, durable_commits: bool = True) -> Database:
        """The database at `url` (nothing is connected yet; `migrate` does the first connection).

        `durable_commits=False` lets SQLite skip the fsync at each commit (WAL with synchronous=NORMAL: safe against
        a crash of the process, not of the machine). Adapters use it: all they commit is their inbox, and an inbox
        entry lost in a power cut only means a redelivered message is handled again, which the external systems'
        idempotency keys make harmless. The 1C side keeps full durability: its commits are what 1C is told.
        """
        return cls(open_backend(url, durable_commits=durable_commits))

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the writes under way and close the backend."""
        await self._backend.aclose()

    # --- running operations -----------------------------------------------------------------------------------

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in a committed transaction, possibly shared with other writes (a group commit)."""
        return await self._backend.write(op)

    async def write_alone(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in a short transaction of its own, outside the group commits (retention's batches)."""
        return await self._backend.write_alone(op)

    async def read(self, op: Callable[[Connection], T]) -> T:
        """Run `op` on a connection that writes nothing."""
        return await self._backend.read(op)

    async def execute(self, statement: Any, parameters: Any = None) -> None:
        """One statement, in the next group commit."""
        await self._backend.write(lambda conn: conn.execute(statement, parameters) and None)

    def point_read(self, statement: Statement, params: dict[str, Any]) -> PointRow | None:
        """(names, row) of a primary-key lookup run at once, where the backend can (SQLite); else None."""
        return self._backend.point_read(statement.sqlite_sql, params)

    def notifications(self, channel: str, on_payload: Callable[[str], None]) -> Notifications | None:
        """What any process announces on `channel` (PostgreSQL's LISTEN/NOTIFY), or None where the database cannot
        tell (SQLite)."""
        return self._backend.notifications(channel, on_payload)

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        from sqlalchemy import select

        await self._backend.read(lambda conn: conn.execute(select(1)).scalar())

    # --- schema -------------------------------------------------------------------------------------------------

    async def migrate(self, migrations: Iterable[Migrations]) -> None:
        """Apply the migrations of each owner not yet applied (safe when several services start at once)."""
        chosen = list(migrations)
        for attempt in range(10):
            try:
                await self._backend.write_alone(lambda conn: apply(conn, chosen))
                return
            except (IntegrityError, OperationalError, ProgrammingError) as exc:
                # another process migrated the same store at the same moment: look again
                if attempt == 9:
                    raise
                log.info("store migration raced with another process (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.1 * (attempt + 1))

    async def applied_migrations(self, owner: str = "esi") -> list[int]:
        """The versions of `owner`'s migrations applied to this database, in order."""
        return await self._backend.read(lambda conn: applied_versions(conn, owner))
