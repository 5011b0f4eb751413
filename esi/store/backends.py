"""How the store's operations run: the execution backends, their group commits, engines and pragmas.

An operation is a plain function over a SQLAlchemy `Connection` (the repositories hold them: `esi.store.requests`,
`outbox`, ...); a backend runs it and knows nothing of what it does.

- SQLite: the stdlib driver in worker threads. Writes go to one writer thread and are group-committed: the writes
  that arrive while a commit is in progress share the next transaction and one commit — one fsync and one thread
  hop serve many requests (if one of them fails, the batch runs again with each write in its own savepoint, so that
  it fails alone). Reads run in reader threads, in deferred transactions that never wait for the writer (WAL); the
  reads asked for in one turn of the event loop go to a thread in one hand-off. An async SQLite driver would cost a
  thread hop per statement, the bottleneck of the whole bus (docs/performance.md).
- PostgreSQL: asyncpg through SQLAlchemy's async engine, group-committed the same way (a batch's inserts sent as
  one pipelined statement each: `esi.store.statements.deferred`), reads from the pool, primary-key lookups on
  asyncpg connections kept for them (`Lookups`); and `LISTEN` on a connection of its own for what other processes
  announce (`Notifications`: settled requests).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from esi import metrics
from esi.store.statements import Statement, deferred, flush_before_statement

log = logging.getLogger(__name__)

T = TypeVar("T")
#: an operation: a function run on a connection inside the backend's transaction
Op = Callable[[Connection], T]
#: the result or the error of each operation of a batch, in order
Outcomes = list[tuple[Any, BaseException | None]]
#: what a point read gives: the column names, and the row (None without one)
PointRow = tuple[tuple[str, ...], tuple[Any, ...] | None]


class Backend(Protocol):
    """What the store asks of a backend."""

    #: the SQLAlchemy dialect: "sqlite" or "postgresql"
    dialect: str

    async def write(self, op: Op[T]) -> T:
        """Run `op` in a transaction, committed; possibly sharing the transaction with other writes."""
        ...

    async def write_alone(self, op: Op[T]) -> T:
        """Run `op` in a transaction of its own, committed (migrations)."""
        ...

    async def read(self, op: Op[T]) -> T:
        """Run `op` on a connection that writes nothing."""
        ...

    def point_read(self, sql: str, params: dict[str, Any]) -> PointRow | None:
        """A primary-key lookup answered at once, without awaiting (column names, row or None); None when this
        backend cannot (the caller then uses `read`)."""
        ...

    async def lookup(self, statement: Statement, params: dict[str, Any]) -> dict[str, Any] | None:
        """The row a primary-key lookup finds (a dict), None without one, by the cheapest way this backend has."""
        ...

    def notifications(self, channel: str, on_payload: Callable[[str], None]) -> Notifications | None:
        """What other processes announce on `channel`, each payload handed to `on_payload`; None when this backend
        cannot tell (SQLite: one process's store, its own writes are known in-process)."""
        ...

    async def aclose(self) -> None:
        """Finish the writes under way, then close the engines."""
        ...


# --- counting what the database is asked (esi_store_round_trips: docs/performance.md, the production store) -------

_WRITES = metrics.STORE_WRITES
_TRIPS = {
    kind: metrics.child(metrics.STORE_ROUND_TRIPS, kind)
    for kind in ("statement", "begin", "commit", "rollback", "ping")
}


def count_round_trips(engine: Engine, *, statements: bool) -> None:
    """Count on `engine` its commits, and with `statements` its BEGINs, rollbacks and statements (`ping_when_idle`
    counts the pings): a counter's increment each, against a round trip's tens of microseconds."""
    event.listen(engine, "commit", lambda _conn: _TRIPS["commit"].inc())
    if statements:
        # SQLAlchemy begins and ends a transaction in autocommit too, without a word to the database
        event.listen(engine, "begin", lambda conn: None if _autocommit(conn) else _TRIPS["begin"].inc())
        event.listen(engine, "rollback", lambda conn: None if _autocommit(conn) else _TRIPS["rollback"].inc())
        event.listen(engine, "before_cursor_execute", lambda *_args: _TRIPS["statement"].inc())


def _autocommit(conn: Connection) -> bool:
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


# --- group commit ---------------------------------------------------------------------------------------------------


def _run_ops(conn: Connection, batch: list[tuple[Op[Any], Any]]) -> list[Any]:
    # on PostgreSQL the batch's inserts gather into one pipelined statement each (esi.store.statements)
    with deferred(conn):
        return [op(conn) for op, _ in batch]


def _run_ops_each_in_savepoint(conn: Connection, batch: list[tuple[Op[Any], Any]]) -> Outcomes:
    outcomes: Outcomes = []
    for op, _ in batch:
        try:
            with conn.begin_nested(), deferred(conn):  # its rows sent within its savepoint: it fails alone
                result = op(conn)
            outcomes.append((result, None))
        except Exception as exc:  # noqa: BLE001 - this write fails alone; the others go on
            outcomes.append((None, exc))
    return outcomes


class GroupCommit:
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
        """Run `op` in the next group commit; its result, or its own error."""
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches(), name="store-group-commit")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        _WRITES.inc()
        self._pending.append((op, future))
        self._kick.set()
        return await future

    async def _transaction(self, fn: Callable[[Connection, Any], T], arg: Any) -> T:
        """`fn(conn, arg)` in one transaction on this driver, committed."""
        raise NotImplementedError

    async def write_alone(self, op: Op[T]) -> T:
        """Run `op` in a transaction of its own, outside the group commits."""
        return await self._transaction(lambda conn, _: op(conn), None)

    async def _run_batch(self, batch: list[tuple[Op[Any], asyncio.Future[Any]]]) -> Outcomes:
        try:
            results = await self._transaction(_run_ops, batch)
            return [(result, None) for result in results]
        except Exception as exc:  # noqa: BLE001 - any failure: the batch is run again one by one to isolate it
            if len(batch) == 1:
                return [(None, exc)]
        return await self._transaction(_run_ops_each_in_savepoint, batch)

    async def _run_batches(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    outcomes = await self._run_batch(batch)
                except Exception as exc:  # noqa: BLE001 - the commit itself failed: every write of the batch fails
                    outcomes = [(None, exc)] * len(batch)
                _deliver(batch, outcomes)

    async def _drain(self) -> None:
        while self._pending:  # noqa: ASYNC110 - closing only: the batcher wakes on _kick, nothing signals empty
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


# --- SQLite ---------------------------------------------------------------------------------------------------------


class SqliteBackend(GroupCommit):
    """SQLite through the stdlib driver in worker threads: one writer thread (SQLite has one writer), four readers.

    Writers and readers have engines of their own: a write transaction begins IMMEDIATE (it takes the write lock up
    front), a read transaction plain BEGIN (deferred: in WAL mode it never waits for the writer, nor the writer for
    it). Reads that took the write lock too serialised every read with every commit of every process on the file,
    and a lock found busy costs SQLite's busy handler a sleep of 1 ms or more.
    """

    dialect = "sqlite"

    def __init__(self, writer: Engine, reader: Engine, *, max_batch: int = 512, path: str | None = None) -> None:
        super().__init__(max_batch=max_batch)
        self._engine = writer
        self._reader = reader
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esi-sqlite-write")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="esi-sqlite-read")
        self._reads: list[tuple[Op[Any], asyncio.Future[Any]]] = []
        self._max_read_batch = 64
        #: the file, for the point reads on the loop's thread (`point_read`); None for an in-memory database
        self._path = path
        self._point: sqlite3.Connection | None = None

    def point_read(self, sql: str, params: dict[str, Any]) -> PointRow | None:
        """One primary-key lookup (`sql`, a SELECT), run at once on the event loop's thread: the column names and
        the row (None without one); None when it cannot run here (an in-memory database, the file busy), and the
        caller reads through the reader threads instead.

        On a connection of its own in autocommit: each SELECT is a read transaction of its own that ends with the
        statement, so there is no BEGIN, no ROLLBACK and no snapshot held between reads; in WAL mode a reader
        never waits for a writer, and a lock found busy fails at once (busy_timeout 0) instead of stalling the loop.
        A point read costs SQLite a few microseconds; the hand-off to a reader thread and back cost the inbox check
        a tenth of the DMS adapter's CPU (docs/performance.md)."""
        if self._path is None:
            return None
        try:
            if self._point is None:
                self._point = _point_connection(self._path)
            cursor = self._point.execute(sql, params)
            try:
                row = cursor.fetchone()
                names = tuple(d[0] for d in cursor.description)
            finally:
                cursor.close()
        except sqlite3.Error:  # busy or locked (a checkpoint, a recovery): the reader threads wait, or say what failed
            return None
        return names, row

    async def lookup(self, statement: Statement, params: dict[str, Any]) -> dict[str, Any] | None:
        """On the loop's thread (`point_read`), else through the reader threads."""
        found = self.point_read(statement.sqlite_sql, params)
        if found is None:
            return await self.read(lambda conn: statement.first(conn, params))
        names, row = found
        return None if row is None else dict(zip(names, row))

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
            batch = reads[start : start + self._max_read_batch]
            try:
                done = loop.run_in_executor(self._readers, self._run_reads, batch)
            except RuntimeError as exc:  # the store is closing: its executor takes no more work
                failed: asyncio.Future[Outcomes] = loop.create_future()
                failed.set_exception(exc)
                _settle(batch, failed)
                continue
            done.add_done_callback(functools.partial(_settle, batch))

    def _run_reads(self, batch: list[tuple[Op[Any], asyncio.Future[Any]]]) -> Outcomes:
        outcomes: Outcomes = []
        with self._reader.connect() as conn:
            for op, _ in batch:
                try:
                    outcomes.append((op(conn), None))
                except Exception as exc:  # noqa: BLE001 - this read fails alone
                    outcomes.append((None, exc))
        return outcomes

    def notifications(self, channel: str, on_payload: Callable[[str], None]) -> None:
        """None: SQLite cannot tell one process of another's commits (they are found by reading: esi.store.settled)."""
        return None

    async def aclose(self) -> None:
        """Finish the writes under way, stop the threads, close the engines."""
        await self._drain()
        if self._point is not None:
            self._point.close()
            self._point = None
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._engine.dispose()
        if self._reader is not self._engine:
            self._reader.dispose()


# --- PostgreSQL -----------------------------------------------------------------------------------------------------


#: SQLSTATEs of a transaction PostgreSQL ended to resolve a conflict (deadlock_detected, serialization_failure): run
#: it again
_CONFLICTS = frozenset({"40P01", "40001"})
#: attempts at one transaction that meets such conflicts, in all
CONFLICT_TRIES = 3
_CONFLICT_RETRIES = metrics.STORE_CONFLICT_RETRIES


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver's error, looked for along its causes (asyncpg's own error carries it)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        for name in ("sqlstate", "pgcode"):
            value = getattr(seen, name, None)
            if isinstance(value, str):
                return value
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


