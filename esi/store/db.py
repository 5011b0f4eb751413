"""The store behind request tracking, the outbox, the inbox and timelines (SQLAlchemy Core).

SQLite (WAL, safe for several processes on one host) is the default; PostgreSQL (asyncpg) for several hosts. Plain
URLs are accepted: `sqlite:///var/esi.db`, `postgresql://user@host:5432/db`.

Every operation is a plain function over a SQLAlchemy `Connection`, run by a backend; the statements on the hot path
are built once (`esi.store.statements`) and run on SQLite by the driver itself.

- SQLite: the stdlib driver in worker threads. Writes go to one writer thread and are group-committed: the writes
  that arrive while a commit is in progress share the next transaction and one commit — one fsync and one thread
  hop serve many requests (if one of them fails, the batch runs again with each write in its own savepoint, so that
  it fails alone). Reads run in reader threads, in deferred transactions that never wait for the writer (WAL). An
  async SQLite driver would cost a thread hop per statement, which measured as the bottleneck of the whole bus.
- PostgreSQL: asyncpg through SQLAlchemy's async engine, group-committed the same way, reads from the pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from esi.store import schema
from esi.store.records import OutboxRow, RequestRecord, RequestStatus
from esi.store.settled import SETTLED, Settlements
from esi.store.statements import (
    ADD_KEYS,
    EVENT_COLUMNS,
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
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[Connection], T]
_FINAL = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def async_url(url: str) -> str:
    """Map a plain database URL to the async driver esi uses (PostgreSQL); SQLite keeps the stdlib driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: use sqlite or postgresql")


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


# --- backends ---------------------------------------------------------------------------------------------------------

class _Backend(Protocol):
    async def write(self, op: Op[T]) -> T: ...

    async def write_alone(self, op: Op[T]) -> T: ...

    async def read(self, op: Op[T]) -> T: ...

    async def aclose(self) -> None: ...


Outcomes = list[tuple[Any, BaseException | None]]


def _run_ops(conn: Connection, batch: list[tuple[Op[Any], Any]]) -> list[Any]:
    return [op(conn) for op, _ in batch]


def _run_ops_each_in_savepoint(conn: Connection, batch: list[tuple[Op[Any], Any]]) -> Outcomes:
    outcomes: Outcomes = []
    for op, _ in batch:
        try:
            with conn.begin_nested():
                outcomes.append((op(conn), None))
        except Exception as exc:  # this write fails alone; the others go on
            outcomes.append((None, exc))
    return outcomes


class _GroupCommit:
    """Writes that arrive while a commit is under way go into the next one, together: one commit (one fsync)
    for many writes.

    Optimistic: a batch runs as one plain transaction (no savepoints, two statements less per write); a write
    that fails (a duplicate request_id) rolls it all back, and the batch runs again with each write in its own
    savepoint, so that only that write fails. Subclasses say how a batch runs on their driver.
    """

    def __init__(self, *, max_batch: int) -> None:
        self._max_batch = max_batch
        self._pending: list[tuple[Op[Any], asyncio.Future[Any]]] = []
        self._kick = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None

    async def write(self, op: Op[T]) -> T:
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches(), name="store-group-commit")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._kick.set()
        return await future

    async def _transaction(self, fn: Callable[[Connection, Any], T], arg: Any) -> T:
        """`fn(conn, arg)` in one transaction on this driver, committed."""
        raise NotImplementedError

    async def write_alone(self, op: Op[T]) -> T:
        return await self._transaction(lambda conn, _: op(conn), None)

    async def _run_batch(self, batch: list[tuple[Op[Any], asyncio.Future[Any]]]) -> Outcomes:
        try:
            results = await self._transaction(_run_ops, batch)
            return [(result, None) for result in results]
        except Exception as exc:
            if len(batch) == 1:
                return [(None, exc)]
        return await self._transaction(_run_ops_each_in_savepoint, batch)

    async def _run_batches(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
                try:
                    outcomes = await self._run_batch(batch)
                except Exception as exc:  # the commit itself failed: every write of the batch fails
                    outcomes = [(None, exc)] * len(batch)
                _deliver(batch, outcomes)

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0.01)
        if self._batcher is not None:
            self._batcher.cancel()


def _deliver(batch: list[tuple[Op[Any], asyncio.Future[Any]]], outcomes: Outcomes) -> None:
    """Hand each operation of a batch its result or its error (a caller that gave up is skipped)."""
    for (_, future), (result, error) in zip(batch, outcomes):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _settle(batch: list[tuple[Op[Any], asyncio.Future[Any]]], outcome: asyncio.Future[Outcomes]) -> None:
    """Hand each read of a batch its result, or the error that ended the batch (no connection, say)."""
    failure = outcome.exception() if not outcome.cancelled() else asyncio.CancelledError()
    _deliver(batch, [(None, failure)] * len(batch) if failure is not None else outcome.result())


