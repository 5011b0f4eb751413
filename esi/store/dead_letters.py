"""The index of dead letters: one row per message parked in a dead-letter queue, with what an operator filters on.

The consumer loop writes a row in the same transaction as the request's state when it dead-letters a message
(`Requests.dead_lettered`); the sweep (`esi.dlq.sweep`) indexes messages that reached a DLQ some other way (a raw
poison publish, an esi before the index). Listing, counting, grouping and filtering read this table, never the
queues; a message's body is read from its queue only when it is opened, replayed or exported.

Pages are keyset pages (`id` descending, newest indexed first): a cursor is the last id of the page before, so a
page never repeats or skips a row while others are added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from esi.store import schema
from esi.store.database import Database, now_iso

__all__ = ["PARKED", "DeadLetterIndex", "IndexFilter", "IndexedLetter", "index_row", "upsert_letters"]

PARKED = "parked"
#: rows of one INSERT (17 parameters each)
UPSERT_CHUNK = 500
#: the columns a writer gives (`index_row` builds them); the rest are the index's own
_ENTRY_COLUMNS = (
    "letter_id",
    "queue",
    "system",
    "message_type",
    "reason_class",
    "reason_code",
    "reason",
    "keys",
    "request_id",
    "routing_key",
    "attempts",
    "dead_lettered_at",
    "size",
)


def index_row(
    *,
    letter_id: str,
    queue: str,
    system: str,
    message_type: str | None,
    reason_class: str | None,
    reason_code: str | None,
    reason: str,
    keys: Iterable[str] = (),
    request_id: str | None,
    routing_key: str,
    attempts: int,
    dead_lettered_at: str | None,
    size: int,
) -> dict[str, Any]:
    """A row of the index as writers give it (the consumer loop, the sweep, an import); `keys` a list, or the
    index's own `|key1|key2|` (a row built here before)."""
    if isinstance(keys, str):
        keys = keys.split("|")
    unique = [k[:255] for k in dict.fromkeys(keys) if k]
    return {
        "letter_id": letter_id[:128],
        "queue": queue,
        "system": system,
        "message_type": (message_type or "unknown")[:64],
        "reason_class": (reason_class or "broker")[:64],
        "reason_code": (reason_code or reason_class or "broker")[:64],
        "reason": reason[:2000],
        "keys": f"|{'|'.join(unique)}|" if unique else "",
        "request_id": request_id,
        "routing_key": routing_key[:255],
        "attempts": attempts,
        "dead_lettered_at": dead_lettered_at or now_iso(),
        "size": size,
    }


