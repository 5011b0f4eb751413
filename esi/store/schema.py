"""Tables and their versioned migrations, applied at start-up."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

requests = Table(
    "esi_requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("source", String(8), nullable=False),
    Column("target", String(8), nullable=False),
    Column("message_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("response", Text),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
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

schema_migrations = Table(
    "esi_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", String(40), nullable=False),
)

#: version → tables it creates. A later version adds its own entry; applied versions are recorded.
MIGRATIONS: dict[int, list[Table]] = {
    1: [requests, outbox, inbox],
    2: [events, request_keys],
}
