"""The store's operations: requests, their outbox and business keys, the inbox, timelines, migrations.

SQLite (WAL, safe for several processes on one host) is the default; PostgreSQL (asyncpg) for several hosts. Plain
URLs are accepted: `sqlite:///var/esi.db`, `postgresql://user@host:5432/db`.

Every operation is a plain function over a SQLAlchemy `Connection`, handed to a backend (`esi.store.backends`: group
commits, the SQLite threads, asyncpg) that runs it; the statements on the hot path are built once
(`esi.store.statements`) and run on SQLite by the driver itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Table, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from esi import metrics
from esi.store import schema
from esi.store.backends import Backend, PointRow, open_backend
from esi.store.records import (
    AuditEntry,
    BreakerReport,
    OrderClaim,
    OutboxRow,
    RequestRecord,
    RequestStatus,
    SystemPause,
)
from esi.store.settled import SETTLED, Settlements
from esi.store.statements import (
    ADD_KEYS,
    INSERT_EVENTS,
    INSERT_INBOX,
    INSERT_KEYS,
    INSERT_OUTBOX,
    INSERT_REQUEST,
    MARK_IN_PROGRESS,
    MARK_SENT,
    RECORD_RESPONSE,
    SELECT_REQUEST,
    SELECT_SEEN,
    Statement,
)

log = logging.getLogger(__name__)

_FINAL = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)


def now_iso() -> str:
    """The time now as the store keeps times: ISO 8601, UTC, microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


# --- the store --------------------------------------------------------------------------------------------------------

