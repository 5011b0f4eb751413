"""The fake DMS, spoken to over real HTTP: the protocol esi's DMS client relies on."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from esi.systems.dms.fake import REFUSED_EMAIL_DOMAIN, SEED_POLICIES, FakeDms, create_app
from esi.testing import serve_in_thread

IVANOV = {"external_id": "U12345", "name": "Иванов Иван", "email": "ivanov@example.com"}


class _CurrentApp:
    """An ASGI app that forwards to the app the running test installed: one server per module, a fresh fake per test."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        assert self.app is not None, "no fake installed"
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_CurrentApp, str]]:
    current = _CurrentApp()
    with serve_in_thread(current) as base_url:
        yield current, base_url


@dataclass
class Served:
    http: httpx.AsyncClient
    fake: FakeDms

    async def state(self) -> dict:
        response = await self.http.get("/_fake/state")
        assert response.status_code == 200
        return response.json()


@contextlib.asynccontextmanager
async def fresh_fake(server: tuple[_CurrentApp, str], api_key: str | None = None) -> AsyncIterator[Served]:
    current, base_url = server
    current.app = create_app(api_key=api_key)
    try:
        # plain HTTP: skip building a TLS context
        async with httpx.AsyncClient(base_url=base_url, verify=False) as http:
            yield Served(http, current.app.state.fake)
    finally:
        current.app = None


@pytest.fixture
async def dms(server: tuple[_CurrentApp, str]) -> AsyncIterator[Served]:
    async with fresh_fake(server) as served:
        yield served


@pytest.fixture
async def dms_with_key(server: tuple[_CurrentApp, str]) -> AsyncIterator[Served]:
    async with fresh_fake(server, api_key="s3cret-key") as served:
        yield served


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_health_is_ok(dms: Served) -> None:
    response = await dms.http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_create_user_answers_201_with_a_sequential_id_and_keeps_cyrillic(dms: Served) -> None:
    first = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    second = await dms.http.post(
        "/users",
        json={"external_id": "U2", "name": "Пётр Ёлкин", "email": "p@example.com", "phone": "+7 900 000-00-00"},
    )

    assert first.status_code == 201
    assert second.status_code == 201
    user = first.json()
    assert user["id"] == "DMS-000001"
    assert second.json()["id"] == "DMS-000002"
    assert {k: user[k] for k in IVANOV} == IVANOV
    assert user["phone"] is None
    assert second.json()["phone"] == "+7 900 000-00-00"
    created_at = dt.datetime.fromisoformat(user["created_at"])
    assert created_at.utcoffset() == dt.timedelta(0)
    # UTF-8 on the wire, not \u escapes
    assert "Иванов Иван".encode() in first.content
    state = await dms.state()
    assert [u["name"] for u in state["users"]] == ["Иванов Иван", "Пётр Ёлкин"]
    assert state["counters"]["created"] == 2
    assert state["counters"]["calls"]["create_user"] == 2


async def test_same_key_same_body_replays_the_stored_answer(dms: Served) -> None:
    first = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    again = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    state = await dms.state()
    assert len(state["users"]) == 1
    assert state["counters"]["idempotent_replays"] == 1
    assert state["counters"]["created"] == 1


async def test_same_key_with_another_body_is_refused(dms: Served) -> None:
    await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    other = await dms.http.post("/users", json={**IVANOV, "name": "Иванов Пётр"}, headers={"Idempotency-Key": "k-1"})

    assert_error(other, 422, "idempotency_key_reused")
    state = await dms.state()
    assert [u["name"] for u in state["users"]] == ["Иванов Иван"]
    assert state["counters"]["refused"] == 1


@pytest.mark.parametrize("second_key", [None, "k-2"])
async def test_an_external_id_registered_once_cannot_be_registered_again(dms: Served, second_key: str | None) -> None:
    await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    headers = {"Idempotency-Key": second_key} if second_key else {}
    again = await dms.http.post("/users", json={**IVANOV, "email": "other@example.com"}, headers=headers)

    assert_error(again, 409, "user_exists")
    assert "DMS-000001" in again.json()["error"]["message"]
    assert len((await dms.state())["users"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {**IVANOV, "name": "   "},
        {**IVANOV, "name": ""},
        {**IVANOV, "external_id": ""},
        {**IVANOV, "email": "ivanov.example.com"},
        {**IVANOV, "email": "ivanov@"},
        {**IVANOV, "email": f"ivanov@{REFUSED_EMAIL_DOMAIN}"},
        {**IVANOV, "email": "ivanov@Refused.Example"},
        {"external_id": "U1", "email": "a@example.com"},
        {**IVANOV, "name": 42},
        "not an object",
    ],
    ids=[
        "blank-name",
        "empty-name",
        "empty-id",
        "no-at",
        "no-domain",
        "refused",
        "refused-case",
        "no-name",
        "name-not-str",
        "not-object",
    ],
)
async def test_refused_users_get_422_validation_error(dms: Served, body: object) -> None:
    response = await dms.http.post("/users", json=body, headers={"Idempotency-Key": "k-1"})

    assert_error(response, 422, "validation_error")
    state = await dms.state()
    assert state["users"] == []
    assert state["counters"]["refused"] == 1
    assert state["idempotency_keys"] == 0  # a refusal is not remembered under its key


