"""Several processes writing one SQLite file, as esi's processes do on a single host: how long a small write
transaction takes when the others hold the write lock, with esi's wait for the lock (short polls,
`esi.store.backends._begin_immediate`) against SQLite's own busy handler (1, 2, 5, 10, 15, 20, 25 ... ms between
attempts), runs interleaved.

    python -m bench.sqlite_writers [--processes 3] [--n 1500] [--rounds 2]

Each process runs `n` transactions of three inserts (synchronous=FULL, WAL: a commit with an fsync, as esi's), with
1 ms between them; printed per handler: the whole run's seconds, each process's p50, p99 and longest transaction.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _engine(path: Path, handler: str) -> Any:
    from sqlalchemy import create_engine, event

    from esi.store.backends import _sqlite_pragmas, sqlite_engine

    if handler == "esi":
        return sqlite_engine(f"sqlite:///{path}", synchronous="FULL", begin="BEGIN IMMEDIATE", pool_size=1)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})
    event.listen(engine, "connect", lambda dbapi_conn, _rec: _sqlite_pragmas(dbapi_conn, "FULL"))
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _writer(path: Path, handler: str, n: int, out: Any) -> None:
    from sqlalchemy import text

    engine = _engine(path, handler)
    times = []
    for i in range(n):
        started = time.perf_counter()
        with engine.begin() as conn:
            for _ in range(3):
                conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": i})
        times.append(time.perf_counter() - started)
        time.sleep(0.001)
    times.sort()
    out.put(
        {
            "p50_ms": round(times[len(times) // 2] * 1000, 2),
            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 2),
            "max_ms": round(times[-1] * 1000, 1),
        }
    )


def run_once(handler: str, processes: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="esi-bench-sqlite-") as tmp:
        path = Path(tmp) / "w.db"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.commit()
        conn.close()
        out: Any = mp.Queue()
        procs = [mp.Process(target=_writer, args=(path, handler, n, out)) for _ in range(processes)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        found = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        return {"handler": handler, "seconds": round(time.perf_counter() - started, 2), "processes": found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    for _ in range(args.rounds):
        for handler in ("esi", "sqlite"):
            print(json.dumps(run_once(handler, args.processes, args.n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