class Store:
    """The operations esi needs; an async context manager."""

    def __init__(self, backend: Backend, *, is_sqlite: bool) -> None:
        self._backend = backend
        self.is_sqlite = is_sqlite
        #: requests waited for in this process (`wait_settled`); told when this store settles one
        self.settlements = Settlements(self._settled_among)

    @classmethod
    async def open(cls, url: str, *, durable_commits: bool = True) -> Store:
        """Open (and migrate) the store at `url`.

        `durable_commits=False` lets SQLite skip the fsync at each commit (WAL with synchronous=NORMAL: safe against
        a crash of the process, not of the machine). Adapters use it: all they commit is their inbox, and an inbox
        entry lost in a power cut only means a redelivered message is handled again, which the external systems'
        idempotency keys make harmless. The 1C side keeps full durability: its commits are what 1C is told.
        """
        backend = open_backend(url, durable_commits=durable_commits)
        store = cls(backend, is_sqlite=backend.dialect == "sqlite")
        await store.migrate()
        return store

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the writes under way and close the backend."""
        await self._backend.aclose()

    async def write_alone(self, op: Callable[[Connection], Any]) -> Any:
        """Run `op` in a short transaction of its own, outside the group commits (retention's batches)."""
        return await self._backend.write_alone(op)

    async def _execute(self, statement: Any, parameters: Any = None) -> None:
        await self._backend.write(lambda conn: conn.execute(statement, parameters) and None)

    # --- schema -------------------------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Apply the migrations not yet applied (safe when several services start at once)."""
        for attempt in range(10):
            try:
                await self._backend.write_alone(self._migrate_once)
                return
            except (IntegrityError, OperationalError, ProgrammingError) as exc:
                # another process migrated the same store at the same moment: look again
                if attempt == 9:
                    raise
                log.info("store migration raced with another process (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.1 * (attempt + 1))

    def _migrate_once(self, conn: Connection) -> None:
        if not self.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(724301)"))
        schema.schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
        for version in sorted(schema.MIGRATIONS):
            if version in done:
                continue
            for step in schema.MIGRATIONS[version]:
                if isinstance(step, Table):
                    step.create(conn, checkfirst=True)
                else:
                    step(conn)
            conn.execute(insert(schema.schema_migrations).values(version=version, applied_at=now_iso()))
            log.info("store migrated to version %d", version)

    async def applied_migrations(self) -> list[int]:
        """The schema versions applied to this store, in order."""
        return await self._backend.read(
            lambda conn: sorted(conn.execute(select(schema.schema_migrations.c.version)).scalars()))

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        await self._backend.read(lambda conn: conn.execute(select(1)).scalar())

    # --- requests -----------------------------------------------------------------------------------------------

    async def accept(
        self, *, request_id: str, source: str, target: str, message_type: str, payload_hash: str,
        message_id: str, routing_key: str, body: bytes, keys: list[str] | None = None, client_id: str | None = None,
        trace_context: str | None = None,
    ) -> tuple[RequestRecord, bool, str]:
        """Record a new request and its outgoing message (the outbox) in one transaction.

        Returns the request, whether it was created now, and the payload hash it was first accepted with.
        """
        now = now_iso()
        unique_keys = sorted({k[:255] for k in keys or () if k})

        def write(conn: Connection) -> None:
            INSERT_REQUEST.run(conn, {
                "request_id": request_id, "source": source, "target": target, "message_type": message_type,
                "status": RequestStatus.ACCEPTED.value, "payload_hash": payload_hash, "attempts": 0,
                "created_at": now, "updated_at": now, "client_id": client_id, "response": None, "error": None,
                "last_error": None,
            })
            INSERT_OUTBOX.run(conn, {"message_id": message_id, "request_id": request_id, "routing_key": routing_key,
                                     "body": body, "created_at": now, "sent_at": None,
                                     "trace_context": trace_context})
            if unique_keys:
                INSERT_KEYS.run(conn, [{"key": k, "request_id": request_id} for k in unique_keys])

        try:
            await self._backend.write(write)
        except IntegrityError:
            existing = await self._get_row(request_id)
            if existing is None:  # pragma: no cover - a concurrent delete; nothing deletes requests
                raise
            return _record(existing), False, existing["payload_hash"]
        record = RequestRecord(request_id=request_id, status=RequestStatus.ACCEPTED, target=target,
                               message_type=message_type, created_at=now, updated_at=now, client_id=client_id)
        return record, True, payload_hash

    async def _get_row(self, request_id: str) -> Any:
        params = {"rid": request_id}
        found = self._point_read(SELECT_REQUEST, params)
        if found is not None:
            names, row = found
            return None if row is None else dict(zip(names, row))
        return await self._backend.read(lambda conn: SELECT_REQUEST.first(conn, params))

    def _point_read(self, statement: Statement, params: dict[str, Any]) -> PointRow | None:
        """(names, row) of a primary-key lookup run at once, where the backend can (SQLite); else None."""
        return self._backend.point_read(statement.sqlite_sql, params)

    async def get(self, request_id: str) -> RequestRecord | None:
        """The request `request_id`, None if there is none."""
        row = await self._get_row(request_id)
        return None if row is None else _record(row)

    async def wait_settled(self, request_id: str, timeout: float, *, recheck: float = 1.0,
                           check: Callable[[RequestRecord | None], object] | None = None,
                           known: RequestRecord | None = None) -> RequestRecord | None:
        """The request once it is completed, failed or dead-lettered, or as it stands after `timeout` seconds.

        Woken at once when this process settles it; a settlement made by another process (another replica, an
        adapter that dead-lettered it) is found within `recheck` seconds by one query for every request waited
        on. `check` sees the first read before any waiting (the API's permission check: it raises to refuse).
        `known` is the request as the caller has just read or written it, without awaiting since: it stands in for
        the first read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.settlements.watch(request_id) as waiter:
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
                record = _record(settled) if settled is not None else await self.get(request_id)

    async def _settled_among(self, request_ids: list[str]) -> list[str]:
        r = schema.requests
        statement = select(r.c.request_id).where(r.c.request_id.in_(request_ids),
                                                 r.c.status.in_([s.value for s in SETTLED]))
        return await self._backend.read(lambda conn: list(conn.execute(statement).scalars()))

    async def record_response(self, request_id: str, *, response: dict[str, Any] | None,
                              error: dict[str, Any] | None, keys: list[str] | None = None) -> bool:
        """Store the final answer of a request (and business keys it brings); False for an unknown request id."""
        status = RequestStatus.FAILED if error else RequestStatus.COMPLETED

        def write(conn: Connection) -> dict[str, Any] | None:
            # RETURNING: the row as this write left it, for the long polls waiting on it in this process
            row = RECORD_RESPONSE.first(conn, {"rid": request_id, "st": status.value, "resp": _dumps(response),
                                               "err": _dumps(error), "at": now_iso()})
            if row is not None and keys:
                _add_keys(conn, request_id, keys)
            return row

        row = await self._backend.write(write)
        if row is None:
            return False
        metrics.request_settled(target=row["target"], message_type=row["message_type"], status=status.value,
                                created_at=row["created_at"])
        self.settlements.notify(request_id, row)
        return True

    async def retrying(self, request_id: str, *, attempt: int, error: str) -> None:
        """A hop of the request failed and waits for its next attempt."""
        await self._execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.IN_PROGRESS.value, attempts=attempt, last_error=error, updated_at=now_iso())
        )

    async def waiting(self, request_id: str, *, error: str) -> None:
        """A hop of the request waits for its system to come back (an open breaker, a pause): no try spent."""
        await self._execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.IN_PROGRESS.value, last_error=error, updated_at=now_iso())
        )

    async def dead_lettered(self, request_id: str, *, error: str, queue: str) -> None:
        """A hop of the request was parked in a dead-letter queue."""
        await self._execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.DEAD_LETTERED.value, last_error=error,
                    error=_dumps({"code": "dead_lettered", "message": error, "queue": queue}), updated_at=now_iso())
        )
        self.settlements.notify(request_id)

    # --- timeline and business keys ----------------------------------------------------------------------------

    async def add_events(self, rows: list[dict[str, Any]]) -> None:
        """Write timeline events in one statement: rows with every key of `EVENT_COLUMNS` (`EventRecorder` builds
        them so), written as they are."""
        if rows:
            await self._backend.write(lambda conn: INSERT_EVENTS.run(conn, rows))

    async def timeline(self, request_id: str) -> list[dict[str, Any]]:
        """Every recorded hop of a request, oldest first."""
        e = schema.events

        def read(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(select(e).where(e.c.request_id == request_id).order_by(e.c.at, e.c.id)).all()
            return [{"at": r.at, "event": r.event, "service": r.service, "message_id": r.message_id,
                     "causation_id": r.causation_id, "message_type": r.message_type,
                     **({"detail": _loads(r.detail)} if r.detail else {})} for r in rows]

        return await self._backend.read(read)

    async def find_by_key(self, key: str, limit: int = 100, *, client_id: str | None = None) -> list[RequestRecord]:
        """Requests carrying a business key; only `client_id`'s when given."""
        k, r = schema.request_keys, schema.requests
        query = select(r).join(k, k.c.request_id == r.c.request_id).where(k.c.key == key)
        if client_id is not None:
            query = query.where(r.c.client_id == client_id)
        query = query.order_by(r.c.created_at.desc()).limit(limit)
        rows = await self._backend.read(lambda conn: [dict(row._mapping) for row in conn.execute(query).all()])
        return [_record(row) for row in rows]

    # --- outbox -------------------------------------------------------------------------------------------------

    async def outbox_pending(self, limit: int = 500) -> list[OutboxRow]:
        """Up to `limit` outbox rows not yet published, oldest first."""
        o = schema.outbox
        query = (select(o.c.id, o.c.message_id, o.c.request_id, o.c.routing_key, o.c.body, o.c.trace_context)
                 .where(o.c.sent_at.is_(None)).order_by(o.c.id).limit(limit))
        rows = await self._backend.read(lambda conn: conn.execute(query).all())
        return [OutboxRow(id=r.id, message_id=r.message_id, request_id=r.request_id, routing_key=r.routing_key,
                          body=r.body, trace_context=r.trace_context) for r in rows]

    async def outbox_claim(self, *, limit: int, fresh_s: float, lease_s: float,
                           mine: list[str] | None = None) -> list[OutboxRow]:
        """Claim for `lease_s` seconds up to `limit` unsent outbox rows that no sweep holds, oldest first.

        Rows younger than `fresh_s` are left to the fast path of the API process that committed them (its publish
        ends, confirmed or failed, within the publish timeout), except those of `mine` (message ids this process's
        fast path failed to publish). `FOR UPDATE SKIP LOCKED`: sweeps of several processes never claim one row
        twice (SQLite has one writer at a time anyway).
        """
        now = datetime.now(UTC)
        o = schema.outbox
        eligible = o.c.created_at < (now - timedelta(seconds=fresh_s)).isoformat(timespec="microseconds")
        if mine:
            eligible = or_(eligible, o.c.message_id.in_(mine))
        now_s = now.isoformat(timespec="microseconds")
        pick = (select(o.c.id)
                .where(o.c.sent_at.is_(None), or_(o.c.claimed_until.is_(None), o.c.claimed_until < now_s), eligible)
                .order_by(o.c.id).limit(limit).with_for_update(skip_locked=True))
        claim = (update(o).where(o.c.id.in_(pick.scalar_subquery()))
                 .values(claimed_until=(now + timedelta(seconds=lease_s)).isoformat(timespec="microseconds"))
                 .returning(o.c.id, o.c.message_id, o.c.request_id, o.c.routing_key, o.c.body, o.c.trace_context))
        rows = await self._backend.write(lambda conn: conn.execute(claim).all())
        return [OutboxRow(id=r.id, message_id=r.message_id, request_id=r.request_id, routing_key=r.routing_key,
                          body=r.body, trace_context=r.trace_context) for r in sorted(rows, key=lambda r: r.id)]

    async def outbox_release(self, rows: list[OutboxRow]) -> None:
        """Give claimed rows back (their publish failed): the next sweep of any process takes them."""
        if not rows:
            return
        o = schema.outbox
        release = update(o).where(o.c.message_id.in_([r.message_id for r in rows]), o.c.sent_at.is_(None)) \
            .values(claimed_until=None)
        await self._backend.write(lambda conn: conn.execute(release))

    async def outbox_mark_sent(self, rows: list[OutboxRow]) -> None:
        """These rows are published (confirmed): mark them sent and move their accepted requests to in progress."""
        if not rows:
            return
        now = now_iso()

        def write(conn: Connection) -> None:
            MARK_SENT.run(conn, [{"mid": r.message_id, "at": now} for r in rows])
            MARK_IN_PROGRESS.run(conn, [{"rid": r.request_id, "at": now, "from_st": RequestStatus.ACCEPTED.value,
                                         "to_st": RequestStatus.IN_PROGRESS.value} for r in rows])

        await self._backend.write(write)

    async def outbox_backlog(self) -> int:
        """How many outbox rows wait to be published."""
        query = select(func.count()).select_from(schema.outbox).where(schema.outbox.c.sent_at.is_(None))
        return int(await self._backend.read(lambda conn: conn.execute(query).scalar_one()))

    # --- inbox --------------------------------------------------------------------------------------------------

    async def seen(self, consumer: str, message_id: str) -> bool:
        """Whether `consumer` has already handled `message_id` (the inbox)."""
        params = {"consumer": consumer, "mid": message_id}
        found = self._point_read(SELECT_SEEN, params)
        if found is not None:
            return found[1] is not None
        return await self._backend.read(lambda conn: SELECT_SEEN.first(conn, params) is not None)

    async def record(self, consumer: str, message_id: str) -> None:
        """Remember that `consumer` handled `message_id`; recording it twice is harmless."""
        try:
            params = {"consumer": consumer, "message_id": message_id, "processed_at": now_iso()}
            await self._backend.write(lambda conn: INSERT_INBOX.run(conn, params))
        except IntegrityError:
            pass  # already recorded by a concurrent duplicate

    async def prune(self, older_than: str) -> tuple[int, int]:
        """Forget inbox ids and sent outbox rows older than `older_than` (ISO time); returns how many of each."""

        def write(conn: Connection) -> tuple[int, int]:
            inbox = conn.execute(schema.inbox.delete().where(schema.inbox.c.processed_at < older_than))
            outbox = conn.execute(schema.outbox.delete().where(schema.outbox.c.sent_at.is_not(None),
                                                               schema.outbox.c.sent_at < older_than))
            return inbox.rowcount, outbox.rowcount

        return await self._backend.write(write)

    # --- operations: maintenance pauses and the audit log -----------------------------------------------------

    async def pause_system(self, system: str, *, until: str | None, reason: str | None, paused_by: str) -> SystemPause:
        """Pause `system` for every adapter replica (until `until`, ISO time, or until resumed); pausing it again
        replaces the pause."""
        p = schema.system_pauses
        row = {"system": system, "paused_at": now_iso(), "until": until, "reason": reason, "paused_by": paused_by}

        def write(conn: Connection) -> None:
            conn.execute(p.delete().where(p.c.system == system))
            conn.execute(insert(p).values(**row))

        await self._backend.write(write)
        return SystemPause.model_validate(row)

    async def resume_system(self, system: str) -> bool:
        """Lift `system`'s pause; whether there was one."""
        p = schema.system_pauses
        return bool(await self._backend.write(lambda conn: conn.execute(p.delete().where(p.c.system == system))
                                              .rowcount))

    async def system_pauses(self, *, now: str | None = None) -> dict[str, SystemPause]:
        """The pauses in force (one that ran out is not: it lifts itself), by system."""
        p, now = schema.system_pauses, now or now_iso()
        query = select(p).where((p.c.until.is_(None)) | (p.c.until > now))
        rows = await self._backend.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return {row["system"]: SystemPause(**row) for row in rows}

    async def report_breaker(self, *, system: str, instance: str, state: str, since: str,
                             reason: str | None) -> None:
        """Record a breaker's state as this process sees it (for `GET /systems` and the console)."""
        b = schema.breakers
        row = {"system": system, "instance": instance, "state": state, "since": since, "reason": reason,
               "updated_at": now_iso()}

        def write(conn: Connection) -> None:
            conn.execute(b.delete().where(b.c.system == system, b.c.instance == instance))
            conn.execute(insert(b).values(**row))

        await self._backend.write(write)

    async def forget_breakers(self, instance: str) -> None:
        """A process that stops takes its reports with it."""
        b = schema.breakers
        await self._backend.write(lambda conn: conn.execute(b.delete().where(b.c.instance == instance)))

    # --- ordering of updates ----------------------------------------------------------------------------------

    async def claim_order_update(self, order_key: str, *, changed_at: str, status: str,
                                 message_id: str) -> OrderClaim:
        """Compare-and-set: make this update (changed at `changed_at`, UTC ISO with microseconds) the order's
        newest, unless a newer one already is. The same message claiming again (a redelivery) holds it again.

        Returns the claim as it stands: `held` says whether this update may be applied; if not, `changed_at` and
        `status` are the newer update's.
        """
        u = schema.order_updates
        row = {"order_key": order_key, "changed_at": changed_at, "status": status, "message_id": message_id,
               "updated_at": now_iso()}

        def write(conn: Connection) -> OrderClaim:
            taken = conn.execute(
                update(u).where(u.c.order_key == order_key,
                                (u.c.changed_at < changed_at)
                                | ((u.c.changed_at == changed_at) & (u.c.message_id == message_id)))
                .values(**row)).rowcount
            if not taken:
                current = conn.execute(select(u.c.changed_at, u.c.status, u.c.message_id)
                                       .where(u.c.order_key == order_key)).first()
                if current is None:
                    conn.execute(insert(u).values(**row))  # a concurrent first claim fails on the key: tried again
                    taken = 1
                elif current.changed_at == changed_at:
                    taken = 1  # the same moment from another message: no order between them, both apply
                else:
                    return OrderClaim(held=False, changed_at=current.changed_at, status=current.status)
            return OrderClaim(held=True, changed_at=changed_at, status=status)

        try:
            return await self._backend.write(write)
        except IntegrityError:  # another process claimed the order's first update at the same moment
            return await self._backend.write(write)

    async def order_update(self, order_key: str) -> OrderClaim | None:
        """The newest update claimed for the order, if any (`held` is true)."""
        u = schema.order_updates
        row = await self._backend.read(lambda conn: conn.execute(
            select(u.c.changed_at, u.c.status).where(u.c.order_key == order_key)).first())
        return None if row is None else OrderClaim(held=True, changed_at=row.changed_at, status=row.status)

    async def breaker_states(self) -> list[BreakerReport]:
        query = select(schema.breakers).order_by(schema.breakers.c.system, schema.breakers.c.instance)
        rows = await self._backend.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return [BreakerReport(**row) for row in rows]

    async def audit(self, action: str, *, client_id: str, subject: str | None = None, count: int | None = None,
                    detail: dict[str, Any] | None = None) -> None:
        """Record what an operator did: `action` (dlq.replay, system.pause, ...), on what, how many."""
        row = {"at": now_iso(), "client_id": client_id, "action": action, "subject": subject, "count": count,
               "detail": _dumps(detail)}
        await self._backend.write(lambda conn: conn.execute(insert(schema.audit).values(**row)))

    async def audit_log(self, *, limit: int = 100, action: str | None = None, since: str | None = None,
                        client_id: str | None = None) -> list[AuditEntry]:
        """The newest entries first."""
        a = schema.audit
        query = select(a)
        if action:
            query = query.where(a.c.action == action)
        if since:
            query = query.where(a.c.at >= since)
        if client_id:
            query = query.where(a.c.client_id == client_id)
        query = query.order_by(a.c.id.desc()).limit(limit)
        rows = await self._backend.read(lambda conn: [dict(r._mapping) for r in conn.execute(query).all()])
        return [AuditEntry(**{**row, "detail": _loads(row["detail"])}) for row in rows]


    # --- the operator console (read by people, never on the hot path) ----------------------------------------------

    async def search_requests(self, *, text: str | None = None, status: str | None = None,
                              message_type: str | None = None, target: str | None = None, since: str | None = None,
                              until: str | None = None, client_id: str | None = None, limit: int = 50,
                              offset: int = 0) -> list[RequestRecord]:
        """Requests, newest first: `text` is a request id or a business key (order, user, DMS user, policy);
        `since`/`until` bound `created_at` (ISO times); only `client_id`'s when given."""
        r, k = schema.requests, schema.request_keys
        query = select(r)
        if text:
            by_key = select(k.c.request_id).where(k.c.key == text)
            query = query.where((r.c.request_id == text) | r.c.request_id.in_(by_key))
        for column, value in ((r.c.status, status), (r.c.message_type, message_type), (r.c.target, target),
                              (r.c.client_id, client_id)):
            if value is not None:
                query = query.where(column == value)
        if since:
            query = query.where(r.c.created_at >= since)
        if until:
            query = query.where(r.c.created_at < until)
        query = query.order_by(r.c.created_at.desc(), r.c.request_id).limit(limit).offset(offset)
        rows = await self._backend.read(lambda conn: [dict(row._mapping) for row in conn.execute(query).all()])
        return [_record(row) for row in rows]

    async def requests_per_minute(self, since: str) -> list[tuple[str, str, str, int]]:
        """`(target, minute, status, count)` of the requests created since `since` (ISO time; minutes as
        `YYYY-MM-DDTHH:MM`, UTC), by their status now."""
        r = schema.requests
        minute = func.substr(r.c.created_at, 1, 16)
        query = (select(r.c.target, minute, r.c.status, func.count()).where(r.c.created_at >= since)
                 .group_by(r.c.target, minute, r.c.status))
        rows = await self._backend.read(lambda conn: conn.execute(query).all())
        return [(row[0], row[1], row[2], int(row[3])) for row in rows]

    async def request_message(self, request_id: str) -> bytes | None:
        """The message a request was accepted with (its envelope), while the outbox keeps it (see `prune`)."""
        o = schema.outbox
        query = select(o.c.body).where(o.c.request_id == request_id).order_by(o.c.id).limit(1)
        body = await self._backend.read(lambda conn: conn.execute(query).scalar())
        return bytes(body) if body is not None else None


def _add_keys(conn: Connection, request_id: str, keys: list[str]) -> None:
    wanted = sorted({key[:255] for key in keys if key})
    if wanted:
        ADD_KEYS.run(conn, [{"key": key, "request_id": request_id} for key in wanted])


def _record(row: Any) -> RequestRecord:
    return RequestRecord(
        request_id=row["request_id"], status=RequestStatus(row["status"]), target=row["target"],
        message_type=row["message_type"], response=_loads(row["response"]), error=_loads(row["error"]),
        attempts=row["attempts"] or 0, last_error=row["last_error"], created_at=row["created_at"],
        updated_at=row["updated_at"], client_id=row["client_id"],
    )
