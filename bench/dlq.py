"""Section `dlq` of `bench.run` (issue 29), or alone: `python -m bench.dlq [--quick] [--n N] [--store postgres]`.

N dead letters across two systems (DMS and CRM, half each), on a system of its own. They are seeded: published
(confirmed) straight into the two dead-letter queues with the headers esi's consumer writes, and their rows written
straight into the dead-letter index in batches — making 100,000 through the flow (a fake refusing each) would take
far longer than the rest of the benchmark, and what is measured reads the index and the queues, not how they were
filled. Measured:

- the console's first dead-letter page, and a filtered page (system, reason and a time range), p95 over 20 loads
  (target < 300 ms);
- `esi dlq list --limit 50` (a process started each time, Python's start included; target < 1 s);
- the API process's memory (VmRSS) growth while a replay job goes through all of them at 500/s (target < 50 MB),
  with the job's rate and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import percentile  # noqa: E402
from bench.procs import machine_info, read_status  # noqa: E402

TARGET_PAGE_P95_MS = 300.0
TARGET_LIST_S = 1.0
TARGET_RSS_GROWTH_MB = 50.0
REPLAY_RATE = 500
LOADS = 20


def _envelope(system: str, n: int) -> tuple[str, bytes, str]:
    request_id = f"BENCH-{system}-{n}-{uuid.uuid4().hex[:8]}"
    if system == "dms":
        message_type, payload = "create_user", {"user_id": f"BU{n}", "name": "Бенч Иван", "email": f"b{n}@example.com"}
    else:
        message_type, payload = "update_order_status", {"order_id": "ORD0001", "status": "Shipped"}
    message_id = uuid.uuid4().hex
    body = {
        "schema_version": 1,
        "message_id": message_id,
        "request_id": request_id,
        "source_system": "1c",
        "target_system": system,
        "message_type": message_type,
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": payload,
    }
    return message_id, json.dumps(body, ensure_ascii=False).encode(), request_id


async def seed(amqp_url: str, database_url: str, n: int) -> dict[str, Any]:
    """N dead letters, half in each DLQ, and their index rows."""
    from esi.bus import headers as h
    from esi.store import Store
    from esi.store.dead_letters import index_row

    started = time.perf_counter()
    connection = await aio_pika.connect(amqp_url)
    store = await Store.open(database_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchanges = {s: await channel.get_exchange(f"{s}_queue_dlx") for s in ("dms", "crm")}
        rows: list[dict[str, Any]] = []
        pending: list[Any] = []
        base = datetime.now(UTC) - timedelta(hours=2)
        for i in range(n):
            system = "dms" if i % 2 == 0 else "crm"
            message_id, body, request_id = _envelope(system, i)
            routing_key = f"1c.request.{system}.{'create_user' if system == 'dms' else 'update_order_status'}"
            at = (base + timedelta(milliseconds=50 * i)).isoformat(timespec="milliseconds")
            code = "http_400" if i % 3 else "http_422"
            headers = {
                h.H_ERROR_CLASS: "PermanentError",
                h.H_ERROR_CODE: code,
                h.H_ERROR_MESSAGE: f"{system} answered {code[5:]}",
                h.H_ATTEMPTS: 1,
                h.H_ORIGINAL_EXCHANGE: "main_exchange",
                h.H_ORIGINAL_ROUTING_KEY: routing_key,
                h.H_DEAD_LETTERED_AT: at,
            }
            message = aio_pika.Message(
                body,
                message_id=message_id,
                correlation_id=request_id,
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            pending.append(exchanges[system].publish(message, routing_key=""))
            key = f"BU{i}" if system == "dms" else "ORD0001"
            rows.append(
                index_row(
                    letter_id=message_id,
                    queue=f"{system}_dead_letter_queue",
                    system=system,
                    message_type="create_user" if system == "dms" else "update_order_status",
                    reason_class="PermanentError",
                    reason_code=code,
                    reason=f"{system} answered {code[5:]}",
                    keys=[key],
                    request_id=request_id,
                    routing_key=routing_key,
                    attempts=1,
                    dead_lettered_at=at,
                    size=len(body),
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
            if len(rows) >= 2000:
                await store.dead_letters.add(rows, indexed_by="consumer")
                rows.clear()
        await asyncio.gather(*pending)
        await store.dead_letters.add(rows, indexed_by="consumer")
    finally:
        await store.aclose()
        await connection.close()
    return {"n": n, "seconds": round(time.perf_counter() - started, 1)}


def _loads(url: str, loads: int = LOADS) -> dict[str, Any]:
    times = []
    with httpx.Client(timeout=60) as client:
        client.get(url).raise_for_status()  # warm: the first load of a fresh process compiles the templates
        for _ in range(loads):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return {
        "loads": loads,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95) or 0.0, 1),
        "max_ms": round(max(times), 1),
        "bytes": len(response.content),
    }


def _cli(env: dict[str, str], args: list[str], runs: int = 3) -> list[float]:
    from esi.testing import ESI

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([ESI, *args], env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"esi {' '.join(args)} failed: {done.stderr[-500:]}")
    return times


def _cli_list(env: dict[str, str], runs: int = 3) -> dict[str, Any]:
    """`esi dlq list --limit 50`, and `esi --version` beside it: the part of the time that is Python starting and
    importing esi (on a busy machine, most of it)."""
    times = _cli(env, ["dlq", "list", "--limit", "50"], runs)
    baseline = _cli(env, ["--version"], runs)
    return {
        "runs": runs,
        "seconds": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2),
        "esi_version_median_s": round(statistics.median(baseline), 2),
        "beyond_start_s": round(statistics.median(times) - statistics.median(baseline), 2),
    }


async def _index_queries(database_url: str, loads: int = LOADS) -> dict[str, Any]:
    """What the console's first page asks the store (groups, the first page) and a filtered count, in this
    process: the page's time without HTTP, rendering or the API process's share of a busy machine."""
    from esi.store import Store
    from esi.store.dead_letters import IndexFilter

    store = await Store.open(database_url)
    times = []
    try:
        for _ in range(loads):
            started = time.perf_counter()
            await store.dead_letters.groups(IndexFilter())
            await store.dead_letters.page(IndexFilter(), limit=50)
            await store.dead_letters.count(IndexFilter(system="crm", reason="422"))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await store.aclose()
    return {
        "loads": loads,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95) or 0, 1),
    }


def _replay(system: Any, n: int, timeout: float) -> dict[str, Any]:
    pid = system.processes["api"].proc.pid
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = read_status(pid).get("VmRSS")
            if rss:
                samples.append(rss)
            stop.wait(0.25)

    baseline = read_status(pid).get("VmRSS", 0)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    job = httpx.post(
        f"{system.api_url}/dlq/jobs", json={"kind": "replay", "system": "dms", "rate": REPLAY_RATE}, timeout=60
    )
    job.raise_for_status()
    crm = httpx.post(
        f"{system.api_url}/dlq/jobs", json={"kind": "replay", "system": "crm", "rate": REPLAY_RATE}, timeout=60
    )
    crm.raise_for_status()
    jobs = [job.json()["id"], crm.json()["id"]]
    final: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for job_id in jobs:
        while True:
            state = httpx.get(f"{system.api_url}/dlq/jobs/{job_id}", timeout=30).json()
            if state["state"] in ("done", "cancelled", "failed") or time.monotonic() > deadline:
                final.append(state)
                break
            time.sleep(1)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    peak = max(samples) if samples else baseline
    done = sum(j["done"] for j in final)
    return {
        "rate_limit": REPLAY_RATE,
        "jobs": final,
        "replayed": done,
        "seconds": round(elapsed, 1),
        "rate_per_s": round(done / elapsed, 1) if elapsed else None,
        "rss_baseline_mb": round(baseline / 1024, 1),
        "rss_peak_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - baseline) / 1024, 1),
        "finished": all(j["state"] == "done" for j in final),
        "note": "two jobs, one per system, run one after the other by the API process at 500/s each",
    }


def run(n: int, *, store: str = "postgres", say: Any = print) -> dict[str, Any]:
    from esi.testing import EsiSystem, PgDatabase, Vhost

    workdir = Path(tempfile.mkdtemp(prefix="esi-bench-dlq-"))
    vhost = Vhost()
    db = PgDatabase() if store == "postgres" else None
    system = EsiSystem(
        workdir=workdir,
        amqp_url=vhost.url,
        database_url=db.url if db else f"sqlite:///{workdir}/esi.db",
        extra_env={"ESI_DLQ_SWEEP_INTERVAL": "off", "ESI_LOG_LEVEL": "WARNING"},
    )
    origin = system.registry.origin.service
    result: dict[str, Any] = {"n": n, "store": store, "machine": machine_info()}
    try:
        system.start_all(
            {
                "fakes": list(system.registry.fakes),
                "api": [origin],
                "adapters": [s for s in system.registry.services if s != origin],
            }
        )
        say(f"dlq: seeding {n} dead letters (DLQs and index written directly)")
        result["seed"] = asyncio.run(seed(system.amqp_url, system.database_url, n))
        since = (datetime.now(UTC) - timedelta(hours=3)).isoformat(timespec="seconds")
        result["first_page"] = _loads(f"{system.api_url}/console/dlq")
        result["filtered_page"] = _loads(
            f"{system.api_url}/console/dlq?system=crm&reason=422&since={since.replace('+00:00', 'Z')}"
        )
        first, filtered = result["first_page"]["p95_ms"], result["filtered_page"]["p95_ms"]
        say(f"dlq: console first page p95 {first} ms, filtered {filtered} ms")
        result["index_queries"] = asyncio.run(_index_queries(system.database_url))
        result["cli_list"] = _cli_list(system.env())
        say(f"dlq: esi dlq list --limit 50: {result['cli_list']['seconds']} s")
        result["replay"] = _replay(system, n, timeout=max(120.0, n / REPLAY_RATE * 3))
        say(
            f"dlq: replay {result['replay']['replayed']} in {result['replay']['seconds']} s "
            f"({result['replay']['rate_per_s']}/s), API RSS +{result['replay']['rss_growth_mb']} MB"
        )
    finally:
        system.stop_all()
        system.kill_all()
        vhost.delete()
        if db is not None:
            db.drop()
    result["targets"] = {
        "first_page_p95_ms": [result.get("first_page", {}).get("p95_ms"), TARGET_PAGE_P95_MS],
        "filtered_page_p95_ms": [result.get("filtered_page", {}).get("p95_ms"), TARGET_PAGE_P95_MS],
        "cli_list_median_s": [result.get("cli_list", {}).get("median_s"), TARGET_LIST_S],
        "replay_rss_growth_mb": [result.get("replay", {}).get("rss_growth_mb"), TARGET_RSS_GROWTH_MB],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 dead letters (minutes, not an hour)")
    parser.add_argument("--n", type=int, help="dead letters (default 100,000; quick 5,000)")
    parser.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dlq.json"))
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.quick else 100_000)
    result = run(n, store=args.store)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    for name, (value, limit) in result["targets"].items():
        verdict = "?" if value is None else ("PASS" if value < limit else "FAIL")
        print(f"{name:28} {value!s:>10}  < {limit}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
