"""The statements on the store's hot path: built once with SQLAlchemy Core, run by the driver itself.

SQLAlchemy's execution of a compiled, cached statement costs several times what sqlite3 takes to run it, and a
request goes through about ten of these statements: most of the store's CPU, held under the GIL by the writer thread
while the event loop waits (figures: docs/performance.md). So each statement is compiled once per dialect and run on
the driver connection of the same SQLAlchemy transaction: BEGIN, savepoints and COMMIT stay SQLAlchemy's. On SQLite
that is sqlite3 with named parameters; on PostgreSQL asyncpg with positional ones (`$1`), awaited from the
operation's greenlet as SQLAlchemy's own adapter does, and prepared once per connection by asyncpg's statement cache.
Driver errors are raised as SQLAlchemy's (`IntegrityError` for a duplicate), so callers see one kind of error
whichever path ran.

On PostgreSQL the inserts of a group commit are also gathered (`deferred`): within the batch's transaction a
`deferrable` statement only queues its rows, and the queue is sent as one pipelined `executemany` per statement
(asyncpg sends every row and waits once) before the next other statement, at the end of each write run in a
savepoint, and before the commit. A batch of K accepted requests was 3K round trips; it is three. The order of the
rows of one statement is kept; rows of different statements may be sent in another order than the writes asked,
which changes nothing for these: they insert new rows, or update rows committed before (the relay's marks), and no
foreign key ties the tables. A deferred statement's row count is not known (`run` returns -1); none of its callers
reads it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.util.concurrency import await_

from esi import metrics
from esi.store import schema

_NAMED = SQLiteDialect_pysqlite(paramstyle="named")
_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
_STATEMENTS = metrics.child(metrics.STORE_ROUND_TRIPS, "statement")
#: where a group commit's transaction keeps its gathered rows (`deferred`), in the connection's `info`
_PENDING = "esi_pending_rows"

Params = dict[str, Any] | Sequence[dict[str, Any]]
#: what a hot-path statement is built from: an insert or update, or a select
Sql = UpdateBase | Select[Any]


class Statement:
    """One hot-path statement: `run` executes it, `first` reads its first row as a dict (None without one)."""

    def __init__(
        self,
        statement: Sql,
        *,
        keys: Sequence[str] | None = None,
        sqlite: Sql | None = None,
        postgresql: Sql | None = None,
        deferrable: bool = False,
    ) -> None:
        self._statements = {
            "sqlite": sqlite if sqlite is not None else statement,
            "postgresql": postgresql if postgresql is not None else statement,
        }
        self._default = statement
        self._keys = list(keys) if keys is not None else None
        compiled = self._statements["sqlite"].compile(dialect=_NAMED, column_keys=self._keys)
        literals = sorted(name for name, bind in compiled.binds.items() if not bind.required)
        if literals:  # the driver gets only the caller's parameters: a value built into the statement would be lost
            raise ValueError(f"hot-path statements take every value as a named parameter, not {literals}")
        self.sqlite_sql = str(compiled)
        positional = self._statements["postgresql"].compile(dialect=_ASYNCPG, column_keys=self._keys)
        self.postgresql_sql = str(positional)
        self._order = list(positional.positiontup or ())
        #: may wait in a group commit's queue (`deferred`): an insert, or an update of rows committed before
        self.deferrable = deferrable

    def args(self, params: dict[str, Any]) -> list[Any]:
        """`params` in the order of the PostgreSQL statement's positional parameters (`postgresql_sql`)."""
        return [params[k] for k in self._order]

    def run(self, conn: Connection, params: Params) -> int:
        """Execute (many times for a list of parameter sets); returns the rows affected (-1 when not known: many
        parameter sets on PostgreSQL, or a row gathered for later in a group commit)."""
        dialect = conn.dialect.name
        if dialect == "sqlite":
            return self._sqlite(conn, params).rowcount
        if dialect != "postgresql":
            return conn.execute(self._default, params).rowcount
        pending: dict[Statement, list[dict[str, Any]]] | None = conn.info.get(_PENDING)
        if pending is not None and self.deferrable:
            rows = pending.setdefault(self, [])
            if isinstance(params, dict):
                rows.append(params)
            else:
                rows.extend(params)
            return -1
        if pending:
            flush(conn)
        if isinstance(params, dict):
            status = self._postgresql(conn, "execute", params)
            count = status.rsplit(" ", 1)[-1] if isinstance(status, str) else ""
            return int(count) if count.isdigit() else -1
        if params:
            self._postgresql(conn, "executemany", params)
        return -1

    def first(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any] | None:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            cursor = self._sqlite(conn, params)
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
            cursor.close()
            return None if row is None else dict(zip(names, row))
        if dialect != "postgresql":
            found = conn.execute(self._default, params).first()
            return None if found is None else dict(found._mapping)
        if conn.info.get(_PENDING):
            flush(conn)
        record = self._postgresql(conn, "fetchrow", params)
        return None if record is None else dict(record.items())

    def _postgresql(self, conn: Connection, method: str, params: Params) -> Any:
        """`method` of the asyncpg connection (execute, executemany, fetchrow) with this statement, in the SQLAlchemy
        transaction of `conn` (begun first if SQLAlchemy has not yet sent its BEGIN: its adapter begins lazily, at
        the first statement); asyncpg's errors raised as SQLAlchemy's, as its own execution would."""
        adapted: Any = conn.connection.dbapi_connection  # SQLAlchemy's adapter of the asyncpg connection
        driver = adapted.driver_connection
        order = self._order
        _STATEMENTS.inc()
        try:
            if adapted._transaction is None and not adapted.autocommit:
                await_(adapted._start_transaction())
            if method == "executemany":
                rows = cast(Sequence[dict[str, Any]], params)
                return await_(driver.executemany(self.postgresql_sql, [[row[k] for k in order] for row in rows]))
            args = [cast(dict[str, Any], params)[k] for k in order]
            return await_(getattr(driver, method)(self.postgresql_sql, *args))
        except DBAPIError:
            raise
        except Exception as exc:  # asyncpg's error, translated below
            _raise_translated(conn, adapted, self.postgresql_sql, params, exc)
            raise

    def _sqlite(self, conn: Connection, params: Params) -> sqlite3.Cursor:
        driver = cast(sqlite3.Connection, conn.connection.driver_connection)  # on SQLite: pysqlite's own
        try:
            if isinstance(params, dict):
                return driver.execute(self.sqlite_sql, params)
            return driver.executemany(self.sqlite_sql, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sqlite_sql, params, exc, sqlite3.Error) from exc