class PostgresBackend(GroupCommit):
    """PostgreSQL through asyncpg. Writes are group-committed too: a transaction per write costs the 1C process
    CPU on every request (docs/performance.md)."""

    dialect = "postgresql"

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256) -> None:
        super().__init__(max_batch=max_batch)
        self._engine = engine
        #: the same pool, its connections in autocommit while they read: a read is its statement alone, without a
        #: BEGIN and a ROLLBACK around it (at READ COMMITTED each statement has a snapshot of its own either way)
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._listeners: list[Notifications] = []
        self._lookups = Lookups(self._dsn())
        #: the server processes of this pool's connections: what they announce, this process knows already
        self._own_pids: set[int] = set()
        event.listen(engine.sync_engine, "connect", self._connected)
        event.listen(engine.sync_engine, "close", self._closed)

    def _connected(self, dbapi_connection: Any, _record: Any) -> None:
        self._own_pids.add(dbapi_connection.driver_connection.get_server_pid())

    def _closed(self, dbapi_connection: Any, _record: Any) -> None:
        self._own_pids.discard(dbapi_connection.driver_connection.get_server_pid())

    async def _transaction(self, fn: Callable[[Connection, Any], T], arg: Any) -> T:
        """`fn(conn, arg)` in one transaction, committed; run again (up to `CONFLICT_TRIES` times in all) when
        PostgreSQL rolled it back for a deadlock or a serialization failure: two processes' group commits that update
        the same requests in another order deadlock now and then, and the transaction that PostgreSQL chose to end
        left nothing behind, so running it again is safe (the chaos run, seed 31, lost state updates to it)."""
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn, arg)
            except DBAPIError as exc:
                if attempt == CONFLICT_TRIES or _sqlstate(exc) not in _CONFLICTS:
                    raise
                _CONFLICT_RETRIES.inc()
                await asyncio.sleep(random.uniform(0.005, 0.03) * attempt)  # noqa: S311 - jitter, not a secret
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, op: Op[T]) -> T:
        """Run `op` on a pooled connection, in autocommit."""
        async with self._reader.connect() as conn:
            return await conn.run_sync(op)

    def point_read(self, sql: str, params: dict[str, Any]) -> PointRow | None:
        """None: asyncpg's reads are awaited (`read`, `lookup`)."""
        return None

    async def lookup(self, statement: Statement, params: dict[str, Any]) -> dict[str, Any] | None:
        """On the connection kept for lookups (`Lookups`)."""
        return await self._lookups.fetchrow(statement.postgresql_sql, statement.args(params))

    def _dsn(self) -> str:
        """The pool's database as a plain DSN, for asyncpg's own connections (lookups, `LISTEN`)."""
        return self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def notifications(self, channel: str, on_payload: Callable[[str], None]) -> Notifications:
        """`LISTEN channel` on a connection of its own (opened at the first `ensure`), closed with the backend."""
        listener = Notifications(self._dsn(), channel, on_payload, ignore=self._own_pids)
        self._listeners.append(listener)
        return listener

    async def aclose(self) -> None:
        """Finish the writes under way, stop listening, close the pool."""
        await self._drain()
        for listener in self._listeners:
            await listener.aclose()
        await self._lookups.aclose()
        await self._engine.dispose()


