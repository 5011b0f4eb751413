"""Requests and their timeline: what 1C sent, where it stands, its business keys, every hop recorded.

The hot path of the store: accepting a request (with its outbox row and keys, in one transaction), reading one by id
(a point read on the loop's thread where the backend can), recording its answer and its retries or dead letter, and
waiting for it to settle (`esi.store.settled`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from esi import metrics
from esi.store import schema
from esi.store.cursors import keyset
from esi.store.database import Database, dumps, loads, now_iso
from esi.store.dead_letters import upsert_letters
from esi.store.records import RequestRecord, RequestStatus
from esi.store.settled import SETTLED, Settlements
from esi.store.statements import (
    ADD_KEYS,
    INSERT_EVENTS,
    INSERT_KEYS,
    INSERT_OUTBOX,
    INSERT_REQUEST,
    RECORD_RESPONSE,
    SELECT_REQUEST,
)

_FINAL = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)


class Requests:
    """The requests, their outbox row at acceptance, business keys and timeline."""

    def __init__(self, db: Database) -> None:
        self._db = db
        #: requests waited for in this process (`wait_settled`); told when this store settles one
        self.settlements = Settlements(self._settled_among)
        #: what the database announces of the requests any process settled (PostgreSQL); None on SQLite
        self._announced = db.notifications(schema.SETTLED_CHANNEL, self.settlements.notify)

    async def accept(
        self,
        *,
        request_id: str,
        source: str,
        target: str,
        message_type: str,
        payload_hash: str,
        message_id: str,
        routing_key: str,
        body: bytes,
        keys: list[str] | None = None,
        client_id: str | None = None,
        trace_context: str | None = None,
    ) -> tuple[RequestRecord, bool, str]:
        """Record a new request and its outgoing message (the outbox) in one transaction.

        Returns the request, whether it was created now, and the payload hash it was first accepted with.
        """
        now = now_iso()
        unique_keys = sorted({k[:255] for k in keys or () if k})

        def write(conn: Connection) -> None:
            INSERT_REQUEST.run(
                conn,
                {
                    "request_id": request_id,
                    "source": source,
                    "target": target,
                    "message_type": message_type,
                    "status": RequestStatus.ACCEPTED.value,
                    "payload_hash": payload_hash,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "client_id": client_id,
                    "response": None,
                    "error": None,
                    "last_error": None,
                },
            )
            INSERT_OUTBOX.run(
                conn,
                {
                    "message_id": message_id,
                    "request_id": request_id,
                    "routing_key": routing_key,
                    "body": body,
                    "created_at": now,
                    "sent_at": None,
                    "trace_context": trace_context,
                },
            )
            if unique_keys:
                INSERT_KEYS.run(conn, [{"key": k, "request_id": request_id} for k in unique_keys])

        try:
            await self._db.write(write)
        except IntegrityError:
            existing = await self._get_row(request_id)
            if existing is None:  # pragma: no cover - a concurrent delete; nothing deletes requests
                raise
            return as_record(existing), False, existing["payload_hash"]
        record = RequestRecord(
            request_id=request_id,
            status=RequestStatus.ACCEPTED,
            target=target,
            message_type=message_type,
            created_at=now,
            updated_at=now,
            client_id=client_id,
        )
        return record, True, payload_hash

    async def _get_row(self, request_id: str) -> Any:
        return await self._db.lookup(SELECT_REQUEST, {"rid": request_id})

    async def get(self, request_id: str) -> RequestRecord | None:
        """The request `request_id`, None if there is none."""
        row = await self._get_row(request_id)
        return None if row is None else as_record(row)

    async def wait_settled(
        self,
        request_id: str,
        timeout: float,  # noqa: ASYNC109 - the caller's own deadline, as asyncio's wait_for takes one
        *,
        recheck: float = 1.0,
        check: Callable[[RequestRecord | None], object] | None = None,
        known: RequestRecord | None = None,
    ) -> RequestRecord | None:
        """The request once it is completed, failed or dead-lettered, or as it stands after `timeout` seconds.

        Woken at once when this process settles it; by a settlement made by another process (another replica, an
        adapter that dead-lettered it) within milliseconds on PostgreSQL (the database announces it), else within
        `recheck` seconds by one query for every request waited on. `check` sees the first read before any waiting
        (the API's permission check: it raises to refuse). `known` is the request as the caller has just read or
        written it, without awaiting since: it stands in for the first read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.settlements.watch(request_id) as waiter:
            if self._announced is not None and not self._announced.up:
                await self._announced.ensure()  # listening before the read: an announcement after it is heard
            record = known if known is not None else await self.get(request_id)
            if check is not None:
                check(record)
            while True:
                remaining = deadline - loop.time()
                if record is None or record.status in SETTLED or remaining <= 0 or self.settlements.closed:
                    return record
                self.settlements.recheck_every(recheck)
                try:
                    async with asyncio.timeout(remaining):
                        await waiter.event.wait()
                except TimeoutError:
                    pass
                waiter.event.clear()
                settled, waiter.row = waiter.row, None
                # settled by this process: its write returned the whole row, no read needed
                record = as_record(settled) if settled is not None else await self.get(request_id)

    async def _settled_among(self, request_ids: list[str]) -> list[str]:
        r = schema.requests
        statement = select(r.c.request_id).where(
            r.c.request_id.in_(request_ids), r.c.status.in_([s.value for s in SETTLED])
        )
        return await self._db.read(lambda conn: list(conn.execute(statement).scalars()))

    async def record_response(
        self,
        request_id: str,
        *,
        response: dict[str, Any] | None,
        error: dict[str, Any] | None,
        keys: list[str] | None = None,
    ) -> bool:
        """Store the final answer of a request (and business keys it brings); False for an unknown request id."""
        status = RequestStatus.FAILED if error else RequestStatus.COMPLETED

        def write(conn: Connection) -> dict[str, Any] | None:
            # RETURNING: the row as this write left it, for the long polls waiting on it in this process
            row = RECORD_RESPONSE.first(
                conn,
                {"rid": request_id, "st": status.value, "resp": dumps(response), "err": dumps(error), "at": now_iso()},
            )
            if row is not None and keys:
                _add_keys(conn, request_id, keys)
            return row

        row = await self._db.write(write)
        if row is None:
            return False
        metrics.request_settled(
            target=row["target"], message_type=row["message_type"], status=status.value, created_at=row["created_at"]
        )
        self.settlements.notify(request_id, row)
        return True

    async def retrying(self, request_id: str, *, attempt: int, error: str) -> None:
        """A hop of the request failed and waits for its next attempt."""
        await self._db.execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.IN_PROGRESS.value, attempts=attempt, last_error=error, updated_at=now_iso())
        )

    async def waiting(self, request_id: str, *, error: str) -> None:
        """A hop of the request waits for its system to come back (an open breaker, a pause): no try spent."""
        await self._db.execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.IN_PROGRESS.value, last_error=error, updated_at=now_iso())
        )

    async def dead_lettered(
        self,
        request_id: str | None,
        *,
        error: str,
        queue: str,
        letter: Mapping[str, Any] | None = None,
        settle: bool = True,
    ) -> None:
        """A hop of the request was parked in a dead-letter queue: its row in the dead-letter index (`letter`, see
        `esi.store.dead_letters.index_row`) and, with `settle`, the request's state, in one transaction."""
        statement = (
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(
                status=RequestStatus.DEAD_LETTERED.value,
                last_error=error,
                error=dumps({"code": "dead_lettered", "message": error, "queue": queue}),
                updated_at=now_iso(),
            )
        )

        def write(conn: Connection) -> None:
            if letter is not None:
                upsert_letters(conn, [letter], indexed_by="consumer")
            if settle and request_id is not None:
                conn.execute(statement)

        await self._db.write(write)
        if settle and request_id is not None:
            self.settlements.notify(request_id)

    # --- timeline and business keys ----------------------------------------------------------------------------

    async def add_events(self, rows: list[dict[str, Any]]) -> None:
        """Write timeline events in one statement: rows with every key of `EVENT_COLUMNS` (`EventRecorder` builds
        them so), written as they are."""
        if rows:
            await self._db.write(lambda conn: INSERT_EVENTS.run(conn, rows))

    async def timeline(self, request_id: str) -> list[dict[str, Any]]:
        """Every recorded hop of a request, oldest first."""
        e = schema.events

        def read(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(select(e).where(e.c.request_id == request_id).order_by(e.c.at, e.c.id)).all()
            return [
                {
                    "at": r.at,
                    "event": r.event,
                    "service": r.service,
                    "message_id": r.message_id,
                    "causation_id": r.causation_id,
                    "message_type": r.message_type,
                    **({"detail": loads(r.detail)} if r.detail else {}),
                }
                for r in rows
            ]

        return await self._db.read(read)

    async def find_by_key(
        self, key: str, limit: int = 100, *, client_id: str | None = None, after: str | None = None
    ) -> list[RequestRecord]:
        """Requests carrying a business key, newest first; only `client_id`'s when given; the `limit` after the
        cursor `after` (`esi.store.cursors`: a page by keyset)."""
        k, r = schema.request_keys, schema.requests
        query = select(r).join(k, k.c.request_id == r.c.request_id).where(k.c.key == key)
        if client_id is not None:
            query = query.where(r.c.client_id == client_id)
        query = keyset(query, after=after).limit(limit)
        rows = await self._db.read(lambda conn: [dict(row._mapping) for row in conn.execute(query).all()])
        return [as_record(row) for row in rows]


def _add_keys(conn: Connection, request_id: str, keys: list[str]) -> None:
    wanted = sorted({key[:255] for key in keys if key})
    if wanted:
        ADD_KEYS.run(conn, [{"key": key, "request_id": request_id} for key in wanted])


def as_record(row: Any) -> RequestRecord:
    """A request's row as the record the API answers with."""
    return RequestRecord(
        request_id=row["request_id"],
        status=RequestStatus(row["status"]),
        target=row["target"],
        message_type=row["message_type"],
        response=loads(row["response"]),
        error=loads(row["error"]),
        attempts=row["attempts"] or 0,
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        client_id=row["client_id"],
    )
