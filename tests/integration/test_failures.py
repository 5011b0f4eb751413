"""Failures: bad messages parked at once, transient faults retried along the ladder, the DLQ tool."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
import uuid

import aio_pika
import httpx
import pytest

from esi.bus.dead_letters import DeadLetters, Filters
from esi.bus.topology import build_topology
from esi.systems.registry import load_registry
from esi.testing import ESI, EsiSystem, free_port, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration

LADDER = [0.2, 0.4, 0.8, 1.6]  # what tests.support configures (ESI_RETRY_DELAYS), with ESI_MAX_ATTEMPTS=4


async def _dead_letters(system: EsiSystem, **filters) -> list:
    connection = await aio_pika.connect(system.amqp_url)
    try:
        return await DeadLetters(connection, build_topology(load_registry().queues(), retry_delays=LADDER)).list(
            Filters(**filters)
        )
    finally:
        await connection.close()


def dead_letters(system: EsiSystem, **filters) -> list:
    return asyncio.run(_dead_letters(system, **filters))


async def _publish_raw(system: EsiSystem, items: list[tuple[str, bytes, str]]) -> None:
    connection = await aio_pika.connect(system.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("main_exchange")
        for routing_key, body, message_id in items:
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=routing_key,
                mandatory=True,
            )
    finally:
        await connection.close()


def _envelope(message_type: str, payload: dict, **overrides) -> dict:
    return {
        "schema_version": 1,
        "message_id": uuid.uuid4().hex,
        "request_id": unique("RAW"),
        "source_system": "1c",
        "target_system": "dms",
        "message_type": message_type,
        "timestamp": "2026-11-25T10:00:00Z",
        "payload": payload,
        **overrides,
    }


def test_bad_messages_on_a_queue_are_parked_at_once_and_the_queue_keeps_flowing(esi_sqlite: EsiSystem) -> None:
    good_payload = {"user_id": unique("U"), "name": "Сидоров", "email": "s@example.com"}
    no_request_id = _envelope("create_user", good_payload)
    del no_request_id["request_id"]
    cases = {
        "invalid_json": b'{"message_type": "create_user", ',
        "not_utf8": b'{"name": "\xff\xfe\xfa"}',
        "invalid_envelope": json.dumps(no_request_id).encode(),
        "unknown_message_type": json.dumps(_envelope("teleport_user", good_payload)).encode(),
        "invalid_payload": json.dumps(_envelope("create_user", {"user_id": "U1", "name": "x"})).encode(),
    }
    ids = {code: unique(code) for code in cases}
    good = _envelope("create_user", good_payload)
    asyncio.run(
        _publish_raw(
            esi_sqlite,
            [("1c.request.dms.create_user", body, ids[code]) for code, body in cases.items()]
            + [("1c.request.dms.create_user", json.dumps(good).encode(), good["message_id"])],
        )
    )

    # the good message behind the bad ones is handled
    wait_until(
        lambda: any(u["external_id"] == good_payload["user_id"] for u in esi_sqlite.dms_state()["users"]),
        timeout=15,
        what="the good message to be handled",
    )

    def parked() -> dict:
        found = {d.id: d for d in dead_letters(esi_sqlite, queue="dms") if d.id in ids.values()}
        return found if len(found) == len(ids) else {}

    found = wait_until(parked, timeout=15, interval=0.2, what="every bad message in dms_dead_letter_queue")
    for code, body in cases.items():
        letter = found[ids[code]]
        assert letter.body == body, code  # byte for byte
        assert letter.attempts == 1, code
        assert letter.error_class == "InvalidMessage", code
        assert letter.headers["x-esi-error-code"] == code, (code, letter.headers)
        assert letter.routing_key == "1c.request.dms.create_user"
        assert letter.exchange == "main_exchange"
        assert letter.headers["x-esi-adapter"] == "dms"
    assert "user_id" not in found[ids["invalid_payload"]].reason or "email" in found[ids["invalid_payload"]].reason
    assert "teleport_user" in found[ids["unknown_message_type"]].reason
    assert "request_id" in found[ids["invalid_envelope"]].reason


def test_a_passing_dms_outage_heals_along_the_ladder(esi_sqlite: EsiSystem) -> None:
    esi_sqlite.reset_fakes()
    esi_sqlite.fault("dms", {"status": 503, "count": 3})
    request_id = unique("RETRY")
    user_id = unique("U")
    assert (
        esi_sqlite.post(
            "/send_to_dms", {"request_id": request_id, "user_id": user_id, "name": "Ретрай", "email": "r@example.com"}
        ).status_code
        == 202
    )
    final = esi_sqlite.wait_final(request_id, timeout=20)
    assert final["status"] == "completed", final
    assert final["attempts"] == 3
    assert "503" in final["last_error"]

    state = esi_sqlite.dms_state()
    assert state["faults"]["injected"] == 3
    assert [u["external_id"] for u in state["users"]].count(user_id) == 1
    times = state["faults"]["call_times"][-4:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, delay in zip(gaps, LADDER):
        assert delay * 0.9 <= gap <= delay + 1.0, (gaps, LADDER)
    assert not [d for d in dead_letters(esi_sqlite, queue="dms") if request_id in d.body.decode(errors="replace")]


def test_creatio_down_for_good_parks_the_message_after_max_attempts_then_replay_completes(
    esi_sqlite: EsiSystem,
) -> None:
    esi_sqlite.reset_fakes()
    esi_sqlite.fault("crm", {"status": 503})
    request_id = unique("DOWN")
    assert (
        esi_sqlite.post(
            "/send_to_crm", {"request_id": request_id, "order_id": "ORD9876", "status": "Delivered"}
        ).status_code
        == 202
    )
    final = esi_sqlite.wait_final(request_id, timeout=20)
    assert final["status"] == "dead_lettered", final
    assert "503" in final["error"]["message"]
    assert final["error"]["queue"] == "crm_dead_letter_queue"

    letters = [d for d in dead_letters(esi_sqlite, queue="crm") if request_id in d.body.decode()]
    assert len(letters) == 1
    letter = letters[0]
    assert letter.attempts == 4  # exactly ESI_MAX_ATTEMPTS
    assert letter.error_class == "TransientError"
    assert "503" in letter.reason
    assert letter.routing_key == "1c.request.crm.update_order_status"
    assert letter.headers["x-esi-first-failure"] < letter.headers["x-esi-last-failure"]
    assert any(d["reason"] == "expired" for d in letter.headers["x-death"])  # the ladder, as the broker wrote it
    assert esi_sqlite.creatio_state()["faults"]["injected"] == 4

    # the listing left it where it was
    assert [d.id for d in dead_letters(esi_sqlite, queue="crm") if d.id == letter.id] == [letter.id]

    esi_sqlite.fault("crm", {})
    env = {**esi_sqlite.env()}
    # a node list whose first node is down: the CLI goes on to the next one
    down_first = {**env, "ESI_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/,{env['ESI_AMQP_URL']}"}
    listed = subprocess.run(
        [ESI, "dlq", "list", "--queue", "crm", "--json"], env=down_first, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert letter.id in listed.stdout
    replay = subprocess.run([ESI, "dlq", "replay", letter.id], env=env, capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 message" in replay.stdout

    final = esi_sqlite.wait_final(request_id, timeout=20, final=("completed",))
    assert final["response"]["status"] == "Delivered"
    assert not [d for d in dead_letters(esi_sqlite, queue="crm") if d.id == letter.id]


@pytest.mark.parametrize("case", ["creatio_400", "unknown_status"])
def test_permanent_crm_errors_are_parked_on_the_first_attempt(esi_sqlite: EsiSystem, case: str) -> None:
    esi_sqlite.reset_fakes()
    body = {"order_id": "ORD0001", "status": "Shipped"}
    if case == "creatio_400":
        esi_sqlite.fault("crm", {"status": 400, "count": 1})
    else:
        body["status"] = "Teleported"
    request_id = unique(case)
    assert esi_sqlite.post("/send_to_crm", {"request_id": request_id, **body}).status_code == 202
    final = esi_sqlite.wait_final(request_id)
    assert final["status"] in ("failed", "dead_lettered"), final
    assert final["attempts"] == 0

    def parked() -> list:
        return [d for d in dead_letters(esi_sqlite, queue="crm") if request_id in d.body.decode()]

    letters = wait_until(parked, timeout=10, what="the message in crm_dead_letter_queue")
    assert letters[0].attempts == 1
    assert ("400" if case == "creatio_400" else "Teleported") in letters[0].reason


@pytest.mark.parametrize("mode", ["401", "redirect", "html"])
def test_an_expired_creatio_session_is_renewed_without_spending_a_retry(esi_sqlite: EsiSystem, mode: str) -> None:
    esi_sqlite.reset_fakes()
    warm = unique("WARM")
    esi_sqlite.post("/send_to_crm", {"request_id": warm, "order_id": "ORD0002", "status": "Confirmed"})
    assert esi_sqlite.wait_final(warm)["status"] == "completed"
    logins = esi_sqlite.creatio_state()["counters"]["logins"]

    httpx.post(f"{esi_sqlite.creatio_url}/_fake/expire-session", json={"mode": mode}, timeout=10).raise_for_status()
    request_id = unique("EXPIRED")
    esi_sqlite.post("/send_to_crm", {"request_id": request_id, "order_id": "ORD0002", "status": "Shipped"})
    final = esi_sqlite.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["attempts"] == 0  # no retry of ours was spent
    assert esi_sqlite.creatio_state()["counters"]["logins"] == logins + 1


def test_a_thousand_messages_with_every_tenth_failing(esi_sqlite: EsiSystem) -> None:
    esi_sqlite.reset_fakes()
    tag = uuid.uuid4().hex[:8]

    async def post_all() -> list[int]:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=esi_sqlite.api_url, timeout=60) as client:

            async def one(i: int) -> int:
                email = f"u{i}@refused.example" if i % 10 == 0 else f"u{i}@example.com"
                async with sem:
                    r = await client.post(
                        "/send_to_dms",
                        json={
                            "request_id": f"K{tag}-{i}",
                            "user_id": f"U{tag}-{i}",
                            "name": f"Пользователь {i}",
                            "email": email,
                        },
                    )
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(1000)))

    started = time.monotonic()
    codes = asyncio.run(post_all())
    assert codes.count(202) == 1000

    def all_final() -> bool:
        return esi_sqlite.dms_state()["counters"]["created"] >= 900 and all(
            esi_sqlite.get_request(f"K{tag}-{i}")["status"] in ("completed", "failed") for i in range(0, 1000, 10)
        )

    wait_until(all_final, timeout=120, interval=0.5, what="all 1000 requests to end")
    # the DMS has created them all; their answers may still be on the way to the store: each is awaited (long poll)
    statuses = [esi_sqlite.wait_final(f"K{tag}-{i}", timeout=60)["status"] for i in range(1000)]
    assert statuses.count("completed") == 900
    assert statuses.count("failed") == 100
    users = [u for u in esi_sqlite.dms_state()["users"] if u["external_id"].startswith(f"U{tag}-")]
    assert len(users) == 900
    assert len({u["external_id"] for u in users}) == 900
    parked = [d for d in dead_letters(esi_sqlite, queue="dms", reason="refused") if f"K{tag}-" in d.body.decode()]
    assert len(parked) == 100
    assert len({d.id for d in parked}) == 100
    print(f"1000 requests in {time.monotonic() - started:.1f}s")