async def test_a_body_that_is_not_json_is_a_validation_error(dms: Served) -> None:
    response = await dms.http.post("/users", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 422, "validation_error")


async def test_a_refused_request_can_be_retried_with_its_key_once_fixed(dms: Served) -> None:
    refused = await dms.http.post(
        "/users", json={**IVANOV, "email": f"x@{REFUSED_EMAIL_DOMAIN}"}, headers={"Idempotency-Key": "k-1"}
    )
    fixed = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})

    assert refused.status_code == 422
    assert fixed.status_code == 201


async def test_every_seeded_policy_is_served(dms: Served) -> None:
    for number, seeded in SEED_POLICIES.items():
        response = await dms.http.get(f"/policies/{quote(number, safe='')}")
        assert response.status_code == 200, number
        assert response.json() == dict(seeded)


async def test_policy_pol_0001_is_ivanov_and_active(dms: Served) -> None:
    response = await dms.http.get("/policies/POL-0001")

    assert response.status_code == 200
    policy = response.json()
    assert policy["holder_name"] == "Иванов Иван Иванович"
    assert policy["status"] == "active"
    assert dt.date.fromisoformat(policy["start_date"]) < dt.date.fromisoformat(policy["end_date"])
    assert SEED_POLICIES["POL-0002"]["status"] == "expired"
    assert SEED_POLICIES["POL-12345"]["status"] == "active"


async def test_a_policy_number_with_a_slash_is_one_quoted_segment(dms: Served) -> None:
    response = await dms.http.get("/policies/%D0%94%D0%9C%D0%A1%202025%2F077")

    assert response.status_code == 200
    assert response.json()["policy_number"] == "ДМС 2025/077"


async def test_an_unknown_policy_is_404_policy_not_found(dms: Served) -> None:
    response = await dms.http.get("/policies/POL-9999")

    assert_error(response, 404, "policy_not_found")
    assert (await dms.state())["counters"]["calls"]["get_policy"] == 1


async def test_policies_can_be_added_for_a_test(dms: Served) -> None:
    policy = {
        "policy_number": "ТЕСТ/1",
        "holder_name": "Тестов Тест",
        "status": "suspended",
        "start_date": "2025-01-01",
        "end_date": "2025-12-31",
    }
    added = await dms.http.post("/_fake/policies", json=policy)
    refused = await dms.http.post("/_fake/policies", json={**policy, "status": "lost"})

    assert added.status_code == 201
    assert_error(refused, 422, "validation_error")
    served = await dms.http.get(f"/policies/{quote('ТЕСТ/1', safe='')}")
    assert served.json() == {**policy, "insurer": None, "coverage": [], "revision": 1}
    assert added.json()["event"] == "policy_issued"
    changed = await dms.http.post("/_fake/policies", json={**policy, "status": "active"})
    cancelled = await dms.http.post("/_fake/policies", json={**policy, "status": "cancelled"})
    assert (changed.json()["event"], changed.json()["revision"]) == ("policy_changed", 2)
    assert (cancelled.json()["event"], cancelled.json()["revision"]) == ("policy_cancelled", 3)
    assert "webhook" not in cancelled.json()  # none configured: none sent


async def test_unknown_paths_and_methods_keep_the_error_shape(dms: Served) -> None:
    assert_error(await dms.http.get("/nowhere"), 404, "not_found")
    assert_error(await dms.http.delete("/users"), 405, "method_not_allowed")