class Lookups:
    """Primary-key lookups on PostgreSQL (the inbox check of every message an adapter takes, a request's row) on
    asyncpg connections kept for them, outside SQLAlchemy's pool, in autocommit: each is its prepared statement
    (asyncpg's statement cache) and one round trip. Through the pool, the checkout and return, SQLAlchemy's
    connection and the greenlet around each read were 15% of the DMS adapter's CPU (docs/performance.md, 2026-12-08),
    against a few microseconds for SQLite's lookups on the loop's thread (`SqliteBackend.point_read`).

    Up to `connections` lookups at a time, one per connection, opened when first needed and reused newest first (a
    light load keeps to one). One connection alone serialised the lookups: on a busy machine each round trip waits
    for the server's process to be scheduled, and the adapter's consumers queued behind one another (2026-12-08).
    A connection lost is opened again at its next use; a lookup that found its connection gone (the database
    restarted while it sat idle) is tried once more on a new one, as the pool pings a connection idle for a while
    before using it (`ping_when_idle`)."""

    def __init__(self, dsn: str, *, connections: int = 8, command_timeout: float = 30) -> None:
        self._dsn = dsn
        self._command_timeout = command_timeout
        self._slots: asyncio.LifoQueue[Any] = asyncio.LifoQueue()
        for _ in range(connections):
            self._slots.put_nowait(None)
        self._open: set[Any] = set()

    async def fetchrow(self, sql: str, args: list[Any]) -> dict[str, Any] | None:
        conn = await self._slots.get()
        try:
            for attempt in (1, 2):
                fresh = conn is None or conn.is_closed()
                if fresh:
                    self._open.discard(conn)
                    conn = await self._connect()
                    self._open.add(conn)
                _TRIPS["statement"].inc()
                try:
                    record = await conn.fetchrow(sql, *args)
                except Exception:
                    if not conn.is_closed():
                        raise  # the statement failed, not the connection
                    if fresh or attempt == 2:
                        raise
                    continue
                return None if record is None else dict(record.items())
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._slots.put_nowait(conn)

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self._dsn, timeout=10, command_timeout=self._command_timeout)

    async def aclose(self) -> None:
        conns, self._open = self._open, set()
        for conn in conns:
            if not conn.is_closed():
                await conn.close(timeout=5)


