"""The DMS client against the fake DMS served by a real uvicorn server (and, for broken answers, MockTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import certifi
import httpx
import pytest
from fastapi import FastAPI

from esi.errors import BusinessError, NotFound, PermanentError, TransientError
from esi.systems.dms.client import DmsClient, DmsPolicy, DmsUser
from esi.systems.dms.fake import REFUSED_EMAIL_DOMAIN, FakeDms, create_app
from esi.systems.http import fast_transport
from esi.testing import serve_in_thread

API_KEY = "s3cret-api-key-0042"


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
class Dms:
    """A fresh fake DMS behind the module's server, a client for it, and raw HTTP to its controls."""

    client: DmsClient
    fake: FakeDms
    base_url: str
    http: httpx.AsyncClient

    async def state(self) -> dict:
        response = await self.http.get("/_fake/state")
        assert response.status_code == 200
        return response.json()

    async def arm(self, **fault: object) -> None:
        response = await self.http.post("/_fake/faults", json=fault)
        assert response.status_code == 200, response.text


def _transport(kind: str) -> httpx.AsyncBaseTransport:
    """httpx's own transport, or httpx over aiohttp as the DMS adapter runs it (the client's default)."""
    # plain HTTP: verify=False only spares each test building an unused TLS context (~70 ms)
    return fast_transport() if kind == "aiohttp" else httpx.AsyncHTTPTransport(verify=False)


@contextlib.asynccontextmanager
async def fresh_dms(
    server: tuple[_CurrentApp, str],
    *,
    fake_key: str | None = None,
    client_key: str | None = None,
    timeout: float = 5.0,
    transport: str = "httpx",
) -> AsyncIterator[Dms]:
    """`transport`: httpx's own, or httpx over aiohttp's sockets as the DMS adapter runs it (`fast_transport`)."""
    current, base_url = server
    current.app = create_app(api_key=fake_key)
    try:
        async with (
            DmsClient(
                base_url=base_url, api_key=client_key, timeout=timeout, transport=_transport(transport)
            ) as client,
            httpx.AsyncClient(base_url=base_url, verify=False) as http,
        ):
            yield Dms(client, current.app.state.fake, base_url, http)
    finally:
        current.app = None