def _raise_translated(conn: Connection, adapted: Any, sql: str, params: Params, exc: Exception) -> None:
    """Raise asyncpg's `exc` as SQLAlchemy raises it: its adapter's DBAPI error (a unique violation becomes an
    `IntegrityError`, a lost connection invalidates the pooled connection), wrapped in SQLAlchemy's own class."""
    try:
        adapted._handle_exception(exc)
    except Exception as translated:  # noqa: BLE001 - the adapter always raises: the DBAPI error for `exc`
        lost = conn.dialect.is_disconnect(cast(Any, translated), adapted, None)
        if lost and not conn.invalidated:
            conn.invalidate(translated)
        raise DBAPIError.instance(
            sql, params, translated, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc


@contextmanager
def deferred(conn: Connection) -> Iterator[None]:
    """Within: the `deferrable` statements run on `conn` (PostgreSQL) gather their rows, sent by `flush` — by the
    next other statement, or at the end of the block. A group commit's transaction runs its writes so."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.info[_PENDING] = {}
    try:
        yield
        flush(conn)
    finally:
        conn.info.pop(_PENDING, None)


def flush(conn: Connection) -> None:
    """Send the rows gathered on `conn` (`deferred`): one pipelined `executemany` per statement, in the order the
    statements were first asked for."""
    pending: dict[Statement, list[dict[str, Any]]] | None = conn.info.get(_PENDING)
    if not pending:
        return
    gathered = list(pending.items())
    pending.clear()
    for statement, rows in gathered:
        if len(rows) == 1:
            statement._postgresql(conn, "execute", rows[0])
        else:
            statement._postgresql(conn, "executemany", rows)


def flush_before_statement(conn: Connection, *_args: Any) -> None:
    """SQLAlchemy's `before_cursor_execute`: any other statement of the transaction (an update through SQLAlchemy,
    a savepoint) sees the rows gathered before it."""
    if conn.info.get(_PENDING):
        flush(conn)


_REQUEST_COLUMNS = [c.name for c in schema.requests.columns]

INSERT_REQUEST = Statement(insert(schema.requests), keys=_REQUEST_COLUMNS, deferrable=True)
INSERT_OUTBOX = Statement(
    insert(schema.outbox),
    keys=["message_id", "request_id", "routing_key", "body", "created_at", "sent_at", "trace_context"],
    deferrable=True,
)
INSERT_KEYS = Statement(insert(schema.request_keys), keys=["key", "request_id"], deferrable=True)
#: business keys a request may already have (an answer repeating the order number): one statement, no read first
ADD_KEYS = Statement(
    insert(schema.request_keys),
    keys=["key", "request_id"],
    sqlite=sqlite_insert(schema.request_keys).on_conflict_do_nothing(),
    postgresql=pg_insert(schema.request_keys).on_conflict_do_nothing(),
    deferrable=True,
)
INSERT_INBOX = Statement(insert(schema.inbox), keys=["consumer", "message_id", "processed_at"], deferrable=True)
EVENT_COLUMNS = ["request_id", "at", "event", "service", "message_id", "causation_id", "message_type", "detail"]
INSERT_EVENTS = Statement(insert(schema.events), keys=EVENT_COLUMNS, deferrable=True)
SELECT_REQUEST = Statement(select(schema.requests).where(schema.requests.c.request_id == bindparam("rid")))
SELECT_SEEN = Statement(
    select(schema.inbox.c.message_id).where(
        schema.inbox.c.consumer == bindparam("consumer"), schema.inbox.c.message_id == bindparam("mid")
    )
)
RECORD_RESPONSE = Statement(
    update(schema.requests)
    .where(schema.requests.c.request_id == bindparam("rid"))
    .values(status=bindparam("st"), response=bindparam("resp"), error=bindparam("err"), updated_at=bindparam("at"))
    .returning(*schema.requests.columns)
)
#: a published outbox row, and its request moving from accepted to in progress (run for many rows at once)
MARK_SENT = Statement(
    update(schema.outbox).where(schema.outbox.c.message_id == bindparam("mid")).values(sent_at=bindparam("at")),
    deferrable=True,
)
MARK_IN_PROGRESS = Statement(
    update(schema.requests)
    .where(schema.requests.c.request_id == bindparam("rid"), schema.requests.c.status == bindparam("from_st"))
    .values(status=bindparam("to_st"), updated_at=bindparam("at")),
    deferrable=True,
)
