"""Replay and purge jobs: run by the API service, throttled, with progress; a replay killed (-9) half-way resumes
after the restart and finishes with each effect once at the DMS; a cancelled job leaves the rest parked."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx
import pytest

from esi.store import Store
from esi.testing import EsiSystem, Vhost, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    workdir = tmp_path_factory.mktemp("esi")
    v = Vhost()
    esi = EsiSystem(
        workdir=workdir,
        amqp_url=v.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        extra_env={"ESI_DLQ_JOB_LEASE": "2", "ESI_DLQ_SWEEP_INTERVAL": "off"},
    )
    origin = esi.registry.origin.service
    layout = {
        "fakes": list(esi.registry.fakes),
        "api": [origin],
        "adapters": [s for s in esi.registry.services if s != origin],
    }
    try:
        esi.start_all(layout)
        yield esi
        esi.stop_all()
    except BaseException:
        print(esi.logs()[-6000:])
        esi.kill_all()
        raise
    finally:
        v.delete()


def _dead_letter_users(system: EsiSystem, n: int) -> dict[str, str]:
    """`n` create_user requests refused by the DMS (400: parked at once); request id → user id."""
    system.reset_fakes()
    system.fault("dms", {"status": 400, "count": n})
    users = {unique("JOB"): unique("U") for _ in range(n)}
    for request_id, user_id in users.items():
        body = {"request_id": request_id, "user_id": user_id, "name": "Петров Пётр", "email": "p@example.com"}
        assert system.post("/send_to_dms", body).status_code == 202
    for request_id in users:
        assert system.wait_final(request_id, timeout=60)["status"] == "dead_lettered"
    system.fault("dms", {})
    return users


def _ids(system: EsiSystem, users: dict[str, str]) -> list[str]:
    rows = httpx.get(f"{system.api_url}/dlq", params={"system": "dms", "limit": 1000}, timeout=10).json()["messages"]
    ids = [r["id"] for r in rows if r["request_id"] in users]
    assert len(ids) == len(users)
    return ids


def _job(system: EsiSystem, job_id: int) -> dict:
    response = httpx.get(f"{system.api_url}/dlq/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _job_in_store(system: EsiSystem, job_id: int) -> dict:
    """The job as the store has it (the API is down)."""

    async def read() -> dict:
        store = await Store.open(system.database_url)
        try:
            job = await store.dlq_jobs.get(job_id)
            assert job is not None
            return job.progress()
        finally:
            await store.aclose()

    return asyncio.run(read())


def test_a_replay_job_killed_half_way_resumes_and_replays_each_once(system: EsiSystem) -> None:
    users = _dead_letter_users(system, 40)
    ids = _ids(system, users)
    started = system.post("/dlq/jobs", {"kind": "replay", "ids": ids, "rate": 4})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["total"] == 40
    assert job["state"] == "pending"

    wait_until(lambda: _job(system, job["id"])["done"] >= 8, timeout=60, what="the job to be under way")
    system.processes["api"].stop(signal.SIGKILL)
    during = _job_in_store(system, job["id"])
    assert 8 <= during["done"] < 40, during  # it had not finished when it was killed
    system.start("api", [system.registry.origin.service])
    system.wait_http(f"{system.api_url}/readyz")

    final = wait_until(
        lambda: (j := _job(system, job["id"]))["state"] == "done" and j, timeout=90, what="the job to finish"
    )
    assert final["done"] == 40, final
    assert final["failed"] == 0
    assert final["remaining"] == 0
    assert final["done"] + final["failed"] + final["remaining"] == final["total"]

    for request_id in users:
        assert system.wait_final(request_id, timeout=30, final=("completed",))["status"] == "completed"
    dms_users = [u["external_id"] for u in system.dms_state()["users"]]
    for user_id in users.values():
        assert dms_users.count(user_id) == 1, user_id  # each effect once at the DMS
    # each replayed once: one `replayed` hop in each timeline; nothing of the job left in the DLQ or the index
    for request_id in list(users)[:10]:
        timeline = httpx.get(f"{system.api_url}/requests/{request_id}/timeline", timeout=10).json()
        events = timeline["events"] if isinstance(timeline, dict) else timeline
        assert [e["event"] for e in events].count("replayed") == 1
    left = httpx.get(f"{system.api_url}/dlq", params={"system": "dms", "limit": 1000}, timeout=10).json()
    assert not [m for m in left["messages"] if m["request_id"] in users]

    audit = httpx.get(f"{system.api_url}/audit", params={"action": "dlq.replay"}, timeout=10).json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    assert any(e["count"] == 40 and e["detail"]["job"] == job["id"] for e in entries)


def test_a_cancelled_job_stops_and_leaves_the_rest_parked(system: EsiSystem) -> None:
    users = _dead_letter_users(system, 8)
    ids = _ids(system, users)
    job = system.post("/dlq/jobs", {"kind": "replay", "ids": ids, "rate": 1}).json()
    wait_until(lambda: _job(system, job["id"])["done"] >= 1, timeout=60, what="the job to be under way")
    cancelled = system.post(f"/dlq/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    final = wait_until(
        lambda: (j := _job(system, job["id"]))["state"] == "cancelled" and j, timeout=30, what="the job to stop"
    )
    assert 1 <= final["done"] < 8, final
    parked = httpx.get(f"{system.api_url}/dlq", params={"system": "dms", "limit": 1000}, timeout=10).json()
    still = [m for m in parked["messages"] if m["request_id"] in users]
    assert len(still) == 8 - final["done"]

    # a purge job needs the count confirmed; then the rest go for good
    refused = system.post("/dlq/jobs", {"kind": "purge", "ids": [m["id"] for m in still], "expect": 99})
    assert refused.status_code == 409
    purge = system.post("/dlq/jobs", {"kind": "purge", "ids": [m["id"] for m in still], "expect": len(still)})
    assert purge.status_code == 202, purge.text
    done = wait_until(
        lambda: (j := _job(system, purge.json()["id"]))["state"] == "done" and j, timeout=60, what="the purge"
    )
    assert done["done"] == len(still)
    assert httpx.get(f"{system.api_url}/dlq/{still[0]['id']}", timeout=10).status_code == 404
