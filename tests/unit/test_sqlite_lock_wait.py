"""A SQLite writer waits for another process's write lock by short polls (`esi.store.backends._begin_immediate`),
not SQLite's busy handler (1, 2, 5, 10, 15, 20 ms ... between attempts); it still gives up after the timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from esi import metrics
from esi.store import backends
from esi.store.backends import sqlite_engine


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "lock.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.close()
    return path


def _holder(path: Path) -> sqlite3.Connection:
    """Another "process": a connection of its own holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def _value(counter: object) -> float:
    return counter._value.get()  # type: ignore[attr-defined]


def test_a_writer_waits_for_the_lock_and_begins_soon_after_it_is_released(tmp_path: Path) -> None:
    path = _file(tmp_path)
    engine = sqlite_engine(f"sqlite:///{path}", synchronous="FULL", begin="BEGIN IMMEDIATE", pool_size=1)
    other = _holder(path)
    released = threading.Event()
    release_at: list[float] = []

    def release() -> None:
        time.sleep(0.05)  # the other process's transaction, held for 50 ms
        release_at.append(time.perf_counter())
        other.execute("COMMIT")
        released.set()

    waits, waited = _value(metrics.SQLITE_LOCK_WAITS), _value(metrics.SQLITE_LOCK_WAIT_SECONDS)
    threading.Thread(target=release).start()
    with engine.begin() as conn:
        began = time.perf_counter()
        conn.execute(text("INSERT INTO t (x) VALUES (1)"))
    assert released.is_set()
    # SQLite's own handler would try at 1, 3, 8, 18, 33, 53, 78 ms: 28 ms after a release at 50 ms; a poll of at
    # most 2 ms (on a busy machine a few more) begins within a fraction of that
    assert began - release_at[0] < 0.015
    assert _value(metrics.SQLITE_LOCK_WAITS) == waits + 1
    assert _value(metrics.SQLITE_LOCK_WAIT_SECONDS) - waited >= 0.04
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
        # the connection keeps its busy timeout for everything after the BEGIN
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == int(backends.LOCK_WAIT_S * 1000)
    other.close()
    engine.dispose()


def test_a_writer_gives_up_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path)
    monkeypatch.setattr(backends, "LOCK_WAIT_S", 0.1)
    engine = sqlite_engine(f"sqlite:///{path}", synchronous="FULL", begin="BEGIN IMMEDIATE", pool_size=1)
    other = _holder(path)
    started = time.perf_counter()
    with pytest.raises(Exception, match="locked"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t (x) VALUES (1)"))
    assert 0.1 <= time.perf_counter() - started < 2
    other.execute("ROLLBACK")
    other.close()
    with engine.begin() as conn:  # the lock free again: the same engine writes at once
        conn.execute(text("INSERT INTO t (x) VALUES (2)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM t")).scalars().all() == [2]
    engine.dispose()
