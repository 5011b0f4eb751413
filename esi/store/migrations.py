"""Versioned migrations, per owner: the core's (`esi.store.schema.MIGRATIONS`) and each system's own tables'
(`System.tables`), applied at start-up under one lock.

A `Migrations` value names its owner (`esi`, `crm`, an outside system's code) and maps each version to its steps:
a `Table` to create (checkfirst) or a function run on the connection. Applied versions are recorded per owner in
`esi_migrations`; a store made before owners existed kept the core's in `esi_schema_migrations`, copied over once.

Why not alembic: these steps are data a system package declares next to its tables (a dict, no script directory,
no env.py), they run inside the store's own transaction on either backend (SQLite's writer thread, asyncpg's
`run_sync`) under PostgreSQL's advisory lock so that replicas starting together migrate once, and every step is
idempotent, so a store written by any earlier version migrates without a stamp. Alembic's branches per package
would give the same with more machinery than this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, insert, inspect, select, text

#: a step: a table to create (if it is not there), or a function run on the connection
Step = Table | Callable[[Connection], None]

_meta = MetaData()
#: which versions of which owner's migrations this store has
applied = Table(
    "esi_migrations",
    _meta,
    Column("owner", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("applied_at", String(40), nullable=False),
)
#: where stores made before per-owner migrations recorded the core's versions (read once, never written)
_legacy = Table(
    "esi_schema_migrations",
    _meta,
    Column("version", Integer, primary_key=True),
    Column("applied_at", String(40), nullable=False),
)
#: PostgreSQL's advisory lock key: one migrating process at a time
_LOCK = 724301


@dataclass(frozen=True)
class Migrations:
    """One owner's migrations: version → steps, applied in order of version."""

    owner: str
    versions: Mapping[int, Sequence[Step]]


def applied_versions(conn: Connection, owner: str) -> list[int]:
    if not inspect(conn).has_table(applied.name):
        return []
    return sorted(conn.execute(select(applied.c.version).where(applied.c.owner == owner)).scalars())


def apply(conn: Connection, chosen: Iterable[Migrations]) -> None:
    """Apply the versions of `chosen` not yet applied, in one transaction (the caller's)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK})"))
    if not inspect(conn).has_table(applied.name):
        applied.create(conn)
        if inspect(conn).has_table(_legacy.name):  # a store of an esi before per-owner migrations
            rows = conn.execute(select(_legacy.c.version, _legacy.c.applied_at)).all()
            if rows:
                conn.execute(insert(applied), [{"owner": "esi", "version": v, "applied_at": at} for v, at in rows])
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    for migrations in chosen:
        done = set(applied_versions(conn, migrations.owner))
        for version in sorted(migrations.versions):
            if version in done:
                continue
            for step in migrations.versions[version]:
                if isinstance(step, Table):
                    step.create(conn, checkfirst=True)
                else:
                    step(conn)
            conn.execute(insert(applied).values(owner=migrations.owner, version=version, applied_at=now))


# --- steps ------------------------------------------------------------------------------------------------------


def add_column(table: Table, column: str) -> Callable[[Connection], None]:
    """A step adding `column` (as declared above) to an existing table, unless it is there already."""

    def step(conn: Connection) -> None:
        if column in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            return  # the table was created by this version's declaration
        ddl = table.c[column].type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {ddl}")

    return step


def widen_column(table: Table, column: str) -> Callable[[Connection], None]:
    """A step giving an existing `column` its declared (longer) VARCHAR length.

    PostgreSQL only: SQLite ignores VARCHAR lengths (a column holds text of any length whatever its declaration), so
    its tables need no change, and SQLite has no ALTER COLUMN anyway. Widening a VARCHAR on PostgreSQL changes the
    catalog only (no table rewrite); a column already as wide, from a table created by this version's declaration,
    is left alone.
    """

    def step(conn: Connection) -> None:
        if conn.dialect.name != "postgresql":
            return
        declared = cast(String, table.c[column].type)  # the columns widened here are strings
        found = {c["name"]: c["type"] for c in inspect(conn).get_columns(table.name)}[column]
        found_length: int | None = getattr(found, "length", None)
        if found_length is None or declared.length is None or found_length >= declared.length:
            return
        ddl = declared.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ALTER COLUMN {column} TYPE {ddl}")

    return step


def create_index(index: Index) -> Callable[[Connection], None]:
    """A step creating `index` unless it is there (a table created by this version's declaration has it)."""

    def step(conn: Connection) -> None:
        index.create(conn, checkfirst=True)

    return step
