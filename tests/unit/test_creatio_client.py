"""The Creatio client against the fake Creatio served by a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from esi.errors import BusinessError, NotFound, PermanentError, SessionExpired, TransientError
from esi.systems.crm.client import AttachedFile, CreatioClient, CreatioOrder, odata_string
from esi.systems.crm.client.files import attachment_id
from esi.systems.crm.fake import (
    EMPTY_GUID,
    ORDER_0001_ID,
    ORDER_0002_ID,
    ORDER_9876_ID,
    STATUS_NEW_ID,
    STATUS_SHIPPED_ID,
    create_app,
)
from esi.testing import serve_in_thread as serve

PASSWORD = "Pa55-'secret'-Пароль"


# --- a real server for the fake (same helper as in test_fake_creatio.py; tests/unit has no shared module) ---------


@dataclass
class FakeServer:
    url: str
    app: FastAPI

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/state").raise_for_status().json()

    def counters(self) -> dict[str, Any]:
        return self.state()["counters"]

    def post(self, path: str, body: Any = None) -> dict[str, Any]:
        return httpx.post(f"{self.url}{path}", json=body).raise_for_status().json()

    def client(self, **options: Any) -> CreatioClient:
        return CreatioClient(**{"base_url": self.url, "username": "Supervisor", "password": PASSWORD, **options})


@pytest.fixture(scope="module")
def shared_creatio() -> Iterator[FakeServer]:
    app = create_app(password=PASSWORD)
    with serve(app) as url:
        yield FakeServer(url, app)


@pytest.fixture
def creatio(shared_creatio: FakeServer) -> FakeServer:
    """The module's default fake Creatio, back at its seed."""
    shared_creatio.post("/_fake/reset")
    return shared_creatio


