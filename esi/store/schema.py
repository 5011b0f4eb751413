"""The core's tables and their versioned migrations (`esi.store.migrations` applies them at start-up).

A system's own tables are declared in its package (`esi.systems.<code>.tables`) with migrations of their own.
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Integer, LargeBinary, MetaData, String, Table, Text

from esi.store.migrations import Migrations, add_column, create_index, widen_column
from esi.store.settled import SETTLED

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


#: the events esi took (from a webhook or a poller), one row per change of a record: the event id derives from
#: (source, type, record id, version), so a repeat of the same change finds its row and publishes nothing
event_log = Table(
    "esi_event_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("message_id", String(128), nullable=False),
    Column("source", String(32), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("record_id", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    #: the business keys, space-separated (searched by the console)
    Column("keys", Text),
    #: who handed it over: webhook, or esi's own code (a poller)
    Column("via", String(32), nullable=False),
    Column("received_at", String(40), nullable=False),
    Index("ix_esi_event_log_received", "received_at"),
)

#: per subscriber, the version of each record it was last given: an older change arriving later is superseded
event_versions = Table(
    "esi_event_versions",
    metadata,
    Column("subscriber", String(32), primary_key=True),
    Column("stream", String(160), primary_key=True),
    Column("record_id", String(255), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("at", String(40), nullable=False),
)

#: the pull feed: what a subscriber reading by cursor (1C's scheduled job) has not acknowledged yet, in order
feed = Table(
    "esi_feed",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("subscriber", String(32), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("message_type", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("record_key", String(255)),
    Column("body", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    Index("ux_esi_feed_message", "subscriber", "message_id", unique=True),
    Index("ix_esi_feed_read", "subscriber", "seq"),
)

#: how far each feed's reader has acknowledged
feed_cursors = Table(
    "esi_feed_cursors",
    metadata,
    Column("subscriber", String(32), primary_key=True),
    Column("acked", Integer, nullable=False),
    Column("acked_at", String(40), nullable=False),
)

#: the index of dead letters (esi.store.dead_letters): what an operator filters on, written with the request's state
#: when esi dead-letters a message (or by the sweep, for one that reached a DLQ some other way); the message itself
#: stays in its dead-letter queue. `state`: parked (in its DLQ), replayed, purged, missing (not found by a job)
dead_letters = Table(
    "esi_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: the message's id (its AMQP message-id, else a hash of its body): what `esi dlq show ID` names
    Column("letter_id", String(128), nullable=False),
    Column("queue", String(128), nullable=False),
    Column("system", String(32), nullable=False),
    Column("message_type", String(64), nullable=False),
    Column("reason_class", String(64), nullable=False),
    Column("reason_code", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    #: the business keys, as `|key1|key2|` (a filter looks for `|key|`)
    Column("keys", Text, nullable=False),
    Column("request_id", String(128)),
    Column("routing_key", String(255), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_lettered_at", String(40), nullable=False),
    Column("size", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    #: the replay or purge job that has it (esi_dlq_jobs.id), once one chose it
    Column("job_id", Integer),
    Column("settled_at", String(40)),
    #: consumer, sweep or import
    Column("indexed_by", String(16), nullable=False),
    Index("ux_esi_dead_letters_letter", "queue", "letter_id", unique=True),
    Index("ix_esi_dead_letters_state", "state", "id"),
    Index("ix_esi_dead_letters_system", "state", "system", "id"),
    #: a group of the console (queue and code), newest first, without scanning the others
    Index("ix_esi_dead_letters_group", "state", "queue", "reason_code", "id"),
    Index("ix_esi_dead_letters_job", "job_id", "state"),
    Index("ix_esi_dead_letters_request", "request_id"),
)

#: replay and purge jobs (esi.store.dlq_jobs): their filter, progress and the lease of the process running them
dlq_jobs = Table(
    "esi_dlq_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("filter", Text, nullable=False),
    #: pending, running, done, cancelled
    Column("state", String(16), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("started_at", String(40)),
    Column("finished_at", String(40)),
    Column("updated_at", String(40), nullable=False),
    #: messages per second, at most (None: as fast as they go)
    Column("rate", Integer),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("cancel_requested", Integer, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", String(40)),
    Column("error", Text),
    Index("ix_esi_dlq_jobs_state", "state", "id"),
)


#: retention (esi.store.retention) finds expired requests by their creation time (never updated, so the index costs
#: the hot path one insert per request and keeps PostgreSQL's updates of a request HOT), and deletes a request's
#: business keys and sent outbox rows by its id
REQUESTS_CREATED_AT = Index("ix_esi_requests_created_at", requests.c.created_at)
KEYS_REQUEST = Index("ix_esi_request_keys_request", request_keys.c.request_id)
OUTBOX_REQUEST = Index("ix_esi_outbox_request", outbox.c.request_id)
#: the console's lists filtered by status or by message type, newest first (`esi.store.queries`): without them a
#: filter that few requests match (a status nothing is in, a type seldom sent) reads the whole history backwards by
#: `created_at` to fill a page. Ordered by `created_at` inside each value, so a page (and a keyset's next page) is a
#: range of the index. The status one costs an entry per change of status (and on PostgreSQL makes such an update
#: no longer HOT): measured in docs/performance.md ("History")
REQUESTS_STATUS = Index("ix_esi_requests_status", requests.c.status, requests.c.created_at)
REQUESTS_TYPE = Index("ix_esi_requests_type", requests.c.message_type, requests.c.created_at)


#: PostgreSQL: the channel on which the database announces, at commit, each request that reached a settled state (its
#: id as the payload), whoever wrote it; the API replicas listen (`esi.store.requests`) and wake their waiters
SETTLED_CHANNEL = "esi_settled"


def _announce_settlements(conn: Connection) -> None:
    """PostgreSQL only: a trigger `NOTIFY`ing `SETTLED_CHANNEL` when a request's status becomes completed, failed or
    dead-lettered. In the database, not in the code that writes: every path that settles a request (the answer, an
    adapter's dead letter, an operator's action) is announced, at no extra round trip."""
    if conn.dialect.name != "postgresql":
        return
    settled = ", ".join(f"'{status.value}'" for status in SETTLED)
    conn.exec_driver_sql(
        "CREATE OR REPLACE FUNCTION esi_announce_settled() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_notify('{SETTLED_CHANNEL}', NEW.request_id); RETURN NULL; END $$"
    )
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS esi_requests_settled ON {requests.name}")
    conn.exec_driver_sql(
        f"CREATE TRIGGER esi_requests_settled AFTER UPDATE OF status ON {requests.name} FOR EACH ROW "
        f"WHEN (NEW.status IN ({settled}) AND OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION esi_announce_settled()"
    )


#: the core's migrations: version → what it does (tables to create, checkfirst, or steps to run)
MIGRATIONS = Migrations(
    "esi",
    {
        1: [requests, outbox, inbox],
        2: [events, request_keys],
        3: [add_column(requests, "client_id")],
        4: [widen_column(requests, "source"), widen_column(requests, "target")],
        5: [audit, system_pauses, breakers],
        # version 6 created the CRM's order-update guard, which is the CRM's own table now (esi.systems.crm.tables)
        6: [],
        7: [create_index(REQUESTS_CREATED_AT), create_index(KEYS_REQUEST), create_index(OUTBOX_REQUEST)],
        8: [add_column(outbox, "trace_context")],
        9: [add_column(outbox, "claimed_until")],
        10: [event_log, event_versions, feed, feed_cursors],
        11: [_announce_settlements],
        12: [dead_letters, dlq_jobs],
        13: [create_index(REQUESTS_STATUS), create_index(REQUESTS_TYPE)],
    },
)
