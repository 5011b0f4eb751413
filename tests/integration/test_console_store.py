"""The store's queries for the operator console, on SQLite and PostgreSQL: search, requests per minute, a
request's message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from esi.store import RequestStatus, Store
from esi.store.cursors import cursor_of, parse_cursor

pytestmark = pytest.mark.integration


async def _accept(
    store: Store,
    request_id: str,
    *,
    target: str = "dms",
    message_type: str = "create_user",
    keys: list[str] | None = None,
    client_id: str | None = None,
) -> None:
    await store.requests.accept(
        request_id=request_id,
        source="1c",
        target=target,
        message_type=message_type,
        payload_hash="h",
        message_id=f"m-{request_id}",
        routing_key=f"1c.request.{target}.{message_type}",
        body=b'{"request_id": "%s", "payload": {"name": "x"}}' % request_id.encode(),
        keys=keys,
        client_id=client_id,
    )


async def test_search_by_id_key_status_type_time_and_client(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        before = datetime.now(UTC).isoformat(timespec="microseconds")
        await _accept(store, "S-1", target="crm", message_type="update_order_status", keys=["ORD1"], client_id="erp")
        await _accept(store, "S-2", target="crm", message_type="update_order_status", keys=["ORD1"], client_id="ops")
        await _accept(store, "S-3", keys=["U1"], client_id="erp")
        await store.requests.record_response("S-2", response={"ok": True}, error=None)

        async def ids(**query: object) -> list[str]:
            return [r.request_id for r in await store.queries.search_requests(**query)]  # type: ignore[arg-type]

        assert await ids(text="ORD1") == ["S-2", "S-1"]  # newest first
        assert await ids(text="S-3") == ["S-3"]  # a request id
        assert await ids(text="ORD1", status=RequestStatus.COMPLETED.value) == ["S-2"]
        assert await ids(message_type="create_user") == ["S-3"]
        assert await ids(text="ORD1", client_id="erp") == ["S-1"]
        assert await ids(since=before, limit=2) == ["S-3", "S-2"]
        assert await ids(since=before, limit=2, offset=2) == ["S-1"]
        assert await ids(until=before) == []
        assert await ids(text="nothing") == []


async def test_requests_per_minute_by_target_and_status_and_the_message_kept(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        for i in range(3):
            await _accept(store, f"M-{i}")
        await _accept(store, "M-crm", target="crm", message_type="update_order_status")
        await store.requests.record_response("M-0", response={}, error=None)
        since = (datetime.now(UTC) - timedelta(minutes=60)).isoformat(timespec="microseconds")
        counts = await store.queries.requests_per_minute(since)
        totals: dict[tuple[str, str], int] = {}
        for target, at, status, n in counts:
            assert datetime.strptime(at, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC) >= datetime.fromisoformat(
                since
            ) - timedelta(minutes=1)
            totals[(target, status)] = totals.get((target, status), 0) + n
        assert totals == {("dms", "completed"): 1, ("dms", "accepted"): 2, ("crm", "accepted"): 1}
        assert await store.queries.requests_per_minute(datetime.now(UTC).isoformat(timespec="microseconds")) == []
        assert await store.queries.request_message("M-1") == b'{"request_id": "M-1", "payload": {"name": "x"}}'
        assert await store.queries.request_message("unknown") is None


async def _insert_requests(store: Store, rows: list[tuple[str, str, str]]) -> None:
    """(request_id, created_at, key) rows straight into the tables: several requests created in the same
    microsecond (which the API could make on a busy site) to check the cursor's tie-break."""
    from sqlalchemy import insert

    from esi.store import schema

    def write(conn):  # type: ignore[no-untyped-def]
        conn.execute(
            insert(schema.requests),
            [
                {
                    "request_id": rid,
                    "source": "1c",
                    "target": "dms",
                    "message_type": "create_user",
                    "status": "completed",
                    "payload_hash": "h",
                    "attempts": 1,
                    "created_at": at,
                    "updated_at": at,
                }
                for rid, at, _ in rows
            ],
        )
        conn.execute(insert(schema.request_keys), [{"key": key, "request_id": rid} for rid, _, key in rows])

    await store.database.write_alone(write)


async def test_keyset_pages_return_every_row_once_while_requests_are_added(store_url: str) -> None:
    """The console's list and `find_by_key`, a page at a time by cursor: every request there when the first page
    was read comes exactly once across the pages, although new ones are accepted between the reads (an offset
    would shift them onto the next page again); ties of `created_at` are broken by the request id."""
    async with await Store.open(store_url) as store:
        tied = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(timespec="microseconds")
        await _insert_requests(store, [(f"T-{i}", tied, "K-PAGES") for i in range(7)])
        for i in range(16):
            await _accept(store, f"P-{i:02d}", keys=["K-PAGES"])
        added = 0

        async def add_two() -> None:
            nonlocal added
            for _ in range(2):
                await _accept(store, f"NEW-{added:03d}", keys=["K-PAGES"])
                added += 1

        for read, everything in (
            (
                lambda after: store.queries.search_requests(text="K-PAGES", limit=4, after=after),
                lambda: store.queries.search_requests(text="K-PAGES", limit=1000),
            ),
            (
                lambda after: store.queries.search_requests(limit=4, after=after),
                lambda: store.queries.search_requests(limit=1000),
            ),
            (
                lambda after: store.requests.find_by_key("K-PAGES", limit=4, after=after),
                lambda: store.requests.find_by_key("K-PAGES", limit=1000),
            ),
        ):
            there = [r.request_id for r in await everything()]
            assert len(there) >= 23
            seen: list[str] = []
            after = None
            while True:
                page = await read(after)
                seen += [r.request_id for r in page]
                if len(page) < 4:
                    break
                after = cursor_of(page[-1])
                await add_two()  # between two pages: newer than every page read
            assert len(seen) == len(set(seen)), seen  # none twice
            assert seen == there  # every one there at the start, in order, and none of the new ones
            assert added > 0


async def test_keyset_pages_back_and_forth_are_the_same_pages(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        for i in range(11):
            await _accept(store, f"B-{i:02d}")
        newest_first = [r.request_id for r in await store.queries.search_requests(limit=100)]
        assert newest_first == [f"B-{i:02d}" for i in reversed(range(11))]
        first = await store.queries.search_requests(limit=4)
        second = await store.queries.search_requests(limit=4, after=cursor_of(first[-1]))
        third = await store.queries.search_requests(limit=4, after=cursor_of(second[-1]))
        assert [r.request_id for r in first + second + third] == newest_first
        # back from the third page: the second, newest first
        back = await store.queries.search_requests(limit=4, before=cursor_of(third[0]))
        assert [r.request_id for r in back] == [r.request_id for r in second]
        with pytest.raises(ValueError, match="not a cursor"):
            parse_cursor("bm90IGEgY3Vyc29y")