@pytest.fixture
def start_creatio() -> Iterator[Callable[..., FakeServer]]:
    """Start fake Creatio servers with other `create_app` options; all stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> FakeServer:
            app = create_app(**{"password": PASSWORD, **options})
            return FakeServer(stack.enter_context(serve(app)), app)

        yield start


@pytest.fixture
async def client(creatio: FakeServer) -> AsyncIterator[CreatioClient]:
    async with creatio.client() as client:
        yield client


def order_state(creatio: FakeServer, order_id: str) -> dict[str, Any]:
    return next(o for o in creatio.state()["orders"] if o["Id"] == order_id)


# --- login ---------------------------------------------------------------------------------------------------------


async def test_login(client: CreatioClient, creatio: FakeServer) -> None:
    await client.login()
    assert creatio.counters()["logins"] == 1
    assert creatio.state()["sessions"] == 1


async def test_first_call_logs_in_once(client: CreatioClient, creatio: FakeServer) -> None:
    await client.find_order("ORD0001")
    await client.find_order("ORD0002")
    assert creatio.counters()["logins"] == 1


async def test_wrong_password_is_a_permanent_auth_failure(
    creatio: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with creatio.client(password="wrong-Пароль-123") as client:
        with pytest.raises(PermanentError) as caught:
            await client.find_order("ORD9876")
    assert caught.value.code == "auth_failed"
    assert not isinstance(caught.value, BusinessError)
    assert "wrong-Пароль-123" not in str(caught.value)
    assert "wrong-Пароль-123" not in caplog.text  # not even in httpx's own records: it travels in the body
    counters = creatio.counters()
    assert (counters["logins"], counters["failed_logins"]) == (0, 1)


async def test_no_password_or_cookie_in_our_logs(client: CreatioClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await client.set_order_status(ORDER_9876_ID, await client.find_status_id("Shipped"))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("esi"))
    assert "Logged in to Creatio" in ours
    assert PASSWORD not in ours
    assert ".ASPXAUTH" not in ours
    assert "BPMCSRF" not in ours


# --- orders and statuses -------------------------------------------------------------------------------------------


async def test_find_order_by_guid_and_by_number(client: CreatioClient, creatio: FakeServer) -> None:
    expected = CreatioOrder(id=ORDER_9876_ID, number="ORD9876", status_id=STATUS_NEW_ID)
    assert await client.find_order(ORDER_9876_ID) == expected
    assert await client.find_order(ORDER_9876_ID.upper()) == expected
    assert await client.find_order("ORD9876") == expected
    requests = creatio.counters()["requests"]
    assert requests["GET Order(key)"] == 2
    assert requests["GET Order"] == 1


@pytest.mark.parametrize("ref", ["ORD-404", "11111111-2222-3333-4444-555555555555", "'; drop"])
async def test_unknown_order_is_not_found(client: CreatioClient, ref: str) -> None:
    with pytest.raises(NotFound):
        await client.find_order(ref)


async def test_quotes_and_cyrillic_in_numbers(client: CreatioClient, creatio: FakeServer) -> None:
    tricky = "O'Brien-ЗАК-'1''"
    added = creatio.post("/_fake/orders", {"Number": tricky})
    creatio.post("/_fake/orders", {"Number": "O"})  # what an unescaped literal would have matched
    order = await client.find_order(tricky)
    assert (order.id, order.number) == (added["Id"], tricky)


def test_odata_string_doubles_quotes() -> None:
    assert odata_string("O'Brien") == "'O''Brien'"
    assert odata_string("''") == "''''''"


async def test_status_ids_are_cached(client: CreatioClient, creatio: FakeServer) -> None:
    assert await client.find_status_id("Shipped") == STATUS_SHIPPED_ID
    assert await client.find_status_id("Shipped") == STATUS_SHIPPED_ID
    assert creatio.counters()["requests"]["GET OrderStatus"] == 1
    assert await client.find_status_id("In progress") != STATUS_SHIPPED_ID
    assert creatio.counters()["requests"]["GET OrderStatus"] == 2


async def test_unknown_status_is_a_business_error(client: CreatioClient, creatio: FakeServer) -> None:
    with pytest.raises(BusinessError) as caught:
        await client.find_status_id("Teleported")
    assert caught.value.code == "unknown_status"
    with pytest.raises(BusinessError):  # not cached as a miss either: asked again
        await client.find_status_id("Teleported")
    assert creatio.counters()["requests"]["GET OrderStatus"] == 2


async def test_set_order_status(client: CreatioClient, creatio: FakeServer) -> None:
    await client.set_order_status(ORDER_9876_ID, await client.find_status_id("Shipped"))
    state = order_state(creatio, ORDER_9876_ID)
    assert (state["StatusId"], state["StatusName"]) == (STATUS_SHIPPED_ID, "Shipped")
    assert order_state(creatio, ORDER_0001_ID)["StatusName"] == "New"
    assert creatio.counters()["patches"] == 1


async def test_refused_status_id_is_permanent_with_the_odata_message(client: CreatioClient) -> None:
    with pytest.raises(PermanentError) as caught:
        await client.set_order_status(ORDER_9876_ID, EMPTY_GUID)
    assert not isinstance(caught.value, TransientError)
    assert caught.value.code == "http_400"
    assert "OrderStatus" in caught.value.message


async def test_patch_of_an_unknown_order_is_not_found(client: CreatioClient) -> None:
    with pytest.raises(NotFound):
        await client.set_order_status("11111111-2222-3333-4444-555555555555", STATUS_SHIPPED_ID)


async def test_ids_that_are_not_guids_are_refused_before_any_request(
    client: CreatioClient, creatio: FakeServer
) -> None:
    with pytest.raises(PermanentError):
        await client.set_order_status("ORD9876", STATUS_SHIPPED_ID)
    assert creatio.counters()["requests"] == {}


async def test_other_odata_prefix(start_creatio: Callable[..., FakeServer]) -> None:
    creatio = start_creatio(odata_prefix="/odata")
    async with creatio.client(odata_path="/odata") as client:
        order = await client.find_order("ORD0002")
        await client.set_order_status(order.id, await client.find_status_id("Cancelled"))
        attached = await client.attach_file(order.id, file_name="a.pdf", content=b"%PDF-1.4 tiny")
    assert order.id == ORDER_0002_ID
    assert order_state(creatio, ORDER_0002_ID)["StatusName"] == "Cancelled"
    assert creatio.state()["files"][0]["id"] == attached.id


async def test_csrf_failure_status_403_does_not_bother_a_correct_client(
    start_creatio: Callable[..., FakeServer],
) -> None:
    creatio = start_creatio(csrf_failure_status=403)
    async with creatio.client() as client:
        await client.set_order_status(ORDER_0001_ID, STATUS_SHIPPED_ID)
    counters = creatio.counters()
    assert (counters["patches"], counters["csrf_failures"], counters["logins"]) == (1, 0, 1)


# --- session expiry ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["401", "redirect", "html"])
async def test_expired_session_is_renewed_with_one_login(client: CreatioClient, creatio: FakeServer, mode: str) -> None:
    await client.find_order("ORD9876")
    creatio.post("/_fake/expire-session", {"mode": mode})
    assert (await client.find_order("ORD0001")).id == ORDER_0001_ID
    creatio.post("/_fake/expire-session")
    await client.set_order_status(ORDER_0001_ID, STATUS_SHIPPED_ID)  # a write too
    counters = creatio.counters()
    assert counters["logins"] == 3
    assert counters["expired_responses"] == 2
    assert order_state(creatio, ORDER_0001_ID)["StatusName"] == "Shipped"


@pytest.mark.parametrize("mode", ["401", "redirect", "html"])
async def test_concurrent_calls_on_an_expired_session_share_one_login(
    client: CreatioClient, creatio: FakeServer, mode: str
) -> None:
    await client.login()
    creatio.post("/_fake/expire-session", {"mode": mode})
    refs = [ORDER_9876_ID, "ORD0001", "ORD0002", ORDER_0001_ID] * 5
    orders = await asyncio.gather(*(client.find_order(ref) for ref in refs))
    assert len(orders) == 20
    assert {o.number for o in orders} == {"ORD9876", "ORD0001", "ORD0002"}
    counters = creatio.counters()
    assert counters["logins"] == 2
    assert counters["expired_responses"] == 20


@pytest.mark.parametrize("mode", ["401", "redirect", "html"])
async def test_session_refused_again_after_login_is_session_expired(
    start_creatio: Callable[..., FakeServer], mode: str
) -> None:
    creatio = start_creatio(session_ttl_s=0, expiry_mode=mode)  # every session is dead on arrival
    async with creatio.client() as client:
        with pytest.raises(SessionExpired) as caught:
            await client.find_order("ORD9876")
    assert isinstance(caught.value, TransientError)
    assert caught.value.code == "session_expired"
    assert creatio.counters()["logins"] == 2  # the first login and exactly one renewal


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_overload_and_server_errors_are_transient(
    client: CreatioClient, creatio: FakeServer, status: int
) -> None:
    await client.login()
    creatio.post("/_fake/faults", {"status": status, "count": 1})
    with pytest.raises(TransientError) as caught:
        await client.find_order("ORD9876")
    assert caught.value.code == f"http_{status}"
    assert "injected fault" in caught.value.message
    assert (await client.find_order("ORD9876")).id == ORDER_9876_ID  # the fault is gone: the next call works


async def test_fault_on_login_is_transient(client: CreatioClient, creatio: FakeServer) -> None:
    creatio.post("/_fake/faults", {"status": 503, "count": 1})
    with pytest.raises(TransientError):
        await client.find_order("ORD9876")
    assert creatio.counters()["logins"] == 0


async def test_latency_beyond_the_timeout_is_transient(creatio: FakeServer) -> None:
    async with creatio.client(timeout=0.1) as client:
        await client.login()
        creatio.post("/_fake/faults", {"latency_ms": 400, "count": 1})
        with pytest.raises(TransientError) as caught:
            await client.find_order("ORD9876")
        assert caught.value.code == "timeout"
        assert (await client.find_order("ORD9876")).id == ORDER_9876_ID


async def test_check(client: CreatioClient, creatio: FakeServer) -> None:
    await client.check()
    counters = creatio.counters()
    assert counters["logins"] == 1
    assert counters["requests"]["GET OrderStatus"] == 1


async def test_check_on_an_unreachable_creatio_is_transient() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with CreatioClient(base_url=f"http://127.0.0.1:{port}", username="u", password="p") as client:
        with pytest.raises(TransientError) as caught:
            await client.check()
    assert caught.value.code == "connection_error"


# --- files ---------------------------------------------------------------------------------------------------------


def fake_pdf(size: int) -> bytes:
    body = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    return (b"%PDF-1.7\n" + body)[: size - 6] + b"\n%%EOF"


async def test_attach_in_chunks_then_idempotently(creatio: FakeServer) -> None:
    content = fake_pdf(2_500_000)
    async with creatio.client(upload_chunk_size=1_048_576) as client:
        attached = await client.attach_file(ORDER_9876_ID, file_name="invoice.pdf", content=content)
        assert attached == AttachedFile(id=attached.id, name="invoice.pdf", size=len(content), already_attached=False)
        (stored,) = creatio.state()["files"]
        assert stored["complete"]
        assert stored["sha256"] == hashlib.sha256(content).hexdigest()
        assert (stored["id"], stored["order_id"], stored["size"]) == (attached.id, ORDER_9876_ID, len(content))
        assert creatio.counters()["upload_chunks"] == 3
        assert await client.download_file(attached.id) == content
        assert await client.find_order_file(ORDER_9876_ID, "invoice.pdf") == (attached.id, len(content))

        again = await client.attach_file(ORDER_9876_ID, file_name="invoice.pdf", content=content)
        assert again == AttachedFile(id=attached.id, name="invoice.pdf", size=len(content), already_attached=True)
    assert len(creatio.state()["files"]) == 1
    counters = creatio.counters()
    assert counters["upload_chunks"] == 3
    assert counters["requests"]["POST OrderFile"] == 1


async def test_same_name_other_content_size_is_a_new_file(client: CreatioClient, creatio: FakeServer) -> None:
    first = await client.attach_file(ORDER_0001_ID, file_name="a.pdf", content=b"%PDF one")
    second = await client.attach_file(ORDER_0001_ID, file_name="a.pdf", content=b"%PDF two, longer")
    assert not second.already_attached
    assert second.id != first.id
    assert len(creatio.state()["files"]) == 2


async def test_cyrillic_and_quoted_file_names(client: CreatioClient, creatio: FakeServer) -> None:
    name = "Счёт №1 «O'Brien» d'Artagnan.pdf"
    content = fake_pdf(5000)
    attached = await client.attach_file(ORDER_0002_ID, file_name=name, content=content)
    assert await client.find_order_file(ORDER_0002_ID, name) == (attached.id, 5000)
    assert await client.find_order_file(ORDER_0002_ID, "Счёт.pdf") is None
    assert (await client.attach_file(ORDER_0002_ID, file_name=name, content=content)).already_attached
    (stored,) = creatio.state()["files"]
    assert stored["name"] == name
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    assert await client.download_file(attached.id) == content


async def test_attach_to_an_unknown_order_is_permanent(client: CreatioClient, creatio: FakeServer) -> None:
    with pytest.raises(PermanentError):
        await client.attach_file("11111111-2222-3333-4444-555555555555", file_name="a.pdf", content=b"%PDF")
    assert creatio.state()["files"] == []


class FailUploads(httpx.AsyncBaseTransport):
    """A real network transport that answers 503 itself to the `UploadFile` chunks after the first."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.chunks = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/UploadFile"):
            self.chunks += 1
            if self.chunks > 1:
                return httpx.Response(503, json={"error": "proxy overloaded"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_upload_is_completed_by_the_retry_in_the_same_row(creatio: FakeServer) -> None:
    content = fake_pdf(3000)
    async with creatio.client(upload_chunk_size=1000, transport=FailUploads()) as client:
        with pytest.raises(TransientError):
            await client.attach_file(ORDER_9876_ID, file_name="half.pdf", content=content)
    (half,) = creatio.state()["files"]
    assert not half["complete"]  # kept for the retry: a copy of the message may still be uploading into it
    async with creatio.client(upload_chunk_size=1000) as client:
        retried = await client.attach_file(ORDER_9876_ID, file_name="half.pdf", content=content)
    assert not retried.already_attached
    assert retried.id == half["id"] == attachment_id(ORDER_9876_ID, "half.pdf", content)
    (stored,) = creatio.state()["files"]
    assert stored["complete"]
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    assert creatio.counters()["requests"]["POST OrderFile"] == 1


class Gate(httpx.AsyncBaseTransport):
    """A real network transport that holds one kind of request until `release` is set, noting when others pass."""

    def __init__(self, hold: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hold = hold
        self.release = asyncio.Event()
        self.found = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(self.hold):
            await self.release.wait()
        response = await self.inner.handle_async_request(request)
        if request.method == "GET" and request.url.path.endswith("/OrderFile"):
            self.found.set()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_two_copies_attaching_at_once_leave_one_file(creatio: FakeServer) -> None:
    """Both copies look before either creates (a redelivery while the first copy's process was frozen)."""
    content = fake_pdf(3000)
    first, second = Gate("/OrderFile"), Gate("/OrderFile")
    async with (
        creatio.client(upload_chunk_size=1000, transport=first) as a,
        creatio.client(upload_chunk_size=1000, transport=second) as b,
    ):

        async def attach_a() -> AttachedFile:
            return await a.attach_file(ORDER_9876_ID, file_name="twice.pdf", content=content)

        async def attach_b() -> AttachedFile:
            await first.found.wait()  # a has looked and found nothing; b looks now, before a creates
            second.release.set()
            attached = await b.attach_file(ORDER_9876_ID, file_name="twice.pdf", content=content)
            first.release.set()
            return attached

        got_a, got_b = await asyncio.wait_for(asyncio.gather(attach_a(), attach_b()), 30)
    assert got_a.id == got_b.id
    (stored,) = creatio.state()["files"]
    assert stored["complete"]
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    assert creatio.counters()["requests"]["POST OrderFile"] == 2  # the second create was refused, and taken as done


async def test_a_refused_upload_deletes_its_row(creatio: FakeServer) -> None:
    class RefuseUploads(FailUploads):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/UploadFile"):
                return httpx.Response(200, json={"success": False, "errorInfo": {"message": "virus found"}})
            return await self.inner.handle_async_request(request)

    async with creatio.client(upload_chunk_size=1000, transport=RefuseUploads()) as client:
        with pytest.raises(PermanentError):
            await client.attach_file(ORDER_9876_ID, file_name="bad.pdf", content=fake_pdf(3000))
    assert creatio.state()["files"] == []


async def test_empty_file_is_refused(client: CreatioClient) -> None:
    with pytest.raises(PermanentError):
        await client.attach_file(ORDER_9876_ID, file_name="empty.pdf", content=b"")


# --- policies (the DMS's events, written to UsrPolicy) ---------------------------------------------------------------


def _policy(revision: int, status: str) -> dict[str, object]:
    return {"policy_number": "POL-77", "status": status, "revision": revision, "holder_name": "Иванов"}


async def test_an_older_policy_revision_arriving_last_does_not_overwrite_a_newer_one(
    client: CreatioClient, creatio: FakeServer
) -> None:
    """Two replicas, or a write applied late: revision 2 reaches Creatio before revision 1."""
    row_id = await client.record_policy(_policy(2, "active"))
    assert await client.record_policy(_policy(1, "issued")) == row_id
    (row,) = creatio.state()["policies"]
    assert (row["UsrRevision"], row["UsrStatus"]) == (2, "active")
    writes = creatio.counters()["policy_writes"]
    await client.record_policy(_policy(2, "active"))  # a repeat: nothing written
    assert creatio.counters()["policy_writes"] == writes
    await client.record_policy(_policy(3, "cancelled"))  # a newer one is
    (row,) = creatio.state()["policies"]
    assert (row["UsrRevision"], row["UsrStatus"]) == (3, "cancelled")
    assert creatio.counters()["policy_writes"] == writes + 1