@pytest.fixture(params=["httpx", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def dms(server: tuple[_CurrentApp, str], transport: str) -> AsyncIterator[Dms]:
    async with fresh_dms(server, transport=transport) as served:
        yield served


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def hanging_up_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose server accepts each connection and closes it without a word."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, name="hang-up-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def mock_client(handler) -> DmsClient:  # type: ignore[no-untyped-def]
    return DmsClient(base_url="http://dms.test", transport=httpx.MockTransport(handler))


IVANOV = {"user_id": "U12345", "name": "Иванов Иван", "email": "ivanov@example.com"}


# -- create_user -----------------------------------------------------------------------------------------------------


async def test_create_user_returns_the_registered_user_with_cyrillic_intact(dms: Dms) -> None:
    user = await dms.client.create_user(**IVANOV, phone="+7 900 123-45-67", idempotency_key="esi-1")

    assert isinstance(user, DmsUser)
    assert user.id == "DMS-000001"
    assert (user.external_id, user.name, user.email, user.phone) == (
        "U12345",
        "Иванов Иван",
        "ivanov@example.com",
        "+7 900 123-45-67",
    )
    assert user.created_at
    state = await dms.state()
    assert [(u["external_id"], u["name"]) for u in state["users"]] == [("U12345", "Иванов Иван")]
    assert state["counters"]["created"] == 1


async def test_the_same_idempotency_key_returns_the_same_user_once(dms: Dms) -> None:
    first = await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")
    again = await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    assert again == first
    state = await dms.state()
    assert len(state["users"]) == 1
    assert state["counters"]["idempotent_replays"] == 1


async def test_the_same_key_with_other_data_is_a_business_error(dms: Dms) -> None:
    await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    with pytest.raises(BusinessError) as caught:
        await dms.client.create_user(**{**IVANOV, "name": "Петров Пётр"}, idempotency_key="esi-msg-1")

    assert type(caught.value) is BusinessError
    assert caught.value.code == "idempotency_key_reused"
    assert caught.value.system == "dms"
    assert "HTTP 422" in str(caught.value)


async def test_a_duplicate_external_id_is_a_business_error_user_exists(dms: Dms) -> None:
    await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    with pytest.raises(BusinessError) as caught:
        await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-2")

    assert type(caught.value) is BusinessError
    assert caught.value.code == "user_exists"
    assert "user_exists" in str(caught.value)
    assert "DMS-000001" in str(caught.value)
    assert len((await dms.state())["users"]) == 1


async def test_a_refused_email_domain_is_a_business_error(dms: Dms) -> None:
    with pytest.raises(BusinessError) as caught:
        await dms.client.create_user(
            user_id="U1", name="Иванов Иван", email=f"ivanov@{REFUSED_EMAIL_DOMAIN}", idempotency_key="esi-msg-1"
        )

    assert caught.value.code == "validation_error"
    assert REFUSED_EMAIL_DOMAIN in caught.value.message
    state = await dms.state()
    assert state["users"] == []
    assert state["counters"]["refused"] == 1


async def test_fifty_concurrent_creations_all_succeed_with_distinct_ids(dms: Dms) -> None:
    users = await asyncio.gather(
        *(
            dms.client.create_user(
                user_id=f"U{i:03d}", name=f"Пользователь {i}", email=f"u{i}@example.com", idempotency_key=f"esi-msg-{i}"
            )
            for i in range(50)
        )
    )

    assert len({user.id for user in users}) == 50
    assert sorted(user.external_id for user in users) == [f"U{i:03d}" for i in range(50)]
    state = await dms.state()
    assert state["counters"]["created"] == 50
    assert len(state["users"]) == 50


# -- get_policy ------------------------------------------------------------------------------------------------------


async def test_get_policy_returns_the_seeded_policy(dms: Dms) -> None:
    policy = await dms.client.get_policy("POL-0001")

    assert isinstance(policy, DmsPolicy)
    assert policy.policy_number == "POL-0001"
    assert policy.holder_name == "Иванов Иван Иванович"
    assert policy.status == "active"
    assert policy.start_date == "2025-01-01"
    assert policy.end_date == "2025-12-31"
    assert policy.coverage


async def test_a_policy_number_with_odd_characters_is_quoted_as_one_segment(dms: Dms) -> None:
    policy = await dms.client.get_policy("ДМС 2025/077")

    assert policy.policy_number == "ДМС 2025/077"
    assert policy.holder_name == "Кузнецова Анна Викторовна"


async def test_an_unknown_policy_is_not_found(dms: Dms) -> None:
    with pytest.raises(NotFound) as caught:
        await dms.client.get_policy("POL-9999")

    assert caught.value.code == "policy_not_found"
    assert "POL-9999" in caught.value.message


async def test_odd_characters_cannot_reach_another_path(dms: Dms) -> None:
    # unquoted, "../health?x#" would have answered 200 from /health
    with pytest.raises(NotFound) as caught:
        await dms.client.get_policy("../health?x#")

    assert caught.value.code == "policy_not_found"
    assert (await dms.state())["counters"]["calls"]["get_policy"] == 1


# -- transient failures ----------------------------------------------------------------------------------------------


async def test_a_503_for_three_calls_gives_three_transient_errors_then_success(dms: Dms) -> None:
    await dms.arm(status=503, count=3)

    for _ in range(3):
        with pytest.raises(TransientError) as caught:
            await dms.client.get_policy("POL-0001")
        assert caught.value.code == "http_503"
        assert "injected fault" in caught.value.message
    policy = await dms.client.get_policy("POL-0001")

    assert policy.policy_number == "POL-0001"
    state = await dms.state()
    assert state["faults"]["injected"] == 3
    assert state["counters"]["calls"]["get_policy"] == 1


async def test_a_503_on_create_user_is_transient_and_the_retry_creates_the_user_once(dms: Dms) -> None:
    await dms.arm(status=503, count=1)

    with pytest.raises(TransientError):
        await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")
    user = await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    assert user.id == "DMS-000001"
    assert (await dms.state())["counters"]["created"] == 1


async def test_a_429_is_transient(dms: Dms) -> None:
    await dms.arm(status=429)

    with pytest.raises(TransientError) as caught:
        await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    assert caught.value.code == "http_429"
    assert (await dms.state())["users"] == []


async def test_latency_beyond_the_client_timeout_is_transient(server: tuple[_CurrentApp, str], transport: str) -> None:
    async with fresh_dms(server, timeout=0.2, transport=transport) as dms:
        for call in (
            lambda: dms.client.get_policy("POL-0001"),
            lambda: dms.client.create_user(**IVANOV, idempotency_key="esi-msg-slow"),
        ):
            await dms.arm(latency_ms=1000, count=1)
            started = time.monotonic()

            with pytest.raises(TransientError) as caught:
                await call()

            assert caught.value.code == "timeout"
            assert time.monotonic() - started < 0.9  # the client gave up, it did not wait for the answer


async def test_nothing_listening_is_transient(closed_port: int, transport: str) -> None:
    async with DmsClient(
        base_url=f"http://127.0.0.1:{closed_port}", timeout=2.0, transport=_transport(transport)
    ) as client:
        for call in (
            lambda: client.get_policy("POL-0001"),
            lambda: client.create_user(**IVANOV, idempotency_key="esi-msg-1"),
            client.check,
        ):
            with pytest.raises(TransientError) as caught:
                await call()
            assert caught.value.code == "connection_error"


async def test_a_server_that_hangs_up_is_a_connection_error(hanging_up_port: int, transport: str) -> None:
    async with DmsClient(
        base_url=f"http://127.0.0.1:{hanging_up_port}", timeout=2.0, transport=_transport(transport)
    ) as client:
        for call in (
            lambda: client.get_policy("POL-0001"),
            lambda: client.create_user(**IVANOV, idempotency_key="esi-msg-1"),
        ):
            with pytest.raises(TransientError) as caught:
                await call()
            assert caught.value.code == "connection_error", caught.value


# -- authentication --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_key", [None, "wrong-key"])
async def test_a_missing_or_wrong_api_key_is_permanent(
    server: tuple[_CurrentApp, str], client_key: str | None, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fresh_dms(server, fake_key=API_KEY, client_key=client_key, transport=transport) as dms:
        for call in (
            lambda: dms.client.get_policy("POL-0001"),
            lambda: dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1"),
        ):
            with pytest.raises(PermanentError) as caught:
                await call()

            assert not isinstance(caught.value, (BusinessError, TransientError))
            assert caught.value.code == "unauthorized"
            assert "HTTP 401" in str(caught.value)
            assert API_KEY not in str(caught.value)
            if client_key:
                assert client_key not in str(caught.value)
                assert client_key not in caplog.text


async def test_the_right_api_key_is_accepted_and_never_logged(
    server: tuple[_CurrentApp, str], caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fresh_dms(server, fake_key=API_KEY, client_key=API_KEY, transport=transport) as dms:
        policy = await dms.client.get_policy("POL-12345")
        user = await dms.client.create_user(**IVANOV, idempotency_key="esi-msg-1")
        await dms.client.check()

    assert policy.status == "active"
    assert user.id == "DMS-000001"
    assert caplog.records, "expected the client (and httpx) to log something at DEBUG"
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(dms.client)


# -- readiness -------------------------------------------------------------------------------------------------------


async def test_check_passes_when_the_dms_is_up_even_while_faults_are_armed(dms: Dms) -> None:
    await dms.arm(status=503)

    await dms.client.check()

    with pytest.raises(TransientError):
        await dms.client.get_policy("POL-0001")


@pytest.mark.parametrize("status", [500, 401, 404])
async def test_check_fails_transiently_unless_health_answers_200(status: int) -> None:
    async with mock_client(lambda request: httpx.Response(status, text="nope")) as client:
        with pytest.raises(TransientError) as caught:
            await client.check()

    assert caught.value.code == f"http_{status}"


# -- broken answers (MockTransport: the fake never answers like this) -----------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, text="<html>created</html>"),
        httpx.Response(201, json={"id": "DMS-1"}),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(204),
    ],
    ids=["html", "missing-fields", "list", "empty"],
)
async def test_an_unreadable_success_is_permanent(response: httpx.Response) -> None:
    async with mock_client(lambda request: response) as client:
        with pytest.raises(PermanentError) as caught:
            await client.create_user(**IVANOV, idempotency_key="esi-msg-1")

    assert not isinstance(caught.value, BusinessError)
    assert caught.value.code == "invalid_response"
    assert "DmsUser" in caught.value.message


async def test_an_unreadable_policy_is_permanent() -> None:
    async with mock_client(lambda request: httpx.Response(200, content=b"\xff\xfe{")) as client:
        with pytest.raises(PermanentError) as caught:
            await client.get_policy("POL-0001")

    assert caught.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("response", "error_class", "code"),
    [
        (httpx.Response(500, text="<html>Internal Server Error</html>"), TransientError, "http_500"),
        (httpx.Response(502), TransientError, "http_502"),
        (
            httpx.Response(503, json={"error": {"code": "maintenance", "message": "back soon"}}),
            TransientError,
            "http_503",
        ),
        (httpx.Response(408), TransientError, "http_408"),
        (httpx.Response(400, json={"error": {"code": "bad_request", "message": "no"}}), PermanentError, "bad_request"),
        (httpx.Response(403, text="forbidden"), PermanentError, "http_403"),
        (httpx.Response(409, json={"error": "duplicate"}), BusinessError, "http_409"),
        (httpx.Response(404, text="not here"), NotFound, "not_found"),
    ],
    ids=["500-html", "502-empty", "503-json", "408", "400-json", "403-text", "409-string-error", "404-text"],
)
async def test_statuses_map_to_esi_errors(response: httpx.Response, error_class: type, code: str) -> None:
    async with mock_client(lambda request: response) as client:
        with pytest.raises(error_class) as caught:
            await client.get_policy("POL-0001")

    assert type(caught.value) is error_class
    assert caught.value.code == code
    assert f"HTTP {response.status_code}" in caught.value.message


async def test_requests_carry_the_idempotency_key_and_quoted_path() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(201, json={"id": "DMS-1", "external_id": "U1", "name": "Я", "email": "a@b.c"})
        return httpx.Response(
            200,
            json={
                "policy_number": "A/B",
                "holder_name": "Я",
                "status": "active",
                "start_date": "2025-01-01",
                "end_date": "2025-12-31",
            },
        )

    async with mock_client(answer) as client:
        await client.create_user(user_id="U1", name="Я", email="a@b.c", idempotency_key="esi-abc")
        await client.get_policy("A/B ?#")

    post, get = seen
    assert post.headers["Idempotency-Key"] == "esi-abc"
    assert "phone" not in post.read().decode()
    assert "Authorization" not in post.headers
    assert get.url.raw_path == b"/policies/A%2FB%20%3F%23"


async def test_a_ca_bundle_path_is_accepted_without_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with DmsClient(base_url="https://dms.test", ca_bundle=certifi.where()):
            pass


def _answering(status: int, body: bytes, headers: list[tuple[bytes, bytes]]):  # type: ignore[no-untyped-def]
    """An ASGI app answering every request with `status`, `body` and `headers` as given."""

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def test_answers_read_without_httpx_keep_their_encoding_headers_and_retry_after(
    server: tuple[_CurrentApp, str],
    transport: str,
) -> None:
    """On aiohttp the hot call reads a plain answer as it came (`esi.systems.http.Answer`); a compressed one is
    still decoded, and an error still carries the DMS's code and its Retry-After."""
    current, base_url = server
    user = {"id": "DMS-7", "external_id": "u-7", "name": "Иван", "email": "i@example.com"}
    cases = [
        (201, gzip.compress(json.dumps(user).encode()), [(b"content-encoding", b"gzip")]),
        (201, json.dumps(user).encode(), [(b"idempotent-replayed", b"true")]),
    ]
    async with DmsClient(base_url=base_url, timeout=5, transport=_transport(transport)) as client:
        try:
            for status, body, headers in cases:
                current.app = _answering(status, body, [(b"content-type", b"application/json"), *headers])
                created = await client.create_user(
                    user_id="u-7", name="Иван", email="i@example.com", idempotency_key="k-7"
                )
                assert (created.id, created.name) == ("DMS-7", "Иван")
            current.app = _answering(
                503,
                b'{"error": {"code": "maintenance", "message": "back soon"}}',
                [(b"retry-after", b"7"), (b"content-type", b"application/json")],
            )
            with pytest.raises(TransientError) as caught:
                await client.create_user(user_id="u-7", name="Иван", email="i@example.com", idempotency_key="k-7")
        finally:
            current.app = None
    assert caught.value.retry_after == 7.0
    assert caught.value.code == "http_503"
    assert "maintenance: back soon" in str(caught.value)
