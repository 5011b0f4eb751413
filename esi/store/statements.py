"""The statements on the store's hot path: built once with SQLAlchemy Core, run on SQLite by the driver itself.

SQLAlchemy's execution of a compiled, cached statement costs several times what sqlite3 takes to run it, and a
request goes through about ten of these statements: most of the store's CPU, held under the GIL by the writer thread
while the event loop waits (figures: docs/performance.md). So on SQLite each statement is compiled once (named
parameters) and run on the driver connection of the same SQLAlchemy transaction: BEGIN, savepoints and COMMIT stay
SQLAlchemy's. On PostgreSQL (asyncpg, where the driver call is itself async) the statement runs through SQLAlchemy
as before. Driver errors are raised as SQLAlchemy's (`IntegrityError` for a duplicate), so callers see one kind of
error whichever path ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

from esi.store import schema

_NAMED = SQLiteDialect_pysqlite(paramstyle="named")

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

    def run(self, conn: Connection, params: Params) -> int:
        """Execute (many times for a list of parameter sets); returns the rows affected."""
        if conn.dialect.name == "sqlite":
            return self._sqlite(conn, params).rowcount
        return conn.execute(self._statements.get(conn.dialect.name, self._default), params).rowcount

    def first(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any] | None:
        if conn.dialect.name == "sqlite":
            cursor = self._sqlite(conn, params)
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
            cursor.close()
            return None if row is None else dict(zip(names, row))
        found = conn.execute(self._statements.get(conn.dialect.name, self._default), params).first()
        return None if found is None else dict(found._mapping)

    def _sqlite(self, conn: Connection, params: Params) -> sqlite3.Cursor:
        driver = cast(sqlite3.Connection, conn.connection.driver_connection)  # on SQLite: pysqlite's own
        try:
            if isinstance(params, dict):
                return driver.execute(self.sqlite_sql, params)
            return driver.executemany(self.sqlite_sql, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(self.sqlite_sql, params, exc, sqlite3.Error) from exc


_REQUEST_COLUMNS = [c.name for c in schema.requests.columns]

INSERT_REQUEST = Statement(insert(schema.requests), keys=_REQUEST_COLUMNS)
INSERT_OUTBOX = Statement(
    insert(schema.outbox),
    keys=["message_id", "request_id", "routing_key", "body", "created_at", "sent_at", "trace_context"],
)
INSERT_KEYS = Statement(insert(schema.request_keys), keys=["key", "request_id"])
#: business keys a request may already have (an answer repeating the order number): one statement, no read first
ADD_KEYS = Statement(
    insert(schema.request_keys),
    keys=["key", "request_id"],
    sqlite=sqlite_insert(schema.request_keys).on_conflict_do_nothing(),
    postgresql=pg_insert(schema.request_keys).on_conflict_do_nothing(),
)
INSERT_INBOX = Statement(insert(schema.inbox), keys=["consumer", "message_id", "processed_at"])
EVENT_COLUMNS = ["request_id", "at", "event", "service", "message_id", "causation_id", "message_type", "detail"]
INSERT_EVENTS = Statement(insert(schema.events), keys=EVENT_COLUMNS)
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
    update(schema.outbox).where(schema.outbox.c.message_id == bindparam("mid")).values(sent_at=bindparam("at"))
)
MARK_IN_PROGRESS = Statement(
    update(schema.requests)
    .where(schema.requests.c.request_id == bindparam("rid"), schema.requests.c.status == bindparam("from_st"))
    .values(status=bindparam("to_st"), updated_at=bindparam("at"))
)
