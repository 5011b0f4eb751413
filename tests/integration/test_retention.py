"""Retention (ESI_REQUEST_RETENTION), on SQLite and PostgreSQL: expired requests go with their business keys and
timelines, everything else stays; and a pass over 100,000 expired requests does not stall the API."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from esi.cli import app as cli
from esi.store import Store, schema
from esi.store.retention import run_pass
from esi.testing import EsiSystem, PgDatabase, Vhost
from tests.support import unique

pytestmark = pytest.mark.integration

OLD = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="microseconds")
DAY = 86400.0


def _request(request_id: str, *, status: str, at: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "source": "1c",
        "target": "dms",
        "message_type": "create_user",
        "status": status,
        "payload_hash": "h",
        "response": None,
        "error": None,
        "attempts": 0,
        "last_error": None,
        "created_at": at,
        "updated_at": at,
        "client_id": None,
    }


def _event(request_id: str, event: str, at: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "at": at,
        "event": event,
        "service": "onec",
        "message_id": None,
        "causation_id": None,
        "message_type": "create_user",
        "detail": None,
    }


def _outbox(request_id: str, *, at: str, sent: bool) -> dict[str, Any]:
    return {
        "message_id": f"m-{request_id}",
        "request_id": request_id,
        "routing_key": "1c.request.dms.create_user",
        "body": b"{}",
        "created_at": at,
        "sent_at": at if sent else None,
    }


async def _insert(store: Store, table: Any, rows: list[dict[str, Any]], chunk: int = 10_000) -> None:
    """Rows straight into a table, bypassing the API (old requests cannot be made any other way)."""
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        await store.database.write_alone(lambda conn, part=part: conn.execute(insert(table), part))


async def _ids(store: Store, column: Any) -> set[str]:
    return set(await store.database.read(lambda conn: list(conn.execute(select(column)).scalars())))


async def _count(store: Store, table: Any) -> int:
    return int(await store.database.read(lambda conn: conn.execute(select(func.count()).select_from(table)).scalar()))


async def test_expired_requests_go_with_their_keys_and_timelines_and_nothing_else(store_url: str) -> None:
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    expired = {"old-completed": "completed", "old-failed": "failed", "old-dead": "dead_lettered"}
    kept = {
        "recent-completed": ("completed", now),
        "old-in-progress": ("in_progress", OLD),
        "old-accepted": ("accepted", OLD),
        "old-unsent": ("completed", OLD),
    }
    async with await Store.open(store_url) as store:
        requests = [_request(rid, status=status, at=OLD) for rid, status in expired.items()]
        requests += [_request(rid, status=status, at=at) for rid, (status, at) in kept.items()]
        await _insert(store, schema.requests, requests)
        every = [*expired, *kept]
        await _insert(store, schema.request_keys, [{"key": f"K-{rid}", "request_id": rid} for rid in every])
        await _insert(store, schema.events, [_event(rid, e, OLD) for rid in every for e in ("accepted", "published")])
        await _insert(store, schema.outbox, [_outbox(rid, at=OLD, sent=rid != "old-unsent") for rid in every])

        done = await run_pass(store, retention_s=30 * DAY, batch=2)

        assert (done.requests, done.keys, done.events, done.outbox) == (3, 3, 6, 3)
        assert done.batches == 2  # bounded: two requests per transaction
        assert await _ids(store, schema.requests.c.request_id) == set(kept)
        assert await _ids(store, schema.request_keys.c.request_id) == set(kept)
        assert await _ids(store, schema.events.c.request_id) == set(kept)
        assert await _ids(store, schema.outbox.c.request_id) == set(kept)
        assert await store.requests.timeline("old-in-progress")  # a request still under way keeps its old hops
        # a second pass finds nothing more
        again = await run_pass(store, retention_s=30 * DAY)
        assert again.requests == 0
        assert await _count(store, schema.requests) == len(kept)


async def test_a_request_settled_recently_stays_however_old_it_is(store_url: str) -> None:
    """Created long ago, answered an hour ago (a dead letter replayed, a long outage): not expired yet."""
    async with await Store.open(store_url) as store:
        row = _request("old-but-settled-now", status="completed", at=OLD)
        row["updated_at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
        await _insert(store, schema.requests, [row])
        assert (await run_pass(store, retention_s=30 * DAY)).requests == 0
        assert (await run_pass(store, retention_s=60.0)).requests == 1


def test_cli_runs_a_pass_and_prints_the_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/esi.db"

    async def seed() -> None:
        async with await Store.open(url) as store:
            await _insert(store, schema.requests, [_request(f"R{i}", status="completed", at=OLD) for i in range(5)])
            await _insert(store, schema.request_keys, [{"key": "K", "request_id": f"R{i}"} for i in range(5)])

    asyncio.run(seed())
    monkeypatch.setenv("ESI_DATABASE_URL", url)
    monkeypatch.setenv("ESI_REQUEST_RETENTION", "off")
    refused = CliRunner().invoke(cli, ["retention", "run"])
    assert refused.exit_code == 2
    assert "retention is off" in refused.output
    result = CliRunner().invoke(cli, ["retention", "run", "--older-than", "30d"])
    assert result.exit_code == 0, result.output
    assert "deleted 5 requests, 5 business keys, 0 timeline events" in result.output
    monkeypatch.setenv("ESI_REQUEST_RETENTION", "12h")
    assert '"requests": 0' in CliRunner().invoke(cli, ["retention", "run", "--json"]).output


# --- a pass over 100,000 expired requests while 1C posts ----------------------------------------------------------

EXPIRED = 100_000
RATE = 40.0  # POSTs per second, from 4 clients
WORKERS = 4


async def _seed_expired(store: Store) -> None:
    ids = [f"OLD-{i:06d}" for i in range(EXPIRED)]
    statuses = ("completed", "completed", "completed", "failed", "dead_lettered")
    requests = [_request(rid, status=statuses[i % 5], at=OLD) for i, rid in enumerate(ids)]
    keys = [{"key": f"U{i}", "request_id": rid} for i, rid in enumerate(ids)]
    events = [_event(rid, e, OLD) for rid in ids for e in ("accepted", "completed")]

    def write(conn: Any) -> None:  # one transaction: the running pass sees all of them or none
        for table, rows in ((schema.requests, requests), (schema.request_keys, keys), (schema.events, events)):
            for start in range(0, len(rows), 10_000):
                conn.execute(insert(table), rows[start : start + 10_000])

    await store.database.write_alone(write)


async def _post_load(
    api_url: str, stop: asyncio.Event, latencies: list[tuple[float, float]], posted: list[str]
) -> None:
    """`RATE` POSTs per second until `stop`: (start time, seconds) of each."""

    async def worker(client: httpx.AsyncClient) -> None:
        period = WORKERS / RATE
        while not stop.is_set():
            request_id = unique("NEW")
            started = time.monotonic()
            response = await client.post(
                "/send_to_dms",
                json={"request_id": request_id, "user_id": "U1", "name": "Иванов Иван", "email": "i@example.com"},
            )
            elapsed = time.monotonic() - started
            assert response.status_code == 202, response.text
            latencies.append((started, elapsed))
            posted.append(request_id)
            await asyncio.sleep(max(period - elapsed, 0))

    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(WORKERS)))


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_pass_over_100k_expired_requests_does_not_stall_the_api(backend: str, tmp_path: Path) -> None:
    vhost = Vhost()
    db = await asyncio.to_thread(PgDatabase) if backend == "postgres" else None
    url = db.url if db else f"sqlite:///{tmp_path}/esi.db"
    system = EsiSystem(
        workdir=tmp_path,
        amqp_url=vhost.url,
        database_url=url,
        extra_env={"ESI_REQUEST_RETENTION": "30d", "ESI_RETENTION_INTERVAL": "1"},
    )
    store = await Store.open(url)
    try:
        system.start("api", ["onec"])
        await asyncio.to_thread(system.wait_http, f"{system.api_url}/readyz")

        # without a pass (one runs every second, finding nothing)
        baseline: list[tuple[float, float]] = []
        stop, posted = asyncio.Event(), []
        load = asyncio.create_task(_post_load(system.api_url, stop, baseline, posted))
        await asyncio.sleep(6)
        stop.set()
        await load

        seeding = time.monotonic()
        await _seed_expired(store)
        seeded = time.monotonic()

        # during the pass: from the last look that found every expired request to the first that found none
        during: list[tuple[float, float]] = []
        stop = asyncio.Event()
        load = asyncio.create_task(_post_load(system.api_url, stop, during, posted))
        window_start = seeded
        deadline = time.monotonic() + 180
        while True:
            left = await _count(store, schema.requests) - len(posted)
            if left >= EXPIRED:
                window_start = time.monotonic()
            if left <= 0:
                break
            assert time.monotonic() < deadline, f"{left} expired requests left after 180 s"
            await asyncio.sleep(0.1)
        window_end = time.monotonic()
        stop.set()
        await load

        assert await _ids(store, schema.requests.c.request_id) == set(posted)  # every new request stays
        assert await _ids(store, schema.request_keys.c.request_id) <= set(posted)  # the old ones' keys went too
        assert await _ids(store, schema.events.c.request_id) <= set(posted)

        without = [seconds for _, seconds in baseline]
        with_pass = [seconds for started, seconds in during if window_start <= started <= window_end]
        p99_without, p99_with = _p99(without), _p99(with_pass)
        print(
            f"\n{backend}: seeding {EXPIRED} expired requests took {seeded - seeding:.1f} s; the pass "
            f"{window_end - window_start:.1f} s; POST p99 without a pass {p99_without * 1000:.1f} ms "
            f"(n={len(without)}), during it {p99_with * 1000:.1f} ms (n={len(with_pass)}), "
            f"max during {max(with_pass) * 1000:.1f} ms"
        )
        assert len(with_pass) >= 20, "too few POSTs fell within the pass to measure it"
        # a batch at a time: the POSTs wait for one batch at most, never for the whole pass
        assert p99_with < max(5 * p99_without, 0.5), (p99_without, p99_with)
        assert "retention: deleted" in system.logs()
    finally:
        await store.aclose()
        system.stop_all()
        vhost.delete()
        if db is not None:
            await asyncio.to_thread(db.drop)


async def test_batches_delete_exactly_the_expired_rows_while_requests_arrive(store_url: str) -> None:
    """Many small batches over a history that straddles the cutoff (statuses mixed, some answered late, some with
    an outbox row unsent), while new requests are accepted and answered at the same time: exactly the expired
    requests go, each with its keys, timeline and sent outbox row, and every other row stays."""
    now = datetime.now(UTC)
    rows, expected = [], set()
    statuses = ("completed", "failed", "dead_lettered", "in_progress", "accepted")
    for i in range(90):
        rid = f"H-{i:03d}"
        created = now - timedelta(days=31) + timedelta(hours=i * 0.5)  # from 31 days ago to 26 days ago
        status = statuses[i % 5]
        updated = created if i % 7 else now - timedelta(hours=2)  # one in seven answered two hours ago
        row = _request(rid, status=status, at=created.isoformat(timespec="microseconds"))
        row["updated_at"] = updated.isoformat(timespec="microseconds")
        rows.append(row)
        unsent = i % 11 == 0
        cutoff = now - timedelta(days=30)
        if created < cutoff and updated < cutoff and status in ("completed", "failed", "dead_lettered") and not unsent:
            expected.add(rid)
    every = [r["request_id"] for r in rows]
    async with await Store.open(store_url) as store:
        await _insert(store, schema.requests, rows)
        await _insert(store, schema.request_keys, [{"key": f"K-{rid}", "request_id": rid} for rid in every])
        await _insert(store, schema.events, [_event(rid, e, OLD) for rid in every for e in ("accepted", "published")])
        await _insert(store, schema.outbox, [_outbox(rid, at=OLD, sent=int(rid[2:]) % 11 != 0) for rid in every])
        assert 20 < len(expected) < 50  # both sides of the cutoff, and of each condition

        async def traffic() -> list[str]:
            made = []
            for i in range(30):
                rid = f"NEW-{i}"
                await store.requests.accept(
                    request_id=rid,
                    source="1c",
                    target="dms",
                    message_type="create_user",
                    payload_hash="h",
                    message_id=f"m-{rid}",
                    routing_key="1c.request.dms.create_user",
                    body=b"{}",
                    keys=[f"K-{rid}"],
                )
                await store.requests.record_response(rid, response={}, error=None)
                made.append(rid)
            return made

        done, made = await asyncio.gather(run_pass(store, retention_s=30 * DAY, batch=4), traffic())

        assert done.batches >= len(expected) // 4
        assert done.requests == len(expected)
        assert (done.keys, done.events, done.outbox) == (len(expected), 2 * len(expected), len(expected))
        left = set(every) - expected | set(made)
        assert await _ids(store, schema.requests.c.request_id) == left
        assert await _ids(store, schema.request_keys.c.request_id) == left
        assert await _ids(store, schema.events.c.request_id) == set(every) - expected  # the new ones: none written
        assert await _ids(store, schema.outbox.c.request_id) == left
