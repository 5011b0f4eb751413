"""The store, on SQLite and PostgreSQL: request tracking, outbox, inbox, retention, migrations."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, inspect, select
from sqlalchemy.exc import DBAPIError

from esi import metrics
from esi.api.app import ApiDeps, create_app
from esi.store import RequestStatus, Store, schema
from esi.store.backends import open_backend
from esi.store.statements import SELECT_REQUEST
from esi.systems.crm.tables import MIGRATIONS as CRM_TABLES
from esi.systems.crm.tables import OrderUpdates
from esi.systems.registry import load_registry

pytestmark = pytest.mark.integration


def _accept(store: Store, request_id: str, payload_hash: str = "h1", message_id: str | None = None):
    return store.requests.accept(
        request_id=request_id,
        source="1c",
        target="dms",
        message_type="create_user",
        payload_hash=payload_hash,
        message_id=message_id or f"m-{request_id}-{payload_hash}",
        routing_key="1c.request.dms.create_user",
        body=b'{"x": 1}',
    )


async def test_accept_is_idempotent_on_request_id_even_when_concurrent(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        results = await asyncio.gather(*(_accept(store, "R1", message_id=f"m{i}") for i in range(5)))
        assert sum(created for _, created, _ in results) == 1
        assert {first for _, _, first in results} == {"h1"}
        _, created, first = await _accept(store, "R1", payload_hash="h2")
        assert not created
        assert first == "h1"
        assert len(await store.outbox.pending()) == 1


async def test_outbox_rows_are_published_once_marked_and_the_request_moves_on(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await _accept(store, "R2")
        rows = await store.outbox.pending()
        assert [r.request_id for r in rows] == ["R2"]
        assert await store.outbox.backlog() == 1
        await store.outbox.mark_sent(rows)
        assert await store.outbox.pending() == []
        assert (await store.requests.get("R2")).status is RequestStatus.IN_PROGRESS
        await store.requests.record_response("R2", response={"ok": True}, error=None)
        record = await store.requests.get("R2")
        assert record.status is RequestStatus.COMPLETED
        assert record.response == {"ok": True}
        # a late retry report never reopens a finished request
        await store.requests.retrying("R2", attempt=2, error="late")
        assert (await store.requests.get("R2")).status is RequestStatus.COMPLETED


async def test_inbox_remembers_and_retention_forgets(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await store.inbox.record("dms", "old")
        await store.inbox.record("dms", "old")  # a concurrent duplicate is harmless
        assert await store.inbox.seen("dms", "old")
        assert not await store.inbox.seen("crm", "old")
        await _accept(store, "R3")
        await store.outbox.mark_sent(await store.outbox.pending())
        future = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="microseconds")
        await store.inbox.record("dms", "unsent-marker")
        await _accept(store, "R4")  # unsent: never pruned
        inbox, outbox = await store.inbox.prune(future), await store.outbox.prune_sent(future)
        assert inbox == 2
        assert outbox == 1
        assert not await store.inbox.seen("dms", "old")
        assert [r.request_id for r in await store.outbox.pending()] == ["R4"]


async def test_migrations_apply_once_even_from_several_openers(store_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(store_url) for _ in range(3)))
    try:
        versions = await stores[0].database.applied_migrations()
        assert sorted(versions) == sorted(schema.MIGRATIONS.versions)  # each once
    finally:
        for store in stores:
            await store.aclose()


def _version_3_tables() -> MetaData:
    """The tables as schema version 3 declared them: the same, but for system codes of at most 8 characters."""
    tables = MetaData()
    for table in schema.metadata.sorted_tables:
        table.to_metadata(tables)
    for column in ("source", "target"):
        tables.tables["esi_requests"].c[column].type = String(8)
    # where stores of that version recorded their migrations (esi.store.migrations copies them over once)
    Table(
        "esi_schema_migrations",
        tables,
        Column("version", Integer, primary_key=True),
        Column("applied_at", String(40), nullable=False),
    )
    return tables


async def _system_code_lengths(store: Store) -> dict[str, int]:
    def read(conn) -> dict[str, int]:
        columns = {c["name"]: c["type"] for c in inspect(conn).get_columns("esi_requests")}
        return {name: columns[name].length for name in ("source", "target")}

    return await store.database.read(read)


async def _accept_long_codes(store: Store) -> None:
    """A request between two systems whose codes are longer than the 8 characters of schema version 3."""
    await store.requests.accept(
        request_id="LONG1",
        source="warehouse_eu",
        target="warehouse",
        message_type="stock_level",
        payload_hash="h",
        message_id="m-long-1",
        routing_key="warehouse_eu.request.warehouse.stock_level",
        body=b"{}",
    )
    record = await store.requests.get("LONG1")
    assert record is not None
    assert record.target == "warehouse"
    assert record.status is RequestStatus.ACCEPTED
    r = schema.requests
    stored = await store.database.read(
        lambda conn: conn.execute(select(r.c.source, r.c.target).where(r.c.request_id == "LONG1")).one()
    )
    assert tuple(stored) == ("warehouse_eu", "warehouse")


async def test_order_updates_are_claimed_newest_first(store_url: str) -> None:
    async with await Store.open(store_url, migrations=[CRM_TABLES]) as store:  # the CRM's own table
        updates = OrderUpdates(store.database)
        t1, t2 = "2026-12-01T10:00:00.000000+00:00", "2026-12-01T11:00:00.000000+00:00"
        assert (await updates.claim_order_update("crm:o1", changed_at=t2, status="Delivered", message_id="m2")).held
        stale = await updates.claim_order_update("crm:o1", changed_at=t1, status="Shipped", message_id="m1")
        assert (stale.held, stale.status, stale.changed_at) == (False, "Delivered", t2)
        # a redelivery of the newest holds it again; the same moment from another message is not ordered after it
        assert (await updates.claim_order_update("crm:o1", changed_at=t2, status="Delivered", message_id="m2")).held
        assert (await updates.claim_order_update("crm:o1", changed_at=t2, status="Delivered", message_id="m3")).held
        newer = await updates.claim_order_update(
            "crm:o1", changed_at="2026-12-01T12:00:00.000000+00:00", status="Closed", message_id="m4"
        )
        assert newer.held
        assert (await updates.order_update("crm:o1")).status == "Closed"
        assert await updates.order_update("crm:other") is None
        # many first claims of one order at once: exactly one row, and the newest wins
        times = [f"2026-12-01T09:00:{i:02d}.000000+00:00" for i in range(10)]
        await asyncio.gather(
            *(
                updates.claim_order_update("crm:o2", changed_at=t, status=f"S{i}", message_id=f"n{i}")
                for i, t in enumerate(times)
            )
        )
        assert (await updates.order_update("crm:o2")).changed_at == times[-1]  # type: ignore[union-attr]


async def test_a_system_code_longer_than_8_characters_is_stored_and_read_back(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await _accept_long_codes(store)
        assert await _system_code_lengths(store) == {"source": 32, "target": 32}


async def test_a_store_created_by_schema_version_3_is_migrated_to_wider_system_codes(store_url: str) -> None:
    old = _version_3_tables()
    backend = open_backend(store_url)

    def create_version_3(conn) -> None:
        old.create_all(conn)
        conn.execute(
            insert(old.tables["esi_schema_migrations"]),
            [{"version": v, "applied_at": "2026-01-01T00:00:00+00:00"} for v in (1, 2, 3)],
        )

    def insert_long_code(conn) -> None:
        conn.execute(
            insert(old.tables["esi_requests"]).values(
                request_id="OLD1",
                source="1c",
                target="warehouse",
                message_type="t",
                status="accepted",
                payload_hash="h",
                attempts=0,
                created_at="2026-01-01",
                updated_at="2026-01-01",
            )
        )

    try:
        await backend.write_alone(create_version_3)
        if backend.dialect == "postgresql":  # the old column really refuses a long code: the test starts narrow
            with pytest.raises(DBAPIError):
                await backend.write_alone(insert_long_code)
    finally:
        await backend.aclose()

    async with await Store.open(store_url) as store:
        assert await store.database.applied_migrations() == sorted(schema.MIGRATIONS.versions)
        assert max(schema.MIGRATIONS.versions) >= 4
        if (
            not store.database.is_sqlite
        ):  # SQLite ignores VARCHAR lengths: its declaration stays, its values are not cut
            assert await _system_code_lengths(store) == {"source": 32, "target": 32}
        await _accept_long_codes(store)
    async with await Store.open(store_url) as store:  # opened again: nothing left to migrate, nothing lost
        assert await store.database.applied_migrations() == sorted(schema.MIGRATIONS.versions)
        assert (await store.requests.get("LONG1")).target == "warehouse"


async def test_api_answers_503_with_retry_after_when_the_backlog_is_full(tmp_path) -> None:
    async with await Store.open(f"sqlite:///{tmp_path}/b.db") as store:
        app = create_app(
            ApiDeps(
                registry=load_registry(), store=store, on_accepted=lambda row: None, max_pdf_bytes=1024, max_backlog=3
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://esi") as client:
            codes = []
            for i in range(6):
                r = await client.post("/send_to_dms", json={"user_id": f"U{i}", "name": "n", "email": "a@b.c"})
                codes.append(r.status_code)
                if r.status_code == 503:
                    assert r.headers["Retry-After"] == "5"
                    assert r.json()["error"]["code"] == "backlog_full"
                await asyncio.sleep(0.6)  # let the cached backlog count refresh (its TTL is 0.5 s)
        assert codes[:3] == [202, 202, 202]
        assert codes[3:] == [503, 503, 503]
        assert await store.outbox.backlog() == 3


async def test_a_waiter_wakes_at_once_here_and_by_rereading_for_another_process(store_url: str) -> None:
    async with await Store.open(store_url) as here, await Store.open(store_url) as elsewhere:
        await _accept(here, "W1")
        await _accept(here, "W2")
        # settled by this store: woken at once, long before its 30 s re-read
        first_reads = []
        waiter = asyncio.create_task(here.requests.wait_settled("W1", 10, recheck=30, check=first_reads.append))
        async with asyncio.timeout(5):
            while not first_reads:  # registered and read: the request as it stood then
                await asyncio.sleep(0.005)
        # meanwhile another process (an adapter) retried it: the answer must not be built from that first read
        await elsewhere.requests.retrying("W1", attempt=2, error="TransientError: DMS down")
        await here.requests.record_response("W1", response={"ok": 1}, error=None)
        record = await asyncio.wait_for(waiter, 5)
        assert record.status is RequestStatus.COMPLETED
        assert record.response == {"ok": 1}
        assert record.attempts == 2
        assert record.last_error == "TransientError: DMS down"
        assert record == await here.requests.get("W1")
        assert here.requests.settlements.waiting == 0
        # settled by another store (another process): seen by the periodic re-read
        waiter = asyncio.create_task(here.requests.wait_settled("W2", 10, recheck=0.05))
        await elsewhere.requests.dead_lettered("W2", error="boom", queue="dms_dead_letter_queue")
        record = await asyncio.wait_for(waiter, 5)
        assert record.status is RequestStatus.DEAD_LETTERED
        # nothing settles it: the wait ends with the state as it stands
        await _accept(here, "W3")
        loop = asyncio.get_running_loop()
        started = loop.time()
        record = await here.requests.wait_settled("W3", 0.2, recheck=0.05)
        assert record.status is RequestStatus.ACCEPTED
        assert loop.time() - started >= 0.2
        assert await here.requests.wait_settled("nobody", 1) is None


async def test_on_postgresql_a_settlement_by_another_process_wakes_the_waiter_without_the_recheck(pg_database) -> None:
    async with await Store.open(pg_database.url) as here, await Store.open(pg_database.url) as elsewhere:
        loop = asyncio.get_running_loop()
        for kind, rid in (("answer", "N1"), ("dead letter", "N2")):
            await _accept(here, rid)
            first_reads: list[object] = []
            # a recheck of 30 s: only the database's announcement can wake this waiter in time
            waiter = asyncio.create_task(here.requests.wait_settled(rid, 20, recheck=30, check=first_reads.append))
            async with asyncio.timeout(5):
                while not first_reads:  # listening, and the request read as it stood: accepted
                    await asyncio.sleep(0.005)
            started = loop.time()
            if kind == "answer":
                await elsewhere.requests.record_response(rid, response={"ok": 1}, error=None)
            else:
                await elsewhere.requests.dead_lettered(rid, error="boom", queue="dms_dead_letter_queue")
            record = await asyncio.wait_for(waiter, 10)
            assert record.status in (RequestStatus.COMPLETED, RequestStatus.DEAD_LETTERED), kind
            assert loop.time() - started < 0.5, kind  # milliseconds in practice; the recheck would be 30 s
        # a status that is not an end (a retry) announces nothing: the waiter waits on to its deadline
        await _accept(here, "N3")
        waiter = asyncio.create_task(here.requests.wait_settled("N3", 0.5, recheck=30))
        await elsewhere.requests.retrying("N3", attempt=2, error="TransientError: DMS down")
        assert (await asyncio.wait_for(waiter, 5)).status is RequestStatus.IN_PROGRESS


async def test_the_listening_connection_comes_back_after_a_loss_and_a_failure_does_not_raise(pg_database) -> None:
    from esi.store.backends import Notifications

    heard: list[str] = []
    async with await Store.open(pg_database.url) as store, await Store.open(pg_database.url) as other:
        listener = store.database.notifications("esi_test_channel", heard.append)
        assert listener is not None
        assert await listener.ensure()
        # the database drops the listening connection (a restart, a dropped link)
        await other.database.read(
            lambda conn: conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            ).all()
        )
        async with asyncio.timeout(5):
            while listener.up:  # noticed as lost
                await asyncio.sleep(0.01)
        listener._next_try = 0  # the retry pause (5 s) over
        assert await listener.ensure()  # listening again
        await other.database.write(lambda conn: conn.exec_driver_sql("SELECT pg_notify('esi_test_channel', 'again')"))
        async with asyncio.timeout(5):
            while heard != ["again"]:
                await asyncio.sleep(0.01)
    # a database that does not answer: no exception, not listening, no new try before the pause is over
    nowhere = Notifications("postgresql://nobody@127.0.0.1:1/none", "esi_test_channel", heard.append)
    assert await nowhere.ensure() is False
    assert await nowhere.ensure() is False
    await nowhere.aclose()


def _round_trips() -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for s in metrics.STORE_ROUND_TRIPS.collect()[0].samples
        if s.name == "esi_store_round_trips_total"
    }


async def test_on_postgresql_a_read_is_one_round_trip_and_a_busy_pool_is_not_pinged(pg_database) -> None:
    async with await Store.open(pg_database.url) as store:
        await _accept(store, "R1")
        await store.requests.get("R1")  # the pool has its connection
        before = _round_trips()
        for _ in range(5):
            assert (await store.requests.get("R1")).status is RequestStatus.ACCEPTED
        await store.requests.retrying("R1", attempt=2, error="x")
        after = _round_trips()
        spent = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
        # five reads: their statements alone (autocommit: no BEGIN, no ROLLBACK, no ping of a connection just used);
        # one write: BEGIN, its statement, COMMIT
        assert spent == {"statement": 6, "begin": 1, "commit": 1, "rollback": 0, "ping": 0}, spent
        # a waiter here, settled here: woken with the row the write returned, and the database's announcement of
        # this process's own write ignored (heard first, it would have woken the waiter to read the row again)
        seen: list[object] = []
        waiter = asyncio.create_task(store.requests.wait_settled("R1", 10, recheck=30, check=seen.append))
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.005)
        before = _round_trips()
        await store.requests.record_response("R1", response={"ok": 1}, error=None)
        assert (await asyncio.wait_for(waiter, 5)).status is RequestStatus.COMPLETED
        assert _round_trips()["statement"] - before["statement"] == 1


async def test_on_postgresql_a_pooled_connection_that_died_while_idle_is_replaced(pg_database, monkeypatch) -> None:
    from esi.store import backends

    async with await Store.open(pg_database.url) as store:
        await _accept(store, "D1")
        await store.requests.get("D1")
        # the database drops every connection of the store (a restart, a dropped link) while they sit in the pool
        async with await Store.open(pg_database.url) as other:
            await other.database.read(
                lambda conn: conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).all()
            )
        monkeypatch.setattr(backends, "IDLE_PING_S", 0.0)  # every connection counts as idle: each is pinged
        before = _round_trips().get("ping", 0)
        assert (await store.requests.get("D1")).status is RequestStatus.ACCEPTED  # pinged, found dead, replaced
        await store.requests.retrying("D1", attempt=2, error="x")  # and a write
        assert (await store.requests.get("D1")).status is RequestStatus.IN_PROGRESS
        assert _round_trips().get("ping", 0) > before


async def test_closing_the_settlements_answers_every_waiter_at_once(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await _accept(store, "C1")
        waiters = [asyncio.create_task(store.requests.wait_settled("C1", 30, recheck=30)) for _ in range(3)]
        async with asyncio.timeout(5):
            while store.requests.settlements.waiting < 3:  # all three are waiting
                await asyncio.sleep(0.005)
        store.requests.settlements.close()  # what the API does at shutdown
        records = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert [r.status for r in records] == [RequestStatus.ACCEPTED] * 3
        assert (await asyncio.wait_for(store.requests.wait_settled("C1", 30), 5)).status is RequestStatus.ACCEPTED


async def test_many_waiters_are_rechecked_by_one_lookup_per_interval(store_url: str) -> None:
    async with await Store.open(store_url) as here, await Store.open(store_url) as elsewhere:
        ids = [f"M{i}" for i in range(200)]
        await asyncio.gather(*(_accept(here, rid) for rid in ids))
        lookups: list[int] = []
        lookup = here.requests.settlements._lookup
        assert lookup is not None

        async def counting(batch: list[str]) -> list[str]:
            lookups.append(len(batch))
            return await lookup(batch)

        here.requests.settlements._lookup = counting
        asked: list[float] = []
        recheck_every = here.requests.settlements.recheck_every

        def counting_recheck(interval: float) -> None:  # a waiter calls it once it has read the request
            asked.append(interval)
            recheck_every(interval)

        here.requests.settlements.recheck_every = counting_recheck  # type: ignore[method-assign]
        waiters = [asyncio.create_task(here.requests.wait_settled(rid, 20, recheck=0.1)) for rid in ids]
        async with asyncio.timeout(5):
            while len(asked) < len(ids):  # every waiter has read its request (accepted) and waits
                await asyncio.sleep(0.005)
        # settled by another process: only the lookups can tell the waiters
        await asyncio.gather(*(elsewhere.requests.record_response(rid, response={"n": 1}, error=None) for rid in ids))
        records = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert all(r.status is RequestStatus.COMPLETED for r in records)
        assert 1 <= len(lookups) <= 20, lookups  # a read per waiter and interval would be 200 or more
        assert max(lookups) == len(ids)  # one query asked about every request waited on


async def test_reads_of_one_turn_run_together_and_fail_alone(tmp_path) -> None:
    async with await Store.open(f"sqlite:///{tmp_path}/reads.db") as store:
        await asyncio.gather(*(_accept(store, f"RD{i}") for i in range(150)))
        backend = store.database._backend
        jobs = []
        submit = backend._readers.submit

        def counting(fn, *args):
            jobs.append(len(args[0]) if args else 1)
            return submit(fn, *args)

        backend._readers.submit = counting

        def broken(conn):
            raise ValueError("this read is broken")

        def lookup(request_id: str):
            return lambda conn: SELECT_REQUEST.first(conn, {"rid": request_id})

        reads = [backend.read(lookup(f"RD{i}")) for i in range(150)] + [
            backend.read(broken),
            backend.read(lookup("nope")),
        ]
        results = await asyncio.gather(*reads, return_exceptions=True)
        assert [r["request_id"] for r in results[:150]] == [f"RD{i}" for i in range(150)]
        assert isinstance(results[150], ValueError)
        assert results[151] is None
        assert jobs == [64, 64, 24]  # 152 reads in three hand-offs to the reader threads


async def test_point_reads_run_on_the_loop_and_fall_back_to_the_readers(tmp_path) -> None:
    """The inbox check and a request by its id are read at once on the loop's thread, no hand-off; where that
    connection cannot read, the reader threads answer the same."""
    async with await Store.open(f"sqlite:///{tmp_path}/points.db") as store:
        await _accept(store, "PT1")
        await store.inbox.record("dms", "M1")
        backend = store.database._backend
        jobs: list[int] = []
        submit = backend._readers.submit

        def counting(fn, *args):
            jobs.append(len(args[0]) if args else 1)
            return submit(fn, *args)

        backend._readers.submit = counting
        assert (await store.requests.get("PT1")).request_id == "PT1"
        assert await store.requests.get("nope") is None
        assert await store.inbox.seen("dms", "M1") is True
        assert await store.inbox.seen("dms", "M2") is False
        assert jobs == []  # none of them went to a thread
        await store.inbox.record("dms", "M2")  # a commit of the writer thread is seen at once
        assert await store.inbox.seen("dms", "M2") is True

        backend._point.close()
        backend._point, backend._path = None, str(tmp_path)  # a directory: the point connection cannot open
        assert (await store.requests.get("PT1")).request_id == "PT1"
        assert await store.inbox.seen("dms", "M1") is True
        assert await store.inbox.seen("dms", "M3") is False
        assert jobs == [1, 1, 1]


async def test_a_pause_holds_until_resumed_or_until_it_runs_out(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        assert await store.pauses.system_pauses() == {}
        later = (datetime.now(UTC) + timedelta(hours=2)).isoformat(timespec="microseconds")
        await store.pauses.pause_system("crm", until=None, reason="Creatio upgrade", paused_by="ops")
        await store.pauses.pause_system("dms", until=later, reason=None, paused_by="ops")
        pauses = await store.pauses.system_pauses()
        assert set(pauses) == {"crm", "dms"}
        assert pauses["crm"].reason == "Creatio upgrade"
        assert pauses["crm"].until is None
        assert pauses["dms"].until == later
        assert pauses["dms"].paused_by == "ops"
        # two hours on, the DMS pause has lifted itself; the open-ended one holds
        in_three_hours = (datetime.now(UTC) + timedelta(hours=3)).isoformat(timespec="microseconds")
        assert set(await store.pauses.system_pauses(now=in_three_hours)) == {"crm"}
        # pausing again replaces the pause
        await store.pauses.pause_system("crm", until=later, reason="moved", paused_by="ops2")
        assert (await store.pauses.system_pauses())["crm"].reason == "moved"
        assert await store.pauses.resume_system("crm") is True
        assert await store.pauses.resume_system("crm") is False
        assert set(await store.pauses.system_pauses()) == {"dms"}


async def test_the_audit_log_keeps_who_did_what_newest_first(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await store.audit.record(
            "dlq.replay", client_id="ops", subject="dms_dead_letter_queue", count=3, detail={"ids": ["a", "b", "c"]}
        )
        await store.audit.record("system.pause", client_id="anna", subject="crm", detail={"reason": "upgrade"})
        entries = await store.audit.entries()
        assert [(e.action, e.client_id, e.subject, e.count) for e in entries] == [
            ("system.pause", "anna", "crm", None),
            ("dlq.replay", "ops", "dms_dead_letter_queue", 3),
        ]
        assert entries[1].detail == {"ids": ["a", "b", "c"]}
        assert entries[0].at >= entries[1].at
        assert [e.action for e in await store.audit.entries(action="dlq.replay")] == ["dlq.replay"]
        assert [e.client_id for e in await store.audit.entries(client_id="anna")] == ["anna"]
        assert await store.audit.entries(since=(datetime.now(UTC) + timedelta(minutes=1)).isoformat()) == []


async def _drop_connections(url: str) -> None:
    """The database ends every connection to it but this one (what a restart does to its clients)."""
    async with await Store.open(url) as other:
        await other.database.read(
            lambda conn: conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).all()
        )


async def test_a_database_that_does_not_answer_is_store_unavailable_not_the_drivers_error(pg_database) -> None:
    from esi.errors import StoreUnavailable, TransientError
    from esi.store.database import Database

    async with await Store.open(pg_database.url) as store:
        await _accept(store, "U1")
        await store.requests.get("U1")  # the pool holds live connections
        await _drop_connections(pg_database.url)
        # the connections in the pool are dead (used a moment ago: not pinged); the write on one fails, and says
        # so as the store's error, a transient one
        with pytest.raises(StoreUnavailable) as caught:
            await store.requests.retrying("U1", attempt=2, error="x")
        assert isinstance(caught.value, TransientError)
        assert caught.value.code == "store_unavailable"
        # the pool dropped its connections at the failure: the next write and read work
        async with asyncio.timeout(10):
            while True:
                try:
                    await store.requests.retrying("U1", attempt=2, error="x")
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
        assert (await store.requests.get("U1")).status is RequestStatus.IN_PROGRESS
        # a constraint is not unavailability: a duplicate key stays the driver's error
        with pytest.raises(DBAPIError):
            await store.database.write(
                lambda conn: (
                    conn.execute(insert(schema.inbox), {"consumer": "c", "message_id": "m", "processed_at": "2026"})
                    and conn.execute(insert(schema.inbox), {"consumer": "c", "message_id": "m", "processed_at": "2026"})
                )
            )
    # a server that refuses connections (stopped, restarting): reads and writes are StoreUnavailable
    nowhere = Database.open("postgresql://postgres@127.0.0.1:1/none")
    async with nowhere:
        with pytest.raises(StoreUnavailable):
            await nowhere.read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        with pytest.raises(StoreUnavailable):
            await nowhere.write(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())


async def test_the_api_answers_503_store_unavailable_while_the_database_is_away_and_stores_nothing(
    pg_database,
) -> None:
    async with await Store.open(pg_database.url) as store:
        app = create_app(
            ApiDeps(registry=load_registry(), store=store, on_accepted=lambda row: None, max_pdf_bytes=1024)
        )
        transport = httpx.ASGITransport(app=app)
        body = {"request_id": "SU-1", "user_id": "U1", "name": "n", "email": "a@b.c"}
        async with httpx.AsyncClient(transport=transport, base_url="http://esi") as client:
            assert (await client.post("/send_to_dms", json={**body, "request_id": "SU-0"})).status_code == 202
            await _drop_connections(pg_database.url)
            refused = await client.post("/send_to_dms", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "store_unavailable"
            # nothing was stored: the same request_id later is accepted as new, not as a duplicate
            async with asyncio.timeout(10):
                while (again := await client.post("/send_to_dms", json=body)).status_code == 503:
                    await asyncio.sleep(0.05)
            assert again.status_code == 202, again.text
            assert "X-Esi-Duplicate" not in again.headers
        assert (await store.requests.get("SU-1")).status is RequestStatus.ACCEPTED


async def test_a_transaction_postgresql_ended_for_a_deadlock_is_run_again_and_other_errors_are_not(
    pg_database,
) -> None:
    """Two processes' group commits updating the same requests in another order deadlock now and then (the chaos
    run, seed 31): PostgreSQL ends one transaction, which left nothing, and the store runs it again."""
    from esi.store import backends

    raise_once = "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '{}'; END $$"
    async with await Store.open(pg_database.url) as store:
        for code in ("40P01", "40001"):
            calls: list[int] = []

            def op(conn, code=code, calls=calls):
                calls.append(1)
                if len(calls) == 1:
                    conn.exec_driver_sql(raise_once.format(code))
                return conn.exec_driver_sql("SELECT 42").scalar()

            before = metrics.STORE_CONFLICT_RETRIES._value.get()
            assert await store.database.write(op) == 42
            assert len(calls) == 2
            assert metrics.STORE_CONFLICT_RETRIES._value.get() == before + 1
        # a conflict every time: given up after CONFLICT_TRIES, the driver's error raised
        always: list[int] = []

        def conflicting(conn):
            always.append(1)
            conn.exec_driver_sql(raise_once.format("40P01"))

        with pytest.raises(DBAPIError):
            await store.database.write_alone(conflicting)
        assert len(always) == backends.CONFLICT_TRIES
        # any other error is not retried
        other: list[int] = []

        def unique_violation(conn):
            other.append(1)
            conn.exec_driver_sql(raise_once.format("23505"))

        with pytest.raises(DBAPIError):
            await store.database.write_alone(unique_violation)
        assert len(other) == 1


async def test_a_group_commit_sends_its_inserts_once_per_statement_on_postgresql(pg_database) -> None:
    """On PostgreSQL the inserts of a batch of writes go as one pipelined statement per statement, not one per row:
    60 accepted requests (three rows each) in a batch or two are a handful of statements, and every row is there;
    a write that reads in the same transaction sees the rows gathered before it."""
    tag = uuid.uuid4().hex[:8]
    async with await Store.open(pg_database.url) as store:
        await _accept(store, f"{tag}-warm")  # the first connection out of the way
        backend = store.database._backend
        hold = asyncio.create_task(backend.write(lambda conn: None))  # the batcher busy: the next writes gather
        await asyncio.sleep(0)
        before = _round_trips()
        r = schema.requests

        def seen_by_a_later_write(conn):
            return conn.execute(select(r.c.request_id).where(r.c.request_id == f"{tag}-7")).scalars().all()

        accepts = [
            store.requests.accept(
                request_id=f"{tag}-{i}",
                source="1c",
                target="dms",
                message_type="create_user",
                payload_hash="h",
                message_id=f"{tag}-m{i}",
                routing_key="1c.request.dms.create_user",
                body=b"{}",
                keys=[f"{tag}-k{i}"],
            )
            for i in range(60)
        ]
        results = await asyncio.gather(*accepts, backend.write(seen_by_a_later_write), hold)
        sent = _round_trips()["statement"] - before["statement"]
        assert all(created for _, created, _ in results[:60])
        assert results[60] == [f"{tag}-7"]
        assert sent <= 10, f"{sent} statements for 60 requests of three rows each"
        o, k = schema.outbox, schema.request_keys
        counts = await store.database.read(
            lambda conn: [
                conn.execute(select(func.count()).where(column.like(f"{tag}-%"))).scalar()
                for column in (r.c.request_id, o.c.message_id, k.c.key)
            ]
        )
        assert counts == [61, 60, 60]


async def test_lookups_on_postgresql_survive_a_lost_connection(pg_database) -> None:
    """The connections kept for lookups (the inbox check, a request by its id): a connection the server ended is
    replaced at the next lookup, which answers as if nothing happened."""
    async with await Store.open(pg_database.url) as store:
        await _accept(store, "LK1")
        await store.inbox.record("dms", "M1")
        assert await store.inbox.seen("dms", "M1") is True
        assert await store.inbox.seen("dms", "M2") is False
        lookups = store.database._backend._lookups
        pids = [conn.get_server_pid() for conn in lookups._open]
        assert pids
        await store.database.write(
            lambda conn: [conn.execute(select(func.pg_terminate_backend(pid))) for pid in pids] and None
        )
        assert (await store.requests.get("LK1")).request_id == "LK1"
        assert await store.inbox.seen("dms", "M1") is True
        assert all(conn.get_server_pid() not in pids for conn in lookups._open if not conn.is_closed())
