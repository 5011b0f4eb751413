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
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from esi.errors import StoreUnavailable
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


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The `StoreUnavailable` that `exc` (a driver's or SQLAlchemy's error) stands for, or None when it is not about
    reaching the database: a broken or refused connection, a server shutting down or starting up, a transaction a
    lost connection left to roll back, an exhausted pool. A constraint or a bad statement is not unavailability."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, IntegrityError | ProgrammingError):
        return None
    broken = isinstance(exc, PendingRollbackError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    seen: BaseException | None = exc
    for _ in range(8):  # the driver's own error, and what caused it
        if seen is None or broken:
            break
        broken = isinstance(seen, OSError | ConnectionError | TimeoutError) or _is_connection_error(seen)
        seen = seen.__cause__ or seen.__context__
    if not broken and isinstance(exc, OperationalError):
        # SQLite: a locked or unreadable file is unavailability (503 and a retry are the honest answer); a missing
        # table or column is a bug
        broken = not any(word in str(exc.orig) for word in ("no such", "syntax", "has no column"))
    if not broken:
        return None
    return StoreUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


def _is_connection_error(exc: BaseException) -> bool:
    """asyncpg's connection failures (a lost connection, a server shutting down — SQLSTATE class 57 or 08 —, one
    that is starting up), recognised without importing asyncpg where SQLite alone is installed."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in ("08", "57"):
        return True
    return type(exc).__module__.startswith("asyncpg") and type(exc).__name__ in (
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "ConnectionFailureError",
    )


def _raise_unavailable(exc: Exception) -> None:
    """Raise the `StoreUnavailable` that `exc` stands for, if it stands for one."""
    translated = unavailable(exc)
    if translated is not None and translated is not exc:
        raise translated from exc


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

    # Each raises `StoreUnavailable` (a TransientError) when the database cannot be reached, instead of the
    # driver's error: the API answers it 503 with Retry-After, a consumer retries its message.

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in a committed transaction, possibly shared with other writes (a group commit)."""
        try:
            return await self._backend.write(op)
        except Exception as exc:
            _raise_unavailable(exc)
            raise

    async def write_alone(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in a short transaction of its own, outside the group commits (retention's batches)."""
        try:
            return await self._backend.write_alone(op)
        except Exception as exc:
            _raise_unavailable(exc)
            raise

    async def read(self, op: Callable[[Connection], T]) -> T:
        """Run `op` on a connection that writes nothing."""
        try:
            return await self._backend.read(op)
        except Exception as exc:
            _raise_unavailable(exc)
            raise

    async def execute(self, statement: Any, parameters: Any = None) -> None:
        """One statement, in the next group commit."""
        await self.write(lambda conn: conn.execute(statement, parameters) and None)

    def point_read(self, statement: Statement, params: dict[str, Any]) -> PointRow | None:
        """(names, row) of a primary-key lookup run at once, where the backend can (SQLite); else None."""
        return self._backend.point_read(statement.sqlite_sql, params)

    async def lookup(self, statement: Statement, params: dict[str, Any]) -> dict[str, Any] | None:
        """The row of a primary-key lookup (`statement`, a SELECT) as a dict, None without one: on the loop's thread
        where the backend can (SQLite), on a connection kept for lookups (PostgreSQL)."""
        try:
            return await self._backend.lookup(statement, params)
        except Exception as exc:
            _raise_unavailable(exc)
            raise

    def notifications(self, channel: str, on_payload: Callable[[str], None]) -> Notifications | None:
        """What any process announces on `channel` (PostgreSQL's LISTEN/NOTIFY), or None where the database cannot
        tell (SQLite)."""
        return self._backend.notifications(channel, on_payload)

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        from sqlalchemy import select

        await self.read(lambda conn: conn.execute(select(1)).scalar())

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
