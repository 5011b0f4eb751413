"""A backlog built while the DMS is down drains with nothing lost, nothing done twice and per-key order kept.

Issue 31, item 2. Against the real broker and the fake DMS: N create_user requests are accepted over HTTP while the
DMS answers 503 (its breaker opens, the DMS adapter stops consuming, the requests wait in `dms_queue`), then the DMS
recovers. While the backlog drains, 1C sends a fresh request for a user that a backlog request is still creating.
What must hold, whatever lane a fresh request takes (issue 31 asks for one): every backlog request completes, the
fake DMS created each user exactly once (counted at the fake, which records every call that reaches it), nothing
of the backlog was dead-lettered, and the fresh request with the same business key (`user_id`) is handled after
the backlog one: the user exists with the backlog request's details, and the fresh one is refused `user_exists`.
Had the fresh request overtaken the older one, the user would carry the fresh request's email and the backlog
request would have been the one refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
import httpx
import pytest

from esi.testing import EsiSystem, Vhost, wait_until

pytestmark = pytest.mark.integration

#: requests accepted while the DMS is down: a backlog deep enough to take the adapter a few prefetch windows
BACKLOG = 300
#: probes back off up to 1 s: the recovery is noticed within a second, the test stays short
DRAIN_ENV = {"DMS_BREAKER_PROBE_MAX": "1", "DMS_BREAKER_FAILURES": "3"}


@pytest.fixture(scope="module")
def drain_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    workdir = tmp_path_factory.mktemp("backlog-drain")
    vhost = Vhost()
    system = EsiSystem(
        workdir=workdir, amqp_url=vhost.url, database_url=f"sqlite:///{workdir}/esi.db", extra_env=DRAIN_ENV
    )
    try:
        # the API process first, alone: it migrates the SQLite store before the adapter opens it
        system.start_all({"fakes": ["fake-dms"], "onec": ["onec"]})
        system.start("dms", ["dms"])
        wait_until(lambda: _consumers(system, "dms_queue") == 1, timeout=60, interval=0.2, what="the DMS consumer")
        yield system
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, system.logs()[-3000:])
    except BaseException:
        print(system.logs()[-6000:])
        system.kill_all()
        raise
    finally:
        vhost.delete()


def _consumers(system: EsiSystem, queue: str) -> int:
    async def count() -> int:
        connection = await aio_pika.connect(system.amqp_url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count)
        finally:
            await connection.close()

    return asyncio.run(count())


def _circuit(system: EsiSystem) -> str:
    checks = httpx.get(f"{system.processes['dms'].health_url}/readyz", timeout=10).json()["checks"]
    return str(checks["circuit (dms)"]["state"])


def _user(tag: str, i: int, email: str) -> dict[str, Any]:
    return {"request_id": f"DRAIN-{tag}-{i}", "user_id": f"UD-{tag}-{i}", "name": "Сидоров Сидор", "email": email}


def test_a_backlog_drains_with_nothing_lost_nothing_twice_and_per_key_order_kept(drain_system: EsiSystem) -> None:
    system = drain_system
    system.reset_fakes()
    tag = uuid.uuid4().hex[:8]
    system.fault("dms", {"status": 503})  # down until told otherwise
    backlog = [_user(tag, i, f"backlog{i}@example.com") for i in range(BACKLOG)]
    with httpx.Client(base_url=system.api_url, timeout=30) as client:

        def post(body: dict[str, Any]) -> int:
            return client.post("/send_to_dms", json=body).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(post, backlog))
        assert statuses == [202] * BACKLOG

        # the breaker opened on the first failures: the backlog waits (in the work queue, or in its backlog lane)
        wait_until(lambda: _circuit(system) == "open", timeout=30, interval=0.2, what="the DMS breaker open")
        assert system.dms_state()["counters"]["created"] == 0

        # recovery: the next probe finds the DMS up, a trial call goes through, the backlog starts draining
        system.fault("dms", {})
        wait_until(lambda: _circuit(system) == "closed", timeout=30, interval=0.1, what="the DMS breaker closed")
        # 1C, during the drain, for the user whose request is the last of the backlog: a different email, so the
        # user the DMS ends with tells which of the two requests reached it first
        last = backlog[-1]
        fresh = {**last, "request_id": f"DRAIN-{tag}-fresh", "email": "fresh@example.com"}
        assert post(fresh) == 202

        def drained() -> dict[str, Any] | None:
            state = system.dms_state()
            return state if state["counters"]["calls"]["create_user"] >= BACKLOG + 1 else None

        wait_until(drained, timeout=45, interval=0.25, what=f"{BACKLOG + 1} create_user calls at the fake DMS")
        records = [system.wait_final(body["request_id"], timeout=30) for body in backlog]
        fresh_record = system.wait_final(fresh["request_id"], timeout=30)
        state = system.dms_state()
        dead_letters = client.get("/dlq").json()

    # nothing lost: every backlog request completed with the user the DMS created for it
    assert [r["status"] for r in records] == ["completed"] * BACKLOG, [r for r in records if r["status"] != "completed"]
    # nothing twice: one call per request reached the DMS (the fresh one's included), no replayed key, one user each
    counters = state["counters"]
    assert counters["calls"]["create_user"] == BACKLOG + 1, counters
    assert counters["created"] == BACKLOG, counters
    assert counters["idempotent_replays"] == 0, counters
    users = {u["external_id"]: u for u in state["users"]}
    assert len(state["users"]) == len(users) == BACKLOG
    assert set(users) == {body["user_id"] for body in backlog}
    # per-key order: the backlog request created the user; the fresh one, behind it, was refused as a duplicate
    assert users[last["user_id"]]["email"] == last["email"], users[last["user_id"]]
    assert fresh_record["status"] == "failed", fresh_record
    assert fresh_record["error"]["code"] == "user_exists", fresh_record
    assert counters["refused"] == 1, counters
    # nothing of the backlog dead-lettered by the outage: the one letter is the fresh request's business refusal
    assert dead_letters["count"] == 1, dead_letters
