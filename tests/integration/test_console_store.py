"""The store's queries for the operator console, on SQLite and PostgreSQL: search, requests per minute, a
request's message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from esi.store import RequestStatus, Store

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