async def test_the_api_key_is_required_on_business_endpoints(dms_with_key: Served) -> None:
    http = dms_with_key.http
    assert_error(await http.post("/users", json=IVANOV), 401, "unauthorized")
    assert_error(await http.get("/policies/POL-0001"), 401, "unauthorized")
    wrong = await http.get("/policies/POL-0001", headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "unauthorized")
    assert "nope" not in wrong.text
    assert "s3cret" not in wrong.text
    assert_error(await http.get("/policies/POL-0001", headers={"Authorization": "s3cret-key"}), 401, "unauthorized")

    good = {"Authorization": "Bearer s3cret-key"}
    assert (await http.get("/policies/POL-0001", headers=good)).status_code == 200
    assert (await http.post("/users", json=IVANOV, headers=good)).status_code == 201
    # health and the controls stay open
    assert (await http.get("/health")).status_code == 200
    state = await dms_with_key.state()
    assert len(state["users"]) == 1
    assert state["counters"]["refused"] == 0  # an unauthorized call is not a refusal of the user


async def test_a_fault_can_last_a_while_and_ask_for_a_wait(dms: Served) -> None:
    await dms.http.post("/_fake/faults", json={"status": 429, "duration_s": 0.3, "retry_after": 3})
    limited = await dms.http.get("/policies/POL-0001")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    assert (await dms.state())["faults"]["armed"]["duration_s"] == 0.3
    await asyncio.sleep(0.35)
    assert (await dms.http.get("/policies/POL-0001")).status_code == 200
    assert (await dms.state())["faults"]["armed"] is None


async def test_faults_hit_business_endpoints_but_not_health_or_controls(dms: Served) -> None:
    armed = await dms.http.post("/_fake/faults", json={"status": 503, "count": 2})
    assert armed.status_code == 200

    assert (await dms.http.get("/health")).status_code == 200
    assert (await dms.state())["faults"]["remaining"] == 2  # neither /health nor /_fake/state consumed it
    first = await dms.http.get("/policies/POL-0001")
    second = await dms.http.post("/users", json=IVANOV)
    third = await dms.http.get("/policies/POL-0001")

    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert "Retry-After" not in first.headers  # only when the fault asks for one
    state = await dms.state()
    assert state["faults"]["injected"] == 2
    assert state["faults"]["armed"] is None
    assert state["counters"]["calls"] == {"create_user": 0, "get_policy": 1}
    assert state["users"] == []


async def test_a_reset_after_the_work_creates_the_user_and_loses_the_answer(dms: Served) -> None:
    """The fault the chaos run's nemesis uses for "the effect happened, the answer was lost"."""
    armed = await dms.http.post("/_fake/faults", json={"reset_after_work": True, "count": 1})
    assert armed.json()["armed"]["reset_after_work"] is True
    with pytest.raises(httpx.RemoteProtocolError):
        await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-lost"})
    state = await dms.state()
    assert [u["external_id"] for u in state["users"]] == ["U12345"]  # the work was done
    assert (state["faults"]["injected"], state["faults"]["armed"]) == (1, None)
    # the caller's retry with its key gets the stored answer: one user
    again = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-lost"})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len((await dms.state())["users"]) == 1


async def test_reset_goes_back_to_the_seed(dms: Served) -> None:
    await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    await dms.http.get("/policies/POL-0001")
    dms.fake.policies["POL-0001"]["status"] = "suspended"
    await dms.http.post("/_fake/faults", json={"status": 500, "count": 1})
    await dms.http.get("/policies/POL-0002")
    await dms.http.post("/_fake/faults", json={"status": 429})

    reset = await dms.http.post("/_fake/reset")

    assert reset.status_code == 200
    state = await dms.state()
    assert state["users"] == []
    assert state["idempotency_keys"] == 0
    assert state["policies"] == [dict(p) for p in SEED_POLICIES.values()]
    assert state["counters"] == {
        "calls": {"create_user": 0, "get_policy": 0},
        "created": 0,
        "idempotent_replays": 0,
        "refused": 0,
    }
    assert (state["faults"]["armed"], state["faults"]["remaining"], state["faults"]["injected"]) == (None, None, 0)
    again = await dms.http.post("/users", json=IVANOV, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201
    assert again.json()["id"] == "DMS-000001"
    assert SEED_POLICIES["POL-0001"]["status"] == "active"  # the seed itself was never touched


async def test_concurrent_creations_get_distinct_ids(dms: Served) -> None:
    responses = await asyncio.gather(
        *(
            dms.http.post("/users", json={**IVANOV, "external_id": f"U{i}"}, headers={"Idempotency-Key": f"k-{i}"})
            for i in range(50)
        )
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 50
    assert (await dms.state())["counters"]["created"] == 50
