"""Two API replicas on one PostgreSQL store and broker (issue 31): a request waited on at one replica whose answer the
other replica consumed is answered within milliseconds — the database announces the settlement (LISTEN/NOTIFY),
not the periodic recheck (set to a minute here, so that only the announcement can be in time)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from esi.testing import EsiSystem, PgDatabase, Vhost, free_port
from tests.support import unique

pytestmark = pytest.mark.integration

#: the replicas' recheck of requests settled elsewhere: far longer than any wait measured below
RECHECK_S = 60


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EsiSystem, str]]:
    vhost, db = Vhost(), PgDatabase()
    system = EsiSystem(
        workdir=tmp_path_factory.mktemp("replicas"),
        amqp_url=vhost.url,
        database_url=db.url,
        extra_env={"ESI_WAIT_RECHECK": str(RECHECK_S)},
    )
    second = f"http://127.0.0.1:{free_port()}"
    try:
        system.start_all({"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec"], "dms": ["dms"]})
        system.start("onec2", ["onec"], env={"ESI_HTTP_PORT": second.rsplit(":", 1)[1]})
        system.wait_http(f"{second}/readyz")
        yield system, second
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, system.logs()[-3000:])
    except BaseException:
        print(system.logs()[-5000:])
        system.kill_all()
        raise
    finally:
        vhost.delete()
        db.drop()


def settled_here(base: str) -> float:
    """How many requests this replica recorded the answer of (its `esi_requests_settled` counter)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "esi_requests_settled"
        for sample in family.samples
        if sample.name == "esi_requests_settled_total"
    )


def test_a_waiter_is_answered_at_once_when_the_other_replica_records_the_answer(
    two_replicas: tuple[EsiSystem, str],
) -> None:
    system, second = two_replicas
    before = settled_here(second)
    waits: list[float] = []
    for _ in range(20):  # one at a time, all to the first replica; the replicas' consumers take the answers in turn
        request_id = unique("REPLICA")
        body = {"request_id": request_id, "user_id": unique("U"), "name": "Реплика", "email": "r@example.com"}
        started = time.monotonic()
        response = system.post("/send_to_dms", body, headers={"Prefer": "wait=20"})
        waits.append(time.monotonic() - started)
        assert response.status_code == 200, response.text  # 202 would mean the wait ran out: nobody woke it
        assert response.json()["status"] == "completed", response.json()
    by_second = settled_here(second) - before
    assert by_second >= 1, "the second replica recorded none of the answers: nothing was tested"
    # every wait ended within a fraction of the recheck (a minute): the other replica's answers were announced
    assert max(waits) < 2.0, sorted(waits)
    assert sorted(waits)[len(waits) // 2] < 0.5, sorted(waits)
