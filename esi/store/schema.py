"""Tables and their versioned migrations, applied at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
)

metadata = MetaData()

requests = Table(
    "esi_requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    # system codes ("1c", "crm", ...): 8 characters until migration 4, which left room for longer ones
    # (a fourth system's)
    Column("source", String(32), nullable=False),
    Column("target", String(32), nullable=False),
    Column("message_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("response", Text),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    # the API client that sent the request (None with authentication off); added by migration 3
    Column("client_id", String(64)),
)

outbox = Table(
    "esi_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("request_id", String(128), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("sent_at", String(40)),
    # the W3C trace context of the request that wrote it, as JSON (with tracing on); added by migration 8
    Column("trace_context", Text),
    #: a relay's sweep holds the row until then (`Store.outbox_claim`): the other processes' sweeps leave it alone
    Column("claimed_until", String(40)),
    Index("ix_esi_outbox_unsent", "sent_at", "id"),
)

inbox = Table(
    "esi_inbox",
    metadata,
    Column("consumer", String(32), primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("processed_at", String(40), nullable=False),
    Index("ix_esi_inbox_processed_at", "processed_at"),
)

events = Table(
    "esi_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("at", String(40), nullable=False),
    Column("event", String(32), nullable=False),
    Column("service", String(32), nullable=False),
    Column("message_id", String(128)),
    Column("causation_id", String(128)),
    Column("message_type", String(64)),
    Column("detail", Text),
    Index("ix_esi_events_request", "request_id", "id"),
)

request_keys = Table(
    "esi_request_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("request_id", String(128), primary_key=True),
)

#: what operators did (replays, purges, pauses, client changes), with who and how many: read at GET /audit
audit = Table(
    "esi_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(255)),
    Column("count", Integer),
    Column("detail", Text),
    Index("ix_esi_audit_at", "at"),
)

#: systems an operator paused for maintenance, for every adapter replica (a row per paused system)
system_pauses = Table(
    "esi_system_pauses",
    metadata,
    Column("system", String(32), primary_key=True),
    Column("paused_at", String(40), nullable=False),
    #: when the pause lifts by itself (None: when resumed)
    Column("until", String(40)),
    Column("reason", Text),
    Column("paused_by", String(64)),
)

#: the circuit breakers' states as each adapter process last reported them (one row per system and process)
breakers = Table(
    "esi_breakers",
    metadata,
    Column("system", String(32), primary_key=True),
    Column("instance", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("since", String(40), nullable=False),
    Column("reason", Text),
    Column("updated_at", String(40), nullable=False),
)

#: the newest update applied to each order, by when its source changed it (`update_order_status`'s
#: `status_changed_at`): an older one arriving late is not applied over it
order_updates = Table(
    "esi_order_updates",
    metadata,
    #: the system and its own key of the order (`crm:<Creatio Id>`)
    Column("order_key", String(128), primary_key=True),
    #: UTC, ISO 8601 with microseconds: ordered as text
    Column("changed_at", String(40), nullable=False),
    Column("status", String(100), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

schema_migrations = Table(
    "esi_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", String(40), nullable=False),
)

def _add_column(table: Table, column: str) -> Callable[[Connection], None]:
    """A step adding `column` (as declared above) to an existing table, unless it is there already."""

    def step(conn: Connection) -> None:
        if column in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            return  # the table was created by this version's declaration
        ddl = table.c[column].type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {column} {ddl}')

    return step


def _widen_column(table: Table, column: str) -> Callable[[Connection], None]:
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


def _create_index(index: Index) -> Callable[[Connection], None]:
    """A step creating `index` unless it is there (a table created by this version's declaration has it)."""

    def step(conn: Connection) -> None:
        index.create(conn, checkfirst=True)

    return step


#: retention (esi.store.retention) finds expired requests by their creation time (never updated, so the index costs
#: the hot path one insert per request and keeps PostgreSQL's updates of a request HOT), and deletes a request's
#: business keys and sent outbox rows by its id
REQUESTS_CREATED_AT = Index("ix_esi_requests_created_at", requests.c.created_at)
KEYS_REQUEST = Index("ix_esi_request_keys_request", request_keys.c.request_id)
OUTBOX_REQUEST = Index("ix_esi_outbox_request", outbox.c.request_id)


#: version → what it does: tables to create (checkfirst) or steps to run. Applied versions are recorded.
MIGRATIONS: dict[int, list[Table | Callable[[Connection], None]]] = {
    1: [requests, outbox, inbox],
    2: [events, request_keys],
    3: [_add_column(requests, "client_id")],
    4: [_widen_column(requests, "source"), _widen_column(requests, "target")],
    5: [audit, system_pauses, breakers],
    6: [order_updates],
    7: [_create_index(REQUESTS_CREATED_AT), _create_index(KEYS_REQUEST), _create_index(OUTBOX_REQUEST)],
    8: [_add_column(outbox, "trace_context")],
    9: [_add_column(outbox, "claimed_until")],
}