class Notifications:
    """PostgreSQL's `LISTEN` on one channel, on an asyncpg connection of its own (not the pool's: a listening
    connection is held for the life of the process). A `NOTIFY` (`pg_notify`) is delivered at the commit of the
    transaction that made it, to every listening connection, within milliseconds, and costs the listeners a callback
    each; nothing is delivered while the connection is down, so what listens keeps a slower way of finding out (the
    waiters' periodic recheck, `esi.store.settled`). `ensure` connects, or reconnects after a loss, at most every
    `retry_s` seconds, never raising."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_payload: Callable[[str], None],
        *,
        ignore: set[int] | frozenset[int] = frozenset(),
        retry_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        #: server processes whose announcements are dropped: the listener's own pool's, whose writes this process
        #: made (and told its waiters of, with the row: heard first, an announcement would cost them a read)
        self._ignore = ignore
        self._channel = channel
        self._on_payload = on_payload
        self._retry_s = retry_s
        self._conn: Any = None
        self._next_try = 0.0
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def up(self) -> bool:
        """Listening now: what is announced from here on is heard."""
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> bool:
        """Listen, unless already listening or the last try failed less than `retry_s` ago; whether listening."""
        if self.up:
            return True
        if self._closed or time.monotonic() < self._next_try:
            return False
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect(), name=f"listen-{self._channel}")
        await asyncio.shield(self._connecting)
        return self.up

    async def _connect(self) -> None:
        import asyncpg

        self._next_try = time.monotonic() + self._retry_s
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            await conn.add_listener(self._channel, self._heard)
        except Exception as exc:  # noqa: BLE001 - the database is away: the caller's slower way still works
            log.warning("listening on %s failed: %s", self._channel, exc)
            return
        if self._closed:
            await conn.close()
            return
        conn.add_termination_listener(self._lost)
        self._conn = conn

    def _heard(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid not in self._ignore:
            self._on_payload(payload)

    def _lost(self, _conn: Any) -> None:
        if self._closed:
            return  # closed by `aclose`
        log.warning("the connection listening on %s was lost; listening again at the next wait", self._channel)
        self._conn = None

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            await asyncio.wait([self._connecting])
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)


# --- engines --------------------------------------------------------------------------------------------------------


def async_url(url: str) -> str:
    """Map a plain database URL to the async driver esi uses (PostgreSQL); SQLite keeps the stdlib driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: use sqlite or postgresql"
    )


