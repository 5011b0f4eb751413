"""Exactly-once effects through duplicates, adapter crashes and broker outages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from esi.testing import EsiSystem, PgDatabase, Vhost, rabbitmqctl, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration

LAYOUT = {"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec", "crm"], "dms": ["dms"]}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def split_system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    """The system with the DMS adapter in a process of its own, so that it can be killed; on both stores."""
    workdir = tmp_path_factory.mktemp("esi-split")
    v = Vhost()
    db = PgDatabase() if request.param == "postgres" else None
    system = EsiSystem(
        workdir=workdir,
        amqp_url=v.url,
        database_url=db.url if db else f"sqlite:///{workdir}/esi.db",
        extra_env={"ESI_RETRY_DELAYS": "[0.2, 0.5, 1, 2]", "ESI_MAX_ATTEMPTS": "8"},
    )
    try:
        system.start_all(LAYOUT)
        yield system
    finally:
        for p in system.processes.values():
            if p.proc is not None and p.proc.poll() is None:
                p.stop()
        v.delete()
        if db is not None:
            db.drop()


def _broker_up() -> None:
    subprocess.run(["rabbitmqctl", "-q", "start_app"], capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, timeout=120)


@pytest.fixture
def broker_restorer() -> Iterator[None]:
    """Whatever happens in the test, the broker is running afterwards."""
    try:
        yield
    finally:
        _broker_up()


def users_with(system: EsiSystem, prefix: str) -> list[dict]:
    return [u for u in system.dms_state()["users"] if u["external_id"].startswith(prefix)]


async def _post_many(
    system: EsiSystem,
    tag: str,
    n: int,
    *,
    concurrency: int = 32,
    on_accepted: threading.Event | None = None,
    accepted_at: int = 0,
) -> list[int]:
    sem = asyncio.Semaphore(concurrency)
    accepted = 0
    async with httpx.AsyncClient(base_url=system.api_url, timeout=60) as client:

        async def one(i: int) -> int:
            nonlocal accepted
            body = {
                "request_id": f"{tag}-{i}",
                "user_id": f"U{tag}-{i}",
                "name": f"Клиент {i}",
                "email": f"c{i}@example.com",
            }
            async with sem:
                for _ in range(100):  # a 503 (backlog full) asks to come back later
                    r = await client.post("/send_to_dms", json=body)
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            if r.status_code == 202:
                accepted += 1
                if on_accepted is not None and accepted >= accepted_at:
                    on_accepted.set()
            return r.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def _all_completed(system: EsiSystem, tag: str, n: int, timeout: float) -> None:
    http = httpx.Client(base_url=system.api_url, timeout=10)  # kept alive: 2,000 reads, not 2,000 connections

    def status(i: int) -> dict:
        response = http.get(f"/requests/{tag}-{i}")
        assert response.status_code == 200, response.text
        return response.json()

    def done() -> bool:
        return all(status(i)["status"] == "completed" for i in range(n - 1, -1, -1))

    wait_until(
        lambda: len(users_with(system, f"U{tag}-")) >= n,
        timeout=timeout,
        interval=0.5,
        what=f"{n} users in the fake DMS",
    )
    try:
        wait_until(done, timeout=180, interval=0.5, what=f"all {n} requests completed")
    except AssertionError as exc:
        # name what stayed behind, so that an intermittent failure can be followed in the service logs
        pending = [
            (f"{tag}-{i}", r["status"], r.get("attempts"), r.get("last_error"))
            for i in range(n)
            if (r := status(i))["status"] != "completed"
        ]
        raise AssertionError(
            f"{exc}; {len(pending)} not completed, first: {pending[:10]}; logs in {system.workdir}"
        ) from None
    finally:
        http.close()


def test_the_same_request_posted_five_times_at_once_has_one_effect(split_system: EsiSystem) -> None:
    body = {"request_id": unique("SAME"), "user_id": unique("U"), "name": "Однажды", "email": "once@example.com"}
    calls_before = split_system.dms_state()["counters"]["calls"]["create_user"]

    async def five() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=split_system.api_url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/send_to_dms", json=body) for _ in range(5)))

    responses = asyncio.run(five())
    assert [r.status_code for r in responses] == [202] * 5
    assert len({r.text for r in responses}) == 1
    assert split_system.wait_final(body["request_id"])["status"] == "completed"
    assert len(users_with(split_system, body["user_id"])) == 1
    assert split_system.dms_state()["counters"]["calls"]["create_user"] == calls_before + 1


def test_a_duplicate_message_on_dms_queue_has_one_effect(split_system: EsiSystem) -> None:
    user_id = unique("UDUP")
    envelope = {
        "schema_version": 1,
        "message_id": uuid.uuid4().hex,
        "request_id": unique("INJ"),
        "source_system": "1c",
        "target_system": "dms",
        "message_type": "create_user",
        "timestamp": "2026-11-25T10:00:00Z",
        "payload": {"user_id": user_id, "name": "Дубль", "email": "dup@example.com"},
    }
    body = json.dumps(envelope).encode()

    async def inject() -> None:
        connection = await aio_pika.connect(split_system.amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("main_exchange")
        for _ in range(2):
            await exchange.publish(
                aio_pika.Message(
                    body, message_id=envelope["message_id"], delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key="1c.request.dms.create_user",
                mandatory=True,
            )
        await connection.close()

    asyncio.run(inject())
    wait_until(lambda: users_with(split_system, user_id), timeout=15, what="the injected user")
    # a third copy, later: by then the inbox knows the message and acks it without calling the DMS
    calls = split_system.dms_state()["counters"]["calls"]["create_user"]
    asyncio.run(inject())

    def acked_as_duplicate() -> bool:
        lines = split_system.processes["dms"].log_path.read_text().splitlines()
        return any(envelope["message_id"] in line and "duplicate" in line for line in lines)

    wait_until(acked_as_duplicate, timeout=15, what="the third copy to be acknowledged as a duplicate")
    assert len(users_with(split_system, user_id)) == 1
    assert split_system.dms_state()["counters"]["calls"]["create_user"] == calls


def test_kill_9_of_the_dms_adapter_mid_run_loses_and_duplicates_nothing(split_system: EsiSystem) -> None:
    tag = uuid.uuid4().hex[:8]
    n = 500
    split_system.fault("dms", {"latency_ms": 20})  # keep work in flight when the kill lands

    killed = threading.Event()

    def killer() -> None:
        wait_until(
            lambda: len(users_with(split_system, f"U{tag}-")) >= 100,
            timeout=120,
            interval=0.05,
            what="100 users before the kill",
        )
        split_system.processes["dms"].kill()  # SIGKILL: no chance to ack, publish or clean up
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    codes = asyncio.run(_post_many(split_system, tag, n))
    assert codes.count(202) == n
    thread.join(150)
    assert killed.is_set()
    assert len(users_with(split_system, f"U{tag}-")) < n, "the kill landed after all the work was done"
    split_system.fault("dms", {})
    split_system.start("dms", ["dms"])
    _all_completed(split_system, tag, n, timeout=120)
    users = users_with(split_system, f"U{tag}-")
    assert len(users) == n
    assert len({u["external_id"] for u in users}) == n


def test_broker_stopped_while_requests_are_posted(split_system: EsiSystem, broker_restorer: None) -> None:
    tag = uuid.uuid4().hex[:8]
    n = 200
    first = asyncio.run(_post_many(split_system, tag + "a", 20))
    assert first.count(202) == 20
    rabbitmqctl("stop_app")
    try:
        wait_until(
            lambda: httpx.get(f"{split_system.api_url}/readyz", timeout=10).status_code == 503,
            timeout=30,
            interval=0.2,
            what="readiness to report the broker outage",
        )
        ready = httpx.get(f"{split_system.api_url}/readyz", timeout=10).json()
        assert ready["checks"]["broker (onec)"]["status"] == "down"
        dms_ready = httpx.get(f"{split_system.processes['dms'].health_url}/readyz", timeout=10)
        assert dms_ready.status_code == 503
        assert dms_ready.json()["checks"]["broker (dms)"]["status"] == "down"
        codes = asyncio.run(_post_many(split_system, tag, n))
        assert codes.count(202) == n  # accepted into the outbox while the broker is away
    finally:
        _broker_up()
    for url in (split_system.api_url, split_system.processes["dms"].health_url):
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200,  # noqa: B023 - called at once
            timeout=60,
            interval=0.2,
            what=f"readiness of {url} to recover by itself",
        )
    _all_completed(split_system, tag, n, timeout=120)
    _all_completed(split_system, tag + "a", 20, timeout=30)
    assert len(users_with(split_system, f"U{tag}-")) == n


@pytest.mark.timeout(900)
def test_broker_restarted_in_the_middle_of_a_2000_request_run(split_system: EsiSystem, broker_restorer: None) -> None:
    tag = uuid.uuid4().hex[:8]
    n = 2000
    restarted = threading.Event()

    def restarter() -> None:
        wait_until(
            lambda: len(users_with(split_system, f"U{tag}-")) >= 400,
            timeout=300,
            interval=0.1,
            what="400 users before the restart",
        )
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], capture_output=True, timeout=120)
        _broker_up()
        restarted.set()

    thread = threading.Thread(target=restarter, daemon=True)
    thread.start()
    codes = asyncio.run(_post_many(split_system, tag, n, concurrency=64))
    assert codes.count(202) == n
    thread.join(300)
    assert restarted.is_set()
    _all_completed(split_system, tag, n, timeout=600)
    users = users_with(split_system, f"U{tag}-")
    assert len(users) == n
    assert len({u["external_id"] for u in users}) == n
    assert Path(split_system.processes["dms"].log_path).exists()