class _SqliteBackend(_GroupCommit):
    """SQLite through the stdlib driver in worker threads: one writer thread (SQLite has one writer), four readers.

    Writers and readers have engines of their own: a write transaction begins IMMEDIATE (it takes the write lock up
    front), a read transaction plain BEGIN (deferred: in WAL mode it never waits for the writer, nor the writer for
    it). Reads that took the write lock too serialised every read with every commit of every process on the file,
    and a lock found busy costs SQLite's busy handler a sleep of 1 ms or more.
    """

    def __init__(self, writer: Engine, reader: Engine, *, max_batch: int = 512) -> None:
        super().__init__(max_batch=max_batch)
        self._engine = writer
        self._reader = reader
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esi-sqlite-write")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="esi-sqlite-read")
        self._reads: list[tuple[Op[Any], asyncio.Future[Any]]] = []
        self._max_read_batch = 64

    async def _transaction(self, fn: Callable[[Connection, Any], T], arg: Any) -> T:
        def run() -> T:
            with self._engine.begin() as conn:
                return fn(conn, arg)

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def read(self, op: Op[T]) -> T:
        """Reads asked for in one turn of the loop run together, on one reader connection: one hand-off to a thread
        for many (under load, the consumers and long polls of one turn each read)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._reads.append((op, future))
        if len(self._reads) == 1:
            loop.call_soon(self._dispatch_reads, loop)
        return await future

    def _dispatch_reads(self, loop: asyncio.AbstractEventLoop) -> None:
        reads, self._reads = self._reads, []
        for start in range(0, len(reads), self._max_read_batch):
            batch = reads[start:start + self._max_read_batch]
            try:
                done = loop.run_in_executor(self._readers, self._run_reads, batch)
            except RuntimeError as exc:  # the store is closing: its executor takes no more work
                failed: asyncio.Future[Outcomes] = loop.create_future()
                failed.set_exception(exc)
                _settle(batch, failed)
                continue
            done.add_done_callback(lambda outcome, batch=batch: _settle(batch, outcome))

    def _run_reads(self, batch: list[tuple[Op[Any], asyncio.Future[Any]]]) -> Outcomes:
        outcomes: Outcomes = []
        with self._reader.connect() as conn:
            for op, _ in batch:
                try:
                    outcomes.append((op(conn), None))
                except Exception as exc:  # this read fails alone
                    outcomes.append((None, exc))
        return outcomes

    async def aclose(self) -> None:
        await self._drain()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._engine.dispose()
        if self._reader is not self._engine:
            self._reader.dispose()


class _AsyncBackend(_GroupCommit):
    """PostgreSQL through asyncpg. Writes are group-committed too: measured end to end, a transaction per write
    cost the 1C process 5.7 ms of CPU per request."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256) -> None:
        super().__init__(max_batch=max_batch)
        self._engine = engine

    async def _transaction(self, fn: Callable[[Connection, Any], T], arg: Any) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(fn, arg)

    async def read(self, op: Op[T]) -> T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(op)

    async def aclose(self) -> None:
        await self._drain()
        await self._engine.dispose()


# --- the store --------------------------------------------------------------------------------------------------------

