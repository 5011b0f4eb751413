"""OAuth 2.0 client credentials to Creatio: the client against the fake's Identity Service, over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from esi.errors import PermanentError, TransientError
from esi.systems.crm.client import CreatioClient
from esi.systems.crm.client.oauth import ClientCredentials, _lifetime, token_url
from esi.systems.crm.client.session import CreatioSession, session_http_client
from esi.systems.crm.fake import ORDER_9876_ID, STATUS_SHIPPED_ID, create_app
from esi.testing import serve_in_thread

CLIENT_ID = "esi-test"
SECRET = "s3cret-Секрет"
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module")
def creatio_url() -> Iterator[str]:
    with serve_in_thread(create_app(oauth_clients={CLIENT_ID: SECRET}, token_lifetime_s=3600)) as url:
        yield url


@pytest.fixture
def creatio(creatio_url: str) -> str:
    HTTP.post(f"{creatio_url}/_fake/reset").raise_for_status()
    return creatio_url


def counters(url: str) -> dict[str, Any]:
    result: dict[str, Any] = HTTP.get(f"{url}/_fake/state").raise_for_status().json()["counters"]
    return result


def control(url: str, path: str, body: Any) -> httpx.Response:
    return HTTP.post(f"{url}{path}", json=body)


@pytest.fixture
async def client(creatio: str) -> AsyncIterator[CreatioClient]:
    async with CreatioClient(base_url=creatio, auth="oauth", client_id=CLIENT_ID, client_secret=SECRET) as c:
        yield c


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def timed(creatio: str) -> AsyncIterator[tuple[CreatioSession, Clock]]:
    """A session over the token client with a clock the test moves."""
    clock = Clock()
    http = session_http_client(base_url=creatio, timeout=5, ca_bundle=None, max_connections=20, transport=None)
    auth = ClientCredentials(http, token_url=token_url(creatio), client_id=CLIENT_ID, client_secret=SECRET, clock=clock)
    session = CreatioSession(http, auth)
    try:
        yield session, clock
    finally:
        await session.aclose()


async def test_calls_carry_a_bearer_token_and_no_forms_login(client: CreatioClient, creatio: str) -> None:
    order = await client.find_order("ORD9876")
    await client.set_order_status(order.id, STATUS_SHIPPED_ID)  # a write: no BPMCSRF needed with a token
    seen = counters(creatio)
    assert seen["token_requests"] == 1
    assert seen["tokens_issued"] == 1
    assert seen["logins"] == 0
    assert seen["csrf_failures"] == 0


async def test_a_token_is_renewed_before_it_expires_once_for_concurrent_calls(
    timed: tuple[CreatioSession, Clock], creatio: str
) -> None:
    session, clock = timed
    path = f"/0/odata/Order({ORDER_9876_ID})"
    await session.call("GET", path, operation="t")
    clock.now += 3600 - 60 - 1  # the margin is 60 s (a tenth of 3600 s would be more): 61 s left, not yet due
    await session.call("GET", path, operation="t")
    assert counters(creatio)["token_requests"] == 1
    clock.now += 2  # 59 s before expiry: due; twenty calls at once share one renewal
    await asyncio.gather(*(session.call("GET", path, operation="t") for _ in range(20)))
    assert counters(creatio)["token_requests"] == 2


async def test_a_401_renews_once_and_retries(client: CreatioClient, creatio: str) -> None:
    await client.find_order("ORD9876")
    assert control(creatio, "/_fake/expire-session", {}).json()["expired"] == 1  # the token is revoked
    results = await asyncio.gather(*(client.find_order("ORD0001") for _ in range(10)))
    assert {r.number for r in results} == {"ORD0001"}
    seen = counters(creatio)
    assert seen["token_requests"] == 2
    assert seen["bearer_rejections"] >= 1


async def test_a_wrong_secret_is_a_permanent_auth_failure_and_never_logged(
    creatio: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with CreatioClient(base_url=creatio, auth="oauth", client_id=CLIENT_ID, client_secret="wrong") as c:
            with pytest.raises(PermanentError) as raised:
                await c.find_order("ORD9876")
    assert raised.value.code == "auth_failed"
    assert "invalid_client" in str(raised.value)
    assert "wrong" not in caplog.text
    assert SECRET not in caplog.text


async def test_an_identity_service_that_is_down_is_transient(creatio: str) -> None:
    control(creatio, "/_fake/faults", {"status": 503, "count": 1}).raise_for_status()
    async with CreatioClient(base_url=creatio, auth="oauth", client_id=CLIENT_ID, client_secret=SECRET) as c:
        with pytest.raises(TransientError):
            await c.login()
        await c.login()  # the fault was for one call
    unreachable = "http://127.0.0.1:9"
    async with CreatioClient(
        base_url=creatio, auth="oauth", identity_url=unreachable, client_id=CLIENT_ID, client_secret=SECRET
    ) as c:
        with pytest.raises(TransientError):
            await c.find_order("ORD9876")


async def test_an_answer_without_a_token_is_refused(creatio: str) -> None:
    async with CreatioClient(
        base_url=creatio,
        auth="oauth",
        identity_url=f"{creatio}/_fake/state#",  # JSON, but not a token
        client_id=CLIENT_ID,
        client_secret=SECRET,
    ) as c:
        with pytest.raises(PermanentError, match=r"no access_token|refused"):
            await c.login()


def test_settings_of_the_client() -> None:
    assert token_url("https://id.example.com/") == "https://id.example.com/connect/token"
    assert token_url("https://id.example.com/connect/token") == "https://id.example.com/connect/token"
    assert _lifetime(300) == 300.0
    assert _lifetime("120") == 120.0
    assert _lifetime(None) == 3600.0
    assert _lifetime(True) == 3600.0
    assert _lifetime("soon") == 3600.0
    assert _lifetime(-5) == 3600.0
    with pytest.raises(ValueError, match="client id"):
        CreatioClient(base_url="http://x", auth="oauth")
    with pytest.raises(ValueError, match="auth must be"):
        CreatioClient(base_url="http://x", auth="kerberos")  # type: ignore[arg-type]


# --- the fake's Identity Service -----------------------------------------------------------------------------------


def test_the_token_endpoint_speaks_rfc_6749(creatio: str) -> None:
    url = f"{creatio}/connect/token"
    good = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    answer = HTTP.post(url, data=good)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert answer.headers["cache-control"] == "no-store"
    basic = HTTP.post(url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, SECRET))
    assert basic.status_code == 200
    assert HTTP.post(url, data={**good, "client_secret": "x"}).json() == {"error": "invalid_client"}
    assert HTTP.post(url, data={**good, "grant_type": "password"}).json() == {"error": "unsupported_grant_type"}
    bad_basic = HTTP.post(url, data={"grant_type": "client_credentials"}, headers={"Authorization": "Basic !!"})
    assert bad_basic.status_code == 400
    token = body["access_token"]
    ok = HTTP.get(f"{creatio}/0/odata/Order", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    refused = HTTP.get(f"{creatio}/0/odata/Order", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
    state = HTTP.get(f"{creatio}/_fake/state").json()
    assert state["tokens"] == 2
    assert state["counters"]["token_requests"] == 4  # the unsupported grant is refused before
    assert state["config"]["oauth_clients"] == [CLIENT_ID]


def test_the_token_lifetime_changes_at_run_time(creatio: str) -> None:
    assert control(creatio, "/_fake/oauth", {"token_lifetime_s": 5}).json() == {"token_lifetime_s": 5.0}
    good = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    assert HTTP.post(f"{creatio}/connect/token", data=good).json()["expires_in"] == 5
    assert control(creatio, "/_fake/oauth", {"token_lifetime_s": 0}).status_code == 422
    assert control(creatio, "/_fake/oauth", {"token_lifetime_s": True}).status_code == 422
