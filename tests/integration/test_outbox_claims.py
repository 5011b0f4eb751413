"""Several outbox relays over one store: a sweep claims what it publishes, so no two sweeps publish one row."""

from __future__ import annotations

import asyncio

import pytest

from esi.store import Store

pytestmark = pytest.mark.integration


def _accept(store: Store, request_id: str):  # type: ignore[no-untyped-def]
    return store.requests.accept(
        request_id=request_id,
        source="1c",
        target="dms",
        message_type="create_user",
        payload_hash="h",
        message_id=f"m-{request_id}",
        routing_key="1c.request.dms.create_user",
        body=b'{"x": 1}',
    )


async def test_concurrent_sweeps_of_several_processes_never_claim_a_row_twice(store_url: str) -> None:
    stores = [await Store.open(store_url) for _ in range(3)]  # three processes' connections to one database
    try:
        for i in range(300):
            await _accept(stores[0], f"C{i}")
        claims = await asyncio.gather(
            *(store.outbox.claim(limit=60, fresh_s=0, lease_s=60) for store in stores for _ in range(3))
        )
        claimed = [row.message_id for rows in claims for row in rows]
        assert len(claimed) == len(set(claimed)) == 300  # every row once, none twice
        # claimed rows are held for the lease: another sweep finds nothing
        assert await stores[1].outbox.claim(limit=500, fresh_s=0, lease_s=60) == []
        # a released row (its publish failed) is free again, at once
        rows = claims[0][:5]
        await stores[0].outbox.release(rows)
        again = await stores[2].outbox.claim(limit=500, fresh_s=0, lease_s=60)
        assert {r.message_id for r in again} == {r.message_id for r in rows}
        # a claim whose lease ended (a relay that died holding it) is taken over
        await _accept(stores[0], "LATE")
        assert [r.request_id for r in await stores[0].outbox.claim(limit=10, fresh_s=0, lease_s=0)] == ["LATE"]
        assert [r.request_id for r in await stores[1].outbox.claim(limit=10, fresh_s=0, lease_s=60)] == ["LATE"]
    finally:
        for store in stores:
            await store.aclose()


async def test_a_sweep_leaves_fresh_rows_to_their_fast_path_but_takes_its_own_failed_ones(store_url: str) -> None:
    async with await Store.open(store_url) as store:
        await _accept(store, "F1")
        await _accept(store, "F2")
        # committed just now: the fast path of the process that committed them is publishing them
        assert await store.outbox.claim(limit=10, fresh_s=30, lease_s=60) == []
        # ... unless this process's fast path failed on one of them: its sweep retries that one at once
        mine = await store.outbox.claim(limit=10, fresh_s=30, lease_s=60, mine=["m-F2"])
        assert [r.request_id for r in mine] == ["F2"]
        # marked sent: never claimed again
        await store.outbox.mark_sent(mine)
        assert [r.request_id for r in await store.outbox.claim(limit=10, fresh_s=0, lease_s=60)] == ["F1"]
