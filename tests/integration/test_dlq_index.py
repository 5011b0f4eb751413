"""The dead-letter index: written with the request's state when esi dead-letters, by the sweep for a message that
reached a DLQ some other way, and read a keyset page at a time (every row once while rows are added)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from esi.store import Store
from esi.store.dead_letters import IndexFilter, index_row
from esi.testing import ESI, EsiSystem, PgDatabase, Vhost, wait_until
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
        extra_env={"ESI_DLQ_SWEEP_INTERVAL": "1"},
    )
    try:
        esi.start_all()
        yield esi
        esi.stop_all()
    except BaseException:
        print(esi.logs()[-5000:])
        esi.kill_all()
        raise
    finally:
        v.delete()


def _list(esi: EsiSystem, **params: str) -> dict:
    response = httpx.get(f"{esi.api_url}/dlq", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_dead_letter_is_indexed_with_the_request_state(system: EsiSystem) -> None:
    system.reset_fakes()
    system.fault("dms", {"status": 400, "count": 1})
    request_id, user_id = unique("IDX"), unique("U")
    assert (
        system.post(
            "/send_to_dms",
            {"request_id": request_id, "user_id": user_id, "name": "Иванов Иван", "email": "iv@example.com"},
        ).status_code
        == 202
    )
    final = system.wait_final(request_id)
    assert final["status"] == "dead_lettered", final

    # the request reads dead_lettered: its index row is there (the same transaction)
    found = _list(system, key=user_id)
    assert found["total"] == 1, found
    row = found["messages"][0]
    assert row["request_id"] == request_id
    assert row["system"] == "dms"
    assert row["queue"] == "dms_dead_letter_queue"
    assert row["message_type"] == "create_user"
    assert row["error_class"] == "PermanentError"
    assert "400" in row["reason"]
    assert user_id in row["keys"]
    assert row["size"] > 0
    assert row["attempts"] == 1

    # filters: system, type, reason, time; the opened letter comes from its queue with its body
    assert _list(system, system="crm", key=user_id)["total"] == 0
    assert _list(system, type="create_user", key=user_id)["total"] == 1
    assert _list(system, reason="400", key=user_id)["total"] == 1
    assert _list(system, since="1h", key=user_id)["total"] == 1
    opened = httpx.get(f"{system.api_url}/dlq/{row['id']}", timeout=10).json()
    assert user_id in opened["body"]

    # the CLI lists from the index (no broker)
    listed = subprocess.run(
        [ESI, "dlq", "list", "--key", user_id, "--json"], env=system.env(), capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[0])["request_id"] == request_id


async def _publish_to_dlq(system: EsiSystem, body: bytes, message_id: str) -> None:
    connection = await aio_pika.connect(system.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("dms_queue_dlx")
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="",
        )
    finally:
        await connection.close()


def test_the_sweep_indexes_a_raw_poison_message(system: EsiSystem) -> None:
    marker = uuid.uuid4().hex
    ident = f"raw-{marker}"
    asyncio.run(_publish_to_dlq(system, f"not json {marker}".encode(), ident))

    def indexed() -> dict | None:
        rows = [m for m in _list(system, system="dms", limit="1000")["messages"] if m["id"] == ident]
        return rows[0] if rows else None

    row = wait_until(indexed, timeout=20, what="the sweep to index the raw message")
    assert row["message_type"] == "unknown"
    assert row["code"] == "broker"
    assert row["size"] == len(f"not json {marker}")
    # indexed once, whatever the number of sweeps since
    wait_until(lambda: len([m for m in _list(system, limit="1000")["messages"] if m["id"] == ident]) == 1, timeout=5)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/esi.db"
        return
    db = PgDatabase()
    try:
        yield db.url
    finally:
        db.drop()


def _row(n: int, system: str = "dms") -> dict:
    return index_row(
        letter_id=f"L{n:06d}-{uuid.uuid4().hex[:6]}",
        queue=f"{system}_dead_letter_queue",
        system=system,
        message_type="create_user",
        reason_class="PermanentError",
        reason_code="http_400",
        reason="refused",
        keys=[f"K{n % 7}"],
        request_id=f"R{n}",
        routing_key="1c.request.dms.create_user",
        attempts=1,
        dead_lettered_at=None,
        size=100,
    )


async def _pages_while_adding(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.dead_letters.add([_row(n) for n in range(95)], indexed_by="sweep")
        before = {r.id for r in (await store.dead_letters.page(IndexFilter(), limit=1000))[0]}
        seen: list[int] = []
        cursor: int | None = None
        added = 95
        while True:
            page, cursor = await store.dead_letters.page(IndexFilter(), after=cursor, limit=10)
            seen += [r.id for r in page]
            # others dead-letter while the operator pages
            await store.dead_letters.add([_row(added), _row(added + 1, "crm")], indexed_by="consumer")
            added += 2
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), "a row came twice"
        assert before <= set(seen), "a row was skipped"
        assert await store.dead_letters.count(IndexFilter()) == added
        assert await store.dead_letters.count(IndexFilter(system="crm")) == (added - 95) // 2
        assert await store.dead_letters.count(IndexFilter(key="K3")) == len([n for n in range(added) if n % 7 == 3])
        groups = await store.dead_letters.groups(IndexFilter())
        assert sum(g["count"] for g in groups) == added
        # settled rows are pruned after the retention; parked ones stay whatever their age
        await store.dead_letters.settle(seen[:5], "replayed")
        assert await store.dead_letters.prune("9999-12-31") == 5
        assert await store.dead_letters.count(IndexFilter(state=None)) == added - 5
    finally:
        await store.aclose()


def test_cursor_pages_return_every_row_once_while_rows_are_added(store_url: str) -> None:
    asyncio.run(_pages_while_adding(store_url))


def test_an_edit_is_checked_against_the_schema_then_replayed(system: EsiSystem) -> None:
    system.reset_fakes()
    request_id, user_id = unique("EDIT"), unique("U")
    body = {"request_id": request_id, "user_id": user_id, "name": "Сидоров Сидор", "email": "s@refused.example"}
    assert system.post("/send_to_dms", body).status_code == 202
    assert system.wait_final(request_id)["status"] == "failed"  # the DMS refused the e-mail's domain (422)
    [row] = _list(system, key=user_id)["messages"]
    payload = httpx.get(f"{system.api_url}/dlq/{row['id']}", timeout=10).json()["body"]
    payload = json.loads(payload)["payload"]

    refused = system.post(f"/dlq/{row['id']}/edit", {"payload": {**payload, "email": "not an address"}})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_edit"
    assert "email: 'not an address' does not match" in refused.json()["error"]["message"]
    assert _list(system, key=user_id)["total"] == 1  # still parked, nothing published

    edited = system.post(f"/dlq/{row['id']}/edit", {"payload": {**payload, "email": "s@example.com"}})
    assert edited.status_code == 200, edited.text
    final = system.wait_final(request_id, final=("completed",))
    assert final["response"]["dms_user_id"].startswith("DMS-")
    assert [u["email"] for u in system.dms_state()["users"] if u["external_id"] == user_id] == ["s@example.com"]
    assert _list(system, key=user_id)["total"] == 0

    audit = httpx.get(f"{system.api_url}/audit", params={"since": "1h"}, timeout=10).json()["entries"]
    mine = {e["action"]: e for e in audit if e["subject"] == request_id}
    assert mine["dlq.edit"]["detail"]["before"]["email"] == "s•••@refused.example"  # masked as on the pages
    assert mine["dlq.edit"]["detail"]["after"]["email"] == "s•••@example.com"
    assert "does not match" in mine["dlq.edit_refused"]["detail"]["error"]
    events = httpx.get(f"{system.api_url}/requests/{request_id}/timeline", timeout=10).json()["events"]
    assert "edited" in [e["event"] for e in events]


def test_export_then_import_round_trip(system: EsiSystem, tmp_path: Path) -> None:
    system.reset_fakes()
    system.fault("dms", {"status": 400, "count": 2})
    users = {unique("EXP"): unique("U") for _ in range(2)}
    for request_id, user_id in users.items():
        body = {"request_id": request_id, "user_id": user_id, "name": "Экспорт", "email": "e@example.com"}
        assert system.post("/send_to_dms", body).status_code == 202
    for request_id in users:
        assert system.wait_final(request_id)["status"] == "dead_lettered"
    system.fault("dms", {})
    ids = [r["id"] for r in _list(system, system="dms", limit="1000")["messages"] if r["request_id"] in users]
    bodies = {i: httpx.get(f"{system.api_url}/dlq/{i}", timeout=10).json()["body"] for i in ids}

    path = tmp_path / "letters.jsonl"
    env = system.env()
    exported = subprocess.run(
        [ESI, "dlq", "export", "-o", str(path), *ids], env=env, capture_output=True, text=True, timeout=60
    )
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(ids)
    assert {line["id"]: line["body"] for line in lines} == bodies

    purge = system.post("/dlq/jobs", {"kind": "purge", "ids": ids, "expect": 2}).json()
    wait_until(lambda: httpx.get(f"{system.api_url}/dlq/jobs/{purge['id']}").json()["state"] == "done", timeout=30)
    assert all(httpx.get(f"{system.api_url}/dlq/{i}", timeout=10).status_code == 404 for i in ids)

    back = subprocess.run([ESI, "dlq", "import", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert back.returncode == 0, back.stderr
    assert "imported 2" in back.stdout
    assert {i: httpx.get(f"{system.api_url}/dlq/{i}", timeout=10).json()["body"] for i in ids} == bodies
    assert {r["request_id"] for r in _list(system, system="dms", limit="1000")["messages"] if r["id"] in ids} == set(
        users
    )

    replayed = subprocess.run(
        [ESI, "dlq", "import", "--replay", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert replayed.returncode == 0, replayed.stderr
    for request_id in users:
        assert system.wait_final(request_id, final=("completed",))["status"] == "completed"


def test_the_cli_edits_in_the_editor_and_runs_jobs_here(system: EsiSystem, tmp_path: Path) -> None:
    system.reset_fakes()
    request_id, user_id = unique("CLI"), unique("U")
    body = {"request_id": request_id, "user_id": user_id, "name": "Редактор", "email": "r@refused.example"}
    assert system.post("/send_to_dms", body).status_code == 202
    assert system.wait_final(request_id)["status"] == "failed"
    [row] = _list(system, key=user_id)["messages"]
    env = system.env()

    # $EDITOR: a sed that corrects the domain in the file it is given
    edited = subprocess.run(
        [ESI, "dlq", "edit", row["id"]],
        env={**env, "EDITOR": "sed -i s/refused.example/example.com/", "VISUAL": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert edited.returncode == 0, edited.stderr
    assert f"edited and replayed {row['id']}" in edited.stdout
    assert system.wait_final(request_id, final=("completed",))["status"] == "completed"
    unchanged = subprocess.run(
        [ESI, "dlq", "edit", row["id"]], env={**env, "EDITOR": "true"}, capture_output=True, text=True, timeout=60
    )
    assert unchanged.returncode == 1  # no longer parked
    assert "no dead letter" in unchanged.stderr or "no parked dead letter" in unchanged.stderr

    # a replay job run by the CLI itself (--here), followed to its end; jobs and job list it
    system.fault("dms", {"status": 400, "count": 1})
    again, user2 = unique("CLI"), unique("U")
    body = {"request_id": again, "user_id": user2, "name": "Повтор", "email": "p@example.com"}
    assert system.post("/send_to_dms", body).status_code == 202
    assert system.wait_final(again)["status"] == "dead_lettered"
    system.fault("dms", {})
    dry = subprocess.run(
        [ESI, "dlq", "replay", "--all", "--key", user2, "--dry-run"], env=env, capture_output=True, text=True
    )
    assert "would replay 1 message" in dry.stdout
    replayed = subprocess.run(
        [ESI, "dlq", "replay", "--all", "--key", user2, "--here", "--rate", "20/s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 message(s)" in replayed.stdout
    assert system.wait_final(again, final=("completed",))["status"] == "completed"
    job_id = re.search(r"job (\d+) done", replayed.stdout).group(1)  # type: ignore[union-attr]
    shown = subprocess.run([ESI, "dlq", "job", job_id, "--json"], env=env, capture_output=True, text=True)
    assert json.loads(shown.stdout)["done"] == 1
    listed = subprocess.run([ESI, "dlq", "jobs"], env=env, capture_output=True, text=True)
    assert f"job {job_id} done" in listed.stdout
    cancelled = subprocess.run([ESI, "dlq", "cancel", job_id], env=env, capture_output=True, text=True)
    assert cancelled.returncode == 0  # a finished job stays as it ended
    assert "done" in cancelled.stdout
    bad_rate = subprocess.run(
        [ESI, "dlq", "replay", "--all", "--rate", "fast"], env=env, capture_output=True, text=True
    )
    assert bad_rate.returncode == 2