def upsert_letters(conn: Connection, rows: Sequence[Mapping[str, Any]], *, indexed_by: str) -> None:
    """Index `rows` as parked, in the caller's transaction: a letter indexed before (replayed, then dead-lettered
    again) is parked again with its new story."""
    if not rows:
        return
    d = schema.dead_letters
    values = [
        {**index_row(**row), "state": PARKED, "job_id": None, "settled_at": None, "indexed_by": indexed_by}
        for row in rows
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for start in range(0, len(values), UPSERT_CHUNK):  # PostgreSQL takes 32,767 parameters a statement at most
        statement = dialect.insert(d).values(values[start : start + UPSERT_CHUNK])
        statement = statement.on_conflict_do_update(
            index_elements=[d.c.queue, d.c.letter_id],
            set_={
                c: statement.excluded[c] for c in (*_ENTRY_COLUMNS[2:], "state", "job_id", "settled_at", "indexed_by")
            },
        )
        conn.execute(statement)


@dataclass(frozen=True)
class IndexedLetter:
    """One row of the index."""

    id: int
    letter_id: str
    queue: str
    system: str
    message_type: str
    reason_class: str
    reason_code: str
    reason: str
    keys: tuple[str, ...]
    request_id: str | None
    routing_key: str
    attempts: int
    dead_lettered_at: str
    size: int
    state: str
    job_id: int | None
    indexed_by: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> IndexedLetter:
        return cls(
            **{
                **{k: row[k] for k in cls.__dataclass_fields__ if k != "keys"},
                "keys": tuple(k for k in (row["keys"] or "").split("|") if k),
            }
        )

    @property
    def age_s(self) -> float | None:
        try:
            when = datetime.fromisoformat(self.dead_lettered_at)
        except ValueError:
            return None
        return (datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()

    def summary(self) -> dict[str, Any]:
        age = self.age_s
        return {
            "id": self.letter_id,
            "queue": self.queue,
            "system": self.system,
            "message_type": self.message_type,
            "routing_key": self.routing_key,
            "reason": self.reason,
            "error_class": self.reason_class,
            "code": self.reason_code,
            "keys": list(self.keys),
            "request_id": self.request_id,
            "attempts": self.attempts,
            "size": self.size,
            "dead_lettered_at": self.dead_lettered_at,
            "age_s": round(age, 1) if age is not None else None,
            "state": self.state,
            "cursor": self.id,
        }


@dataclass(frozen=True)
class IndexFilter:
    """What a listing, a count or a job chooses: every field given must match (None: any)."""

    system: str | None = None
    queue: str | None = None
    message_type: str | None = None
    #: text the reason, its class or its code contains (case-insensitive)
    reason: str | None = None
    #: the reason's code exactly (a group of the console)
    code: str | None = None
    #: a business key the message carries
    key: str | None = None
    #: ISO times bounding `dead_lettered_at`
    since: str | None = None
    until: str | None = None
    ids: tuple[str, ...] = ()
    state: str | None = PARKED
    job_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def apply(self, query: Select[Any]) -> Select[Any]:
        d = schema.dead_letters
        for column, value in (
            (d.c.state, self.state),
            (d.c.system, self.system),
            (d.c.queue, self.queue),
            (d.c.message_type, self.message_type),
            (d.c.reason_code, self.code),
            (d.c.job_id, self.job_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if self.reason:
            pattern = f"%{_like(self.reason.lower())}%"
            query = query.where(
                func.lower(d.c.reason).like(pattern, escape="\\")
                | func.lower(d.c.reason_class).like(pattern, escape="\\")
                | func.lower(d.c.reason_code).like(pattern, escape="\\")
            )
        if self.key:
            query = query.where(d.c["keys"].like(f"%|{_like(self.key)}|%", escape="\\"))
        if self.since:
            query = query.where(d.c.dead_lettered_at >= self.since)
        if self.until:
            query = query.where(d.c.dead_lettered_at < self.until)
        if self.ids:
            query = query.where(d.c.letter_id.in_(self.ids))
        return query

    def as_dict(self) -> dict[str, Any]:
        """The filter as a job keeps it (what was given, nothing else)."""
        out = {
            name: getattr(self, name)
            for name in ("system", "queue", "message_type", "reason", "code", "key", "since", "until")
            if getattr(self, name) is not None
        }
        if self.ids:
            out["ids"] = list(self.ids)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexFilter:
        known = {"system", "queue", "message_type", "reason", "code", "key", "since", "until"}
        return cls(**{k: v for k, v in data.items() if k in known}, ids=tuple(data.get("ids") or ()))


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class DeadLetterIndex:
    """Reads and writes of the index (the consumer's write is `Requests.dead_lettered`, in its transaction)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, rows: Sequence[Mapping[str, Any]], *, indexed_by: str) -> None:
        """Index `rows` as parked (the sweep, an import)."""
        if rows:
            await self._db.write(lambda conn: upsert_letters(conn, rows, indexed_by=indexed_by))

    async def page(
        self, filters: IndexFilter, *, after: int | None = None, limit: int = 50
    ) -> tuple[list[IndexedLetter], int | None]:
        """A page of matching letters, newest indexed first, after the cursor `after` (the `cursor` of the last
        row of the page before); the cursor of the next page (None: this was the last)."""
        d = schema.dead_letters
        query = filters.apply(select(d))
        if after is not None:
            query = query.where(d.c.id < after)
        query = query.order_by(d.c.id.desc()).limit(limit + 1)
        rows = await self._db.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        letters = [IndexedLetter.of(r) for r in rows[:limit]]
        return letters, (letters[-1].id if len(rows) > limit and letters else None)

    async def count(self, filters: IndexFilter) -> int:
        query = filters.apply(select(func.count()).select_from(schema.dead_letters))
        return int(await self._db.read(lambda conn: conn.execute(query).scalar() or 0))

    async def groups(self, filters: IndexFilter) -> list[dict[str, Any]]:
        """Counts by queue and reason code, the biggest first: `queue, system, code, count, latest, example`."""
        d = schema.dead_letters
        query = filters.apply(
            select(
                d.c.queue,
                d.c.system,
                d.c.reason_code,
                func.count(),
                func.max(d.c.dead_lettered_at),
                func.max(d.c.reason),
            )
        ).group_by(d.c.queue, d.c.system, d.c.reason_code)
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        groups = [
            {"queue": r[0], "system": r[1], "code": r[2], "count": int(r[3]), "latest": r[4], "example": r[5]}
            for r in rows
        ]
        return sorted(groups, key=lambda g: (-g["count"], g["queue"], g["code"]))

    async def counts_by_queue(self) -> dict[str, int]:
        d = schema.dead_letters
        query = select(d.c.queue, func.count()).where(d.c.state == PARKED).group_by(d.c.queue)
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return {r[0]: int(r[1]) for r in rows}

    async def get(self, letter_id: str, *, queue: str | None = None) -> IndexedLetter | None:
        """The letter `letter_id` (a parked one before any other state)."""
        d = schema.dead_letters
        query = select(d).where(d.c.letter_id == letter_id)
        if queue is not None:
            query = query.where(d.c.queue == queue)
        query = query.order_by((d.c.state == PARKED).desc(), d.c.id.desc()).limit(1)
        row = await self._db.read(lambda conn: conn.execute(query).first())
        return IndexedLetter.of(dict(row._mapping)) if row is not None else None

    async def states(self, queue: str, letter_ids: Sequence[str]) -> dict[str, IndexedLetter]:
        """The rows of `letter_ids` in `queue`, by letter id (those the index has)."""
        d = schema.dead_letters
        query = select(d).where(d.c.queue == queue, d.c.letter_id.in_(list(letter_ids)))
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return {r._mapping["letter_id"]: IndexedLetter.of(dict(r._mapping)) for r in rows}

    async def prune(self, older_than: str) -> int:
        """Forget the rows of letters that left their queue (replayed, purged, edited, missing) before `older_than`
        (ISO time); parked ones stay whatever their age. How many."""
        d = schema.dead_letters
        statement = d.delete().where(d.c.state != PARKED, d.c.settled_at < older_than)
        return int(await self._db.write(lambda conn: conn.execute(statement).rowcount))

    async def settle_letters(self, letters: Sequence[tuple[str, str]], state: str) -> None:
        """Letters `(queue, letter_id)` left their queue outside a job (the synchronous `POST /dlq/replay`)."""
        d = schema.dead_letters

        def write(conn: Connection) -> None:
            for queue, letter_id in letters:
                conn.execute(
                    update(d)
                    .where(d.c.queue == queue, d.c.letter_id == letter_id, d.c.state == PARKED)
                    .values(state=state, settled_at=now_iso(), job_id=None)
                )

        if letters:
            await self._db.write(write)

    async def settle(self, ids: Sequence[int], state: str) -> None:
        """Letters left their queue outside a job (a single replay, an edit): `state` says how."""
        d = schema.dead_letters
        if ids:
            await self._db.execute(
                update(d).where(d.c.id.in_(list(ids))).values(state=state, settled_at=now_iso(), job_id=None)
            )