class Store:
    """The operations esi needs; an async context manager."""

    def __init__(self, backend: _Backend, *, is_sqlite: bool) -> None:
        self._backend = backend
        self.is_sqlite = is_sqlite
        #: requests waited for in this process (`wait_settled`); told when this store settles one
        self.settlements = Settlements(self._settled_among)

    @classmethod
    async def open(cls, url: str, *, durable_commits: bool = True) -> "Store":
        """Open (and migrate) the store at `url`.

        `durable_commits=False` lets SQLite skip the fsync at each commit (WAL with synchronous=NORMAL: safe against
        a crash of the process, not of the machine). Adapters use it: all they commit is their inbox, and an inbox
        entry lost in a power cut only means a redelivered message is handled again, which the external systems'
        idempotency keys make harmless. The 1C side keeps full durability: its commits are what 1C is told.
        """
        target = async_url(url)
        parsed = make_url(target)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            synchronous = "FULL" if durable_commits else "NORMAL"
            writer = _sqlite_engine(target, synchronous=synchronous, begin="BEGIN IMMEDIATE", pool_size=2)
            in_memory = parsed.database in (None, "", ":memory:")
            reader = writer if in_memory else _sqlite_engine(target, synchronous=synchronous, begin="BEGIN",
                                                             pool_size=4)
            store = cls(_SqliteBackend(writer, reader), is_sqlite=True)
        else:
            async_engine = create_async_engine(target, pool_size=10, max_overflow=10, pool_pre_ping=True,
                                               connect_args={"command_timeout": 30})
            store = cls(_AsyncBackend(async_engine), is_sqlite=False)
        await store.migrate()
        return store

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._backend.aclose()

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
        return await self._backend.read(
            lambda conn: sorted(conn.execute(select(schema.schema_migrations.c.version)).scalars()))

    async def ping(self) -> None:
        await self._backend.read(lambda conn: conn.execute(select(1)).scalar())

    # --- requests -----------------------------------------------------------------------------------------------

    async def accept(
        self, *, request_id: str, source: str, target: str, message_type: str, payload_hash: str,
        message_id: str, routing_key: str, body: bytes, keys: list[str] | None = None, client_id: str | None = None,
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
                                     "body": body, "created_at": now, "sent_at": None})
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
        return await self._backend.read(lambda conn: SELECT_REQUEST.first(conn, {"rid": request_id}))

    async def get(self, request_id: str) -> RequestRecord | None:
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
        self.settlements.notify(request_id, row)
        return True

    async def retrying(self, request_id: str, *, attempt: int, error: str) -> None:
        """A hop of the request failed and waits for its next attempt."""
        await self._execute(
            update(schema.requests)
            .where(schema.requests.c.request_id == request_id, schema.requests.c.status.not_in(_FINAL))
            .values(status=RequestStatus.IN_PROGRESS.value, attempts=attempt, last_error=error, updated_at=now_iso())
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
        if rows:
            columns = EVENT_COLUMNS
            await self._backend.write(lambda conn: INSERT_EVENTS.run(conn, [{c: row.get(c) for c in columns}
                                                                          for row in rows]))

    async def timeline(self, request_id: str) -> list[dict[str, Any]]:
        e = schema.events

        def read(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(select(e).where(e.c.request_id == request_id).order_by(e.c.at, e.c.id)).all()
            return [{"at": r.at, "event": r.event, "service": r.service, "message_id": r.message_id,
                     "causation_id": r.causation_id, "message_type": r.message_type,
                     **({"detail": _loads(r.detail)} if r.detail else {})} for r in rows]

        return await self._backend.read(read)

    async def add_keys(self, request_id: str, keys: list[str]) -> None:
        if keys:
            await self._backend.write(lambda conn: _add_keys(conn, request_id, keys))

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
        o = schema.outbox
        query = (select(o.c.id, o.c.message_id, o.c.request_id, o.c.routing_key, o.c.body)
                 .where(o.c.sent_at.is_(None)).order_by(o.c.id).limit(limit))
        rows = await self._backend.read(lambda conn: conn.execute(query).all())
        return [OutboxRow(id=r.id, message_id=r.message_id, request_id=r.request_id, routing_key=r.routing_key,
                          body=r.body) for r in rows]

    async def outbox_mark_sent(self, rows: list[OutboxRow]) -> None:
        if not rows:
            return
        now = now_iso()

        def write(conn: Connection) -> None:
            MARK_SENT.run(conn, [{"mid": r.message_id, "at": now} for r in rows])
            MARK_IN_PROGRESS.run(conn, [{"rid": r.request_id, "at": now, "from_st": RequestStatus.ACCEPTED.value,
                                         "to_st": RequestStatus.IN_PROGRESS.value} for r in rows])

        await self._backend.write(write)

    async def outbox_backlog(self) -> int:
        query = select(func.count()).select_from(schema.outbox).where(schema.outbox.c.sent_at.is_(None))
        return int(await self._backend.read(lambda conn: conn.execute(query).scalar_one()))

    # --- inbox --------------------------------------------------------------------------------------------------

    async def seen(self, consumer: str, message_id: str) -> bool:
        params = {"consumer": consumer, "mid": message_id}
        return await self._backend.read(lambda conn: SELECT_SEEN.first(conn, params) is not None)

    async def record(self, consumer: str, message_id: str) -> None:
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


def _sqlite_engine(url: str, *, synchronous: str, begin: str, pool_size: int) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                           pool_size=pool_size, max_overflow=4)
    event.listen(engine, "connect", lambda dbapi_conn, _rec: _sqlite_pragmas(dbapi_conn, synchronous))
    # take over BEGIN from the driver: SAVEPOINTs then work, and a writer's IMMEDIATE takes the write lock up front
    # (a deferred transaction that reads, then writes, can fail to upgrade its lock under contention)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine


def _sqlite_pragmas(dbapi_connection: Any, synchronous: str) -> None:
    dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own (see Store.open)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
