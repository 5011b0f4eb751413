"""The store: one database (SQLite by default, PostgreSQL by URL) and a small repository per table family.

    requests   requests with their business keys and timeline (the hot path)
    outbox     messages committed with their request, for the relay (the bus's `OutboxStore` port)
    inbox      the messages each consumer handled (the bus's `Inbox` port)
    pauses     maintenance pauses and the circuit breakers' reports
    audit      what operators did
    queries    what the operator console searches and counts
    event_log  the events esi took (deduplicated by record and version), and what each subscriber was given
    feed       the pull feed of subscribers that read by cursor (1C's scheduled job)
    dead_letters   the index of dead letters (what is parked in the DLQs, to filter and count)
    dlq_jobs   replay and purge jobs, their progress and lease

A system's own tables live in its package and reach the same database through `Store.database`.
"""

from __future__ import annotations

from collections.abc import Iterable

from esi.store import schema
from esi.store.audit import Audit
from esi.store.database import Database
from esi.store.dead_letters import DeadLetterIndex
from esi.store.dlq_jobs import Jobs
from esi.store.event_log import EventLog
from esi.store.feed import Feed
from esi.store.inbox import Inbox
from esi.store.migrations import Migrations
from esi.store.outbox import Outbox
from esi.store.pauses import Pauses
from esi.store.queries import Queries
from esi.store.records import RequestRecord, RequestStatus
from esi.store.requests import Requests

__all__ = ["Database", "Migrations", "RequestRecord", "RequestStatus", "Store"]


class Store:
    """The repositories over one database; an async context manager."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.requests = Requests(database)
        self.outbox = Outbox(database)
        self.inbox = Inbox(database)
        self.pauses = Pauses(database)
        self.audit = Audit(database)
        self.queries = Queries(database)
        self.event_log = EventLog(database)
        self.feed = Feed(database)
        self.dead_letters = DeadLetterIndex(database)
        self.dlq_jobs = Jobs(database)

    @classmethod
    async def open(cls, url: str, *, durable_commits: bool = True, migrations: Iterable[Migrations] = ()) -> Store:
        """Open the store at `url` and apply the core's migrations and `migrations` (the systems' own tables)
        not yet applied. `durable_commits`: see `Database.open`."""
        database = Database.open(url, durable_commits=durable_commits)
        try:
            await database.migrate([schema.MIGRATIONS, *migrations])
        except BaseException:
            await database.aclose()
            raise
        return cls(database)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the writes under way and close the database."""
        await self.database.aclose()

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        await self.database.ping()