def open_backend(url: str, *, durable_commits: bool = True) -> SqliteBackend | PostgresBackend:
    """The backend for a plain database URL, its engines created (nothing is connected yet).

    `durable_commits=False`: SQLite commits without an fsync (WAL with synchronous=NORMAL); see `Store.open`.
    """
    target = async_url(url)
    parsed = make_url(target)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        synchronous = "FULL" if durable_commits else "NORMAL"
        writer = sqlite_engine(target, synchronous=synchronous, begin="BEGIN IMMEDIATE", pool_size=2)
        in_memory = parsed.database in (None, "", ":memory:")
        reader = writer if in_memory else sqlite_engine(target, synchronous=synchronous, begin="BEGIN", pool_size=4)
        count_round_trips(writer, statements=False)
        return SqliteBackend(writer, reader, path=None if in_memory else parsed.database)
    async_engine = create_async_engine(target, pool_size=10, max_overflow=10, connect_args={"command_timeout": 30})
    count_round_trips(async_engine.sync_engine, statements=True)
    ping_when_idle(async_engine.sync_engine)
    event.listen(async_engine.sync_engine, "before_cursor_execute", flush_before_statement)
    return PostgresBackend(async_engine)


#: a pooled PostgreSQL connection unused for longer than this is pinged before it is used again
IDLE_PING_S = 5.0


def ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat unused for `IDLE_PING_S` seconds or more; a dead one is
    replaced by a new connection (the pool's pessimistic disconnect handling, as `pool_pre_ping` does).

    `pool_pre_ping` pings at every checkout, and on SQLAlchemy's asyncpg dialect a ping outside a transaction is
    three round trips (BEGIN, `;`, ROLLBACK): under load that was a third of all the round trips a request cost
    (docs/performance.md). A connection in use a moment ago was alive a moment ago; one that sat idle through a
    database restart or a dropped link is the one a ping saves a request from. A connection that breaks while in use
    fails that use, and the pool then drops every connection older than the failure."""
    from sqlalchemy.exc import DisconnectionError

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        now = time.monotonic()
        last = record.info.get("esi_used")
        if last is not None and now - last >= IDLE_PING_S:
            _TRIPS["ping"].inc(3)
            try:
                dbapi_connection.ping()
            except Exception as exc:
                raise DisconnectionError(f"a pooled connection idle for {now - last:.0f} s is gone: {exc}") from exc
        record.info["esi_used"] = now

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["esi_used"] = time.monotonic()

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)


def sqlite_engine(url: str, *, synchronous: str, begin: str, pool_size: int) -> Engine:
    """An engine on the SQLite file `url` whose transactions begin with `begin` (see `SqliteBackend`)."""
    engine = create_engine(
        url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=pool_size, max_overflow=4
    )
    event.listen(engine, "connect", lambda dbapi_conn, _rec: _sqlite_pragmas(dbapi_conn, synchronous))
    # take over BEGIN from the driver: SAVEPOINTs then work, and a writer's IMMEDIATE takes the write lock up front
    # (a deferred transaction that reads, then writes, can fail to upgrade its lock under contention)
    if begin == "BEGIN IMMEDIATE":
        event.listen(engine, "begin", lambda conn: _begin_immediate(conn.connection.dbapi_connection))
    else:
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine


#: how long a writer waits for another process's write lock before its transaction fails (SQLite's busy_timeout)
LOCK_WAIT_S = 30.0
#: the first and the longest pause between two attempts at the write lock
LOCK_POLL_FIRST_S, LOCK_POLL_MAX_S = 0.0002, 0.002


def _begin_immediate(raw: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for a write lock another process holds by trying again every 0.2-2 ms.

    Every process of a site on SQLite writes the same file, one at a time: the API's commits and the adapters'
    (their inbox rows, timelines) take turns at the write lock. SQLite's own busy handler waits 1, 2, 5, 10, 15,
    20, 25... ms between attempts, so a lock held for 3 ms costs the next writer 8, and a request's POST waits
    behind whichever process's turn it meets (issue 33: a client at its quota raised another's p99 through the
    adapters' writes for its requests). Here the BEGIN runs without SQLite's waiting (busy_timeout 0 for it alone)
    and is repeated at short pauses; the statements after it keep the connection's busy timeout (in WAL mode a
    transaction that holds the write lock does not meet another writer again before its commit)."""
    raw.execute("PRAGMA busy_timeout=0")
    started: float | None = None
    pause = LOCK_POLL_FIRST_S
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:  # BUSY, BUSY_RECOVERY...
                    raise
                if started is None:
                    started = time.monotonic()
                    metrics.SQLITE_LOCK_WAITS.inc()
                elif time.monotonic() - started > LOCK_WAIT_S:
                    raise
            time.sleep(pause)
            pause = min(pause * 1.5, LOCK_POLL_MAX_S)
    finally:
        if started is not None:
            metrics.SQLITE_LOCK_WAIT_SECONDS.inc(time.monotonic() - started)
        raw.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")


def _point_connection(path: str) -> sqlite3.Connection:
    """A connection in autocommit that writes nothing, for `SqliteBackend.point_read` (the loop's thread only)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA busy_timeout=0")
    conn.execute("PRAGMA query_only=ON")
    return conn


def _sqlite_pragmas(dbapi_connection: Any, synchronous: str) -> None:
    dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own (see sqlite_engine)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
