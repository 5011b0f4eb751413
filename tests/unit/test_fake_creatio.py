"""The fake Creatio, spoken to over real HTTP the way a real client would."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from esi.systems.crm.fake import (
    CONTACT_IVANOV_ID as CONTACT_ID,
)
from esi.systems.crm.fake import (
    EMPTY_GUID,
    FILE_TYPE_ID,
    ORDER_0001_ID,
    ORDER_9876_ID,
    ORDER_IDS,
    ORDER_STATUS_IDS,
    STATUS_NEW_ID,
    STATUS_SHIPPED_ID,
    create_app,
)
from esi.testing import serve_in_thread as serve

LOGIN = "/ServiceModel/AuthService.svc/Login"
CREDENTIALS = {"UserName": "Supervisor", "UserPassword": "Supervisor"}


# --- a real server for the fake ------------------------------------------------------------------------------------


@dataclass
class FakeServer:
    url: str
    app: FastAPI

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/state").raise_for_status().json()

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body)


@pytest.fixture
def start_creatio() -> Iterator[Callable[..., FakeServer]]:
    """Start fake Creatio servers (`create_app` keyword arguments); all stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> FakeServer:
            app = create_app(**options)
            return FakeServer(stack.enter_context(serve(app)), app)

        yield start


@pytest.fixture(scope="module")
def shared_creatio() -> Iterator[FakeServer]:
    app = create_app()
    with serve(app) as url:
        yield FakeServer(url, app)


@pytest.fixture
def creatio(shared_creatio: FakeServer) -> FakeServer:
    """The module's default fake Creatio, back at its seed (a server per test would cost its shutdown time)."""
    shared_creatio.post("/_fake/reset").raise_for_status()
    return shared_creatio


@pytest.fixture
def http(creatio: FakeServer) -> Iterator[httpx.Client]:
    headers = {"Accept": "application/json", "ForceUseSession": "true"}
    with httpx.Client(base_url=creatio.url, headers=headers) as client:
        yield client


def login(client: httpx.Client, **credentials: str) -> str:
    """Log the client in; return the CSRF token."""
    response = client.post(LOGIN, json={**CREDENTIALS, **credentials})
    assert response.status_code == 200, response.text
    assert response.json()["Code"] == 0, response.text
    return client.cookies["BPMCSRF"]


def order_row(state: dict[str, Any], order_id: str) -> dict[str, Any]:
    return next(o for o in state["orders"] if o["Id"] == order_id)


# --- authentication ------------------------------------------------------------------------------------------------


def test_login_success_sets_creatio_cookies(http: httpx.Client) -> None:
    response = http.post(LOGIN, json={**CREDENTIALS, "TimeZoneOffset": -180})
    assert response.status_code == 200
    assert response.json() == {
        "Code": 0,
        "Message": "",
        "Exception": None,
        "PasswordChangeUrl": None,
        "RedirectUrl": None,
    }
    set_cookies = {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}
    assert set(set_cookies) >= {".ASPXAUTH", "BPMCSRF", "BPMLOADER", "UserName"}
    assert "httponly" in set_cookies[".ASPXAUTH"].lower()
    assert "path=/" in set_cookies["BPMCSRF"].lower()
    assert "httponly" not in set_cookies["BPMCSRF"].lower()
    assert response.cookies["UserName"] == "Supervisor"


def test_wrong_password_is_http_200_with_code_1_and_no_session(http: httpx.Client, creatio: FakeServer) -> None:
    response = http.post(LOGIN, json={"UserName": "Supervisor", "UserPassword": "nope"})
    assert response.status_code == 200
    assert response.json()["Code"] == 1
    assert response.json()["Message"]
    assert ".ASPXAUTH" not in response.cookies
    counters = creatio.state()["counters"]
    assert (counters["logins"], counters["failed_logins"]) == (0, 1)
    assert http.get("/0/odata/Order").status_code == 401


def test_business_calls_need_a_session(http: httpx.Client) -> None:
    assert http.get("/0/odata/OrderStatus").status_code == 401
    login(http)
    assert http.get("/0/odata/OrderStatus").status_code == 200


@pytest.mark.parametrize("status", [401, 403])
def test_writes_need_the_csrf_header(start_creatio: Callable[..., FakeServer], status: int) -> None:
    creatio = start_creatio(csrf_failure_status=status)
    with httpx.Client(base_url=creatio.url) as http:
        csrf = login(http)
        url = f"/0/odata/Order({ORDER_9876_ID})"
        body = {"StatusId": STATUS_SHIPPED_ID}
        assert http.patch(url, json=body).status_code == status
        assert http.patch(url, json=body, headers={"BPMCSRF": "forged"}).status_code == status
        assert order_row(creatio.state(), ORDER_9876_ID)["StatusId"] == STATUS_NEW_ID
        response = http.patch(url, json=body, headers={"BPMCSRF": csrf})
        assert response.status_code == 204
        assert response.content == b""
        state = creatio.state()
        assert order_row(state, ORDER_9876_ID)["StatusName"] == "Shipped"
        assert state["counters"]["csrf_failures"] == 2
        assert state["counters"]["patches"] == 1


def test_expiry_mode_401(http: httpx.Client, creatio: FakeServer) -> None:
    login(http)
    assert creatio.post("/_fake/expire-session").json()["expired"] == 1
    assert http.get("/0/odata/Order").status_code == 401


def test_expiry_mode_redirect_points_at_a_served_login_page(http: httpx.Client, creatio: FakeServer) -> None:
    login(http)
    assert creatio.post("/_fake/expire-session", {"mode": "redirect"}).json()["mode"] == "redirect"
    response = http.get("/0/odata/Order", params={"$top": "1"})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("/Login/NuiLogin.aspx?ReturnUrl=")
    assert "%2F0%2Fodata%2FOrder" in location
    page = http.get(location)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]


def test_expiry_mode_html_is_a_200_login_page(start_creatio: Callable[..., FakeServer]) -> None:
    creatio = start_creatio(expiry_mode="html")
    with httpx.Client(base_url=creatio.url) as http:
        login(http)
        creatio.post("/_fake/expire-session")
        response = http.get("/0/odata/Order")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<form" in response.text
        assert creatio.state()["counters"]["expired_responses"] == 1


def test_expire_session_refuses_an_unknown_mode(creatio: FakeServer) -> None:
    assert creatio.post("/_fake/expire-session", {"mode": "teapot"}).status_code == 422
    assert creatio.state()["config"]["expiry_mode"] == "401"


def test_zero_session_ttl_expires_every_session(start_creatio: Callable[..., FakeServer]) -> None:
    creatio = start_creatio(session_ttl_s=0)
    with httpx.Client(base_url=creatio.url) as http:
        login(http)
        assert http.get("/0/odata/Order").status_code == 401


# --- OData ---------------------------------------------------------------------------------------------------------


def test_order_by_number_with_select(http: httpx.Client) -> None:
    login(http)
    response = http.get("/0/odata/Order", params={"$filter": "Number eq 'ORD9876'", "$select": "Id,Number,StatusId"})
    assert response.status_code == 200
    assert response.headers["odata-version"] == "4.0"
    body = response.json()
    assert body["@odata.context"].endswith("/0/odata/$metadata#Order(Id,Number,StatusId)")
    assert body["value"] == [{"Id": ORDER_9876_ID, "Number": "ORD9876", "StatusId": STATUS_NEW_ID}]


def test_status_by_name_and_filters_joined_with_and(http: httpx.Client) -> None:
    login(http)
    rows = http.get("/0/odata/OrderStatus", params={"$filter": "Name eq 'Shipped'", "$select": "Id,Name"}).json()
    assert rows["value"] == [{"Id": STATUS_SHIPPED_ID, "Name": "Shipped"}]
    both = f"Name eq 'Shipped' and Id eq {STATUS_SHIPPED_ID}"
    assert len(http.get("/0/odata/OrderStatus", params={"$filter": both}).json()["value"]) == 1
    neither = f"Name eq 'New' and Id eq {STATUS_SHIPPED_ID}"
    assert http.get("/0/odata/OrderStatus", params={"$filter": neither}).json()["value"] == []
    assert len(http.get("/0/odata/OrderStatus").json()["value"]) >= 7
    assert len(http.get("/0/odata/Order", params={"$top": "2"}).json()["value"]) == 2


def test_seed(creatio: FakeServer) -> None:
    state = creatio.state()
    assert {s["Name"] for s in state["statuses"]} >= {
        "New",
        "Confirmed",
        "In progress",
        "Shipped",
        "Delivered",
        "Completed",
        "Cancelled",
    }
    assert {s["Name"]: s["Id"] for s in state["statuses"]} == ORDER_STATUS_IDS
    assert {o["Number"]: o["Id"] for o in state["orders"]} == ORDER_IDS
    for order in state["orders"]:
        assert order["StatusName"] == "New"
        assert order["AccountId"] == order["ContactId"] == order["PaymentStatusId"] == EMPTY_GUID


def test_quotes_are_escaped_by_doubling(http: httpx.Client, creatio: FakeServer) -> None:
    added = creatio.post("/_fake/orders", {"Number": "O'Brien-ЗАК-1"}).json()
    login(http)
    rows = http.get("/0/odata/Order", params={"$filter": "Number eq 'O''Brien-ЗАК-1'"}).json()["value"]
    assert [r["Id"] for r in rows] == [added["Id"]]
    unbalanced = http.get("/0/odata/Order", params={"$filter": "Number eq 'O'Brien'"})
    assert unbalanced.status_code == 400


def test_single_order_is_a_bare_object(http: httpx.Client) -> None:
    login(http)
    body = http.get(f"/0/odata/Order({ORDER_9876_ID})").json()
    assert body["Id"] == ORDER_9876_ID
    assert body["Number"] == "ORD9876"
    assert "value" not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/0/odata/Order(guid'{ORDER_9876_ID}')", 400),  # the OData 3 key form
        ("/0/odata/Order(not-a-guid)", 400),
        (f"/0/odata/Order({EMPTY_GUID})", 404),
        ("/0/odata/Nope", 404),
        (f"/0/odata/Order?$filter=Id eq '{ORDER_9876_ID}'", 400),  # a GUID column compared with a string
        ("/0/odata/Order?$filter=Number has 'A'", 400),
        ("/0/odata/Order?$select=Colour", 400),
    ],
)
def test_odata_errors_use_the_envelope(http: httpx.Client, path: str, status: int) -> None:
    login(http)
    response = http.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json; odata.metadata=minimal")
    assert response.headers["odata-version"] == "4.0"
    error = response.json()["error"]
    assert error["code"] == ""
    assert error["message"]
    assert set(error["innererror"]) == {"message", "type", "stacktrace"}


@pytest.mark.parametrize(
    ("key", "body", "status", "hint"),
    [
        (ORDER_9876_ID, {"Colour": "red"}, 400, "Colour"),
        (ORDER_9876_ID, {"StatusId": "shipped"}, 400, "Edm.Guid"),
        (ORDER_9876_ID, {"StatusId": EMPTY_GUID}, 400, "OrderStatus"),
        ("11111111-2222-3333-4444-555555555555", {"StatusId": STATUS_SHIPPED_ID}, 404, ""),
    ],
)
def test_patch_refusals(http: httpx.Client, creatio: FakeServer, key: str, body: dict, status: int, hint: str) -> None:
    csrf = login(http)
    response = http.patch(f"/0/odata/Order({key})", json=body, headers={"BPMCSRF": csrf})
    assert response.status_code == status
    assert hint in response.json()["error"]["innererror"]["message"]
    assert creatio.state()["counters"]["patches"] == 0


def test_other_prefix(start_creatio: Callable[..., FakeServer]) -> None:
    creatio = start_creatio(odata_prefix="/odata")
    with httpx.Client(base_url=creatio.url) as http:
        login(http)
        assert http.get(f"/odata/Order({ORDER_0001_ID})").json()["Number"] == "ORD0001"
        assert http.get(f"/0/odata/Order({ORDER_0001_ID})").status_code == 404


# --- files ---------------------------------------------------------------------------------------------------------


def test_two_step_upload_in_ranges_then_download(http: httpx.Client, creatio: FakeServer) -> None:
    csrf = login(http)
    content = bytes(range(256)) * 40  # 10 240 bytes
    total = len(content)
    created = http.post(
        "/0/odata/OrderFile",
        headers={"BPMCSRF": csrf},
        json={"Name": "Счёт.pdf", "OrderId": ORDER_9876_ID, "Size": total, "TotalSize": total, "TypeId": FILE_TYPE_ID},
    )
    assert created.status_code == 201
    file_id = created.json()["Id"]
    params = {
        "fileId": file_id,
        "totalFileLength": str(total),
        "mimeType": "application/pdf",
        "fileName": "Счёт.pdf",
        "columnName": "Data",
        "entitySchemaName": "OrderFile",
        "parentColumnName": "Order",
        "parentColumnValue": ORDER_9876_ID,
    }
    ranges = [(6000, total - 1), (0, 2999), (3000, 5999)]  # out of order on purpose
    for n, (start, end) in enumerate(ranges, 1):
        response = http.post(
            "/0/rest/FileApiService/UploadFile",
            params=params,
            content=content[start : end + 1],
            headers={
                "BPMCSRF": csrf,
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end}/{total}",
            },
        )
        assert response.status_code == 200
        assert response.json()["success"] is True
        (stored,) = creatio.state()["files"]
        assert stored["complete"] is (n == len(ranges))
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    assert (stored["name"], stored["order_id"], stored["size"]) == ("Счёт.pdf", ORDER_9876_ID, total)
    download = http.get(f"/0/rest/FileService/Download/OrderFile/{file_id}")
    assert download.status_code == 200
    assert download.content == content
    listed = http.get(
        "/0/odata/OrderFile",
        params={"$filter": f"OrderId eq {ORDER_9876_ID} and Name eq 'Счёт.pdf'", "$select": "Id,Size"},
    ).json()["value"]
    assert listed == [{"Id": file_id, "Size": total}]


def test_upload_refuses_a_range_that_does_not_fit(http: httpx.Client) -> None:
    csrf = login(http)
    params = {
        "fileId": "0b3b3b3b-0000-4000-8000-000000000001",
        "totalFileLength": "10",
        "fileName": "a.pdf",
        "parentColumnValue": ORDER_9876_ID,
    }
    response = http.post(
        "/0/rest/FileApiService/UploadFile",
        params=params,
        content=b"12345",
        headers={"BPMCSRF": csrf, "Content-Range": "bytes 0-9/10"},
    )
    assert response.status_code == 400


def test_upload_needs_csrf(http: httpx.Client, creatio: FakeServer) -> None:
    login(http)
    params = {
        "fileId": "0b3b3b3b-0000-4000-8000-000000000002",
        "totalFileLength": "3",
        "fileName": "a.pdf",
        "parentColumnValue": ORDER_9876_ID,
    }
    response = http.post(
        "/0/rest/FileApiService/UploadFile", params=params, content=b"abc", headers={"Content-Range": "bytes 0-2/3"}
    )
    assert response.status_code == 401
    assert creatio.state()["files"] == []


# --- faults and operations -----------------------------------------------------------------------------------------


def test_faults_apply_to_login_but_not_to_fake_endpoints(http: httpx.Client, creatio: FakeServer) -> None:
    assert creatio.post("/_fake/faults", {"status": 503, "count": 1}).status_code == 200
    assert http.post(LOGIN, json=CREDENTIALS).status_code == 503
    assert creatio.state()["faults"]["injected"] == 1  # /_fake/state itself is not faulted
    login(http)


def test_request_counters(http: httpx.Client, creatio: FakeServer) -> None:
    login(http)
    http.get("/0/odata/OrderStatus")
    http.get("/0/odata/OrderStatus")
    http.get(f"/0/odata/Order({ORDER_9876_ID})")
    requests = creatio.state()["counters"]["requests"]
    assert requests == {"POST Login": 1, "GET OrderStatus": 2, "GET Order(key)": 1}


def test_reset_restores_the_seed(http: httpx.Client, creatio: FakeServer) -> None:
    csrf = login(http)
    http.patch(f"/0/odata/Order({ORDER_9876_ID})", json={"StatusId": STATUS_SHIPPED_ID}, headers={"BPMCSRF": csrf})
    creatio.post("/_fake/orders", {"Number": "EXTRA"})
    creatio.post("/_fake/faults", {"status": 500, "rate": 0.0})
    creatio.post("/_fake/expire-session", {"mode": "html"})
    creatio.post("/_fake/reset")
    state = creatio.state()
    assert order_row(state, ORDER_9876_ID)["StatusId"] == STATUS_NEW_ID
    assert len(state["orders"]) == 3
    assert state["counters"]["logins"] == 0
    assert state["counters"]["requests"] == {}
    assert state["faults"]["armed"] is None
    assert state["config"]["expiry_mode"] == "401"
    assert http.get("/0/odata/Order").status_code == 401  # sessions dropped


# --- changes a manager makes, the business process's webhook, and reading changes ---------------------------------


@dataclass
class Receiver:
    """A stand-in for esi's webhook: records each POST with its Basic credentials."""

    url: str
    calls: list[dict[str, Any]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    calls: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/events/crm/{event_type}")
    async def event(event_type: str, request: Request) -> JSONResponse:
        calls.append({"type": event_type, "auth": request.headers.get("authorization"), "body": await request.json()})
        return JSONResponse({"status": "accepted"}, status_code=202)

    with serve(app) as url:
        yield Receiver(url, calls)


def test_a_manager_changes_an_order_and_modified_on_moves(creatio: FakeServer, http: httpx.Client) -> None:
    before = next(o for o in creatio.state()["orders"] if o["Number"] == "ORD9876")
    changed = creatio.post("/_fake/orders/ORD9876", {"Status": "Shipped", "Amount": 16000})
    assert changed.status_code == 200, changed.text
    row = changed.json()
    assert row["StatusId"] == STATUS_SHIPPED_ID
    assert row["Amount"] == 16000
    assert row["ModifiedOn"] > before["ModifiedOn"]
    assert row["event"]["type"] == "order_changed"
    assert row["event"]["body"] == {
        "Id": ORDER_9876_ID,
        "Number": "ORD9876",
        "Status": "Shipped",
        "ModifiedOn": row["ModifiedOn"],
        "Amount": 16000,
    }
    assert row["event"]["webhook"] is False  # no target configured
    # a test may pin the moment (two changes sharing one ModifiedOn)
    pinned = creatio.post("/_fake/orders/ORD9876", {"ModifiedOn": "2026-12-01T10:00:00+03:00"}).json()
    assert pinned["ModifiedOn"] == "2026-12-01T07:00:00.000Z"
    assert creatio.post("/_fake/orders/NOPE", {"Status": "Shipped"}).status_code == 404
    assert creatio.post("/_fake/orders/ORD9876", {"Status": "Paid?"}).status_code == 422
    assert creatio.post("/_fake/orders/ORD9876", {"Colour": "red"}).status_code == 422
    assert creatio.post("/_fake/orders/ORD9876", {}).status_code == 422
    assert creatio.post("/_fake/orders/ORD9876", {"ModifiedOn": "yesterday"}).status_code == 422
    # an OData write stamps ModifiedOn too, as every save in Creatio does
    login(http)
    csrf = http.cookies["BPMCSRF"]
    assert http.patch(f"/0/odata/Order({ORDER_9876_ID})", json={"Amount": 1}, headers={"BPMCSRF": csrf}).is_success
    after = next(o for o in creatio.state()["orders"] if o["Number"] == "ORD9876")
    assert after["ModifiedOn"] > pinned["ModifiedOn"]


def test_contacts_are_seeded_changed_and_added(creatio: FakeServer) -> None:
    contacts = {c["Id"]: c for c in creatio.state()["contacts"]}
    assert len(contacts) == 3
    some = next(iter(contacts))
    row = creatio.post(f"/_fake/contacts/{some}", {"Email": "new@example.com"}).json()
    assert row["Email"] == "new@example.com"
    assert row["event"]["type"] == "contact_changed"
    assert set(row["event"]["body"]) == {"Id", "Name", "Email", "Phone", "ModifiedOn"}
    new_id = "6c1f0b4c-2f55-4d77-9d55-0f4f1e1f7e01"
    added = creatio.post(f"/_fake/contacts/{new_id.upper()}", {"Name": "Новый Контакт"}).json()
    assert added["Id"] == new_id
    assert added["event"]["body"]["Email"] is None
    assert creatio.post("/_fake/contacts/not-a-guid", {"Name": "x"}).status_code == 422
    assert creatio.post(f"/_fake/contacts/{new_id}", {"Name": 5}).status_code == 422
    assert creatio.post(f"/_fake/contacts/{new_id}", {}).status_code == 422


def test_the_business_process_posts_each_change_until_switched_off(creatio: FakeServer, receiver: Receiver) -> None:
    config = creatio.post("/_fake/webhook", {"url": receiver.url, "user": "creatio", "password": "pw"})
    assert config.json() == {"url": receiver.url, "user": "creatio", "enabled": True}
    row = creatio.post("/_fake/orders/ORD0001", {"Status": "Confirmed"}).json()
    assert row["event"]["webhook"] is True
    deadline = time.monotonic() + 5
    while len(receiver.calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the recorder with a deadline
    assert receiver.calls == [
        {
            "type": "order_changed",
            "auth": "Basic " + base64.b64encode(b"creatio:pw").decode(),
            "body": row["event"]["body"],
        }
    ]
    state = creatio.state()
    assert state["counters"]["webhooks_sent"] == 1
    assert state["webhook_calls"][0]["status"] == 202
    assert "pw" not in str(state["config"]["webhook"])

    assert creatio.post("/_fake/webhook", {"enabled": False}).json()["enabled"] is False
    assert creatio.post("/_fake/orders/ORD0001", {"Status": "Shipped"}).json()["event"]["webhook"] is False
    assert creatio.post("/_fake/webhook", {"url": 5}).status_code == 422
    assert creatio.post("/_fake/webhook", [1]).status_code == 422
    # a receiver that is down: logged and dropped, as a failed process is
    creatio.post("/_fake/webhook", {"url": "http://127.0.0.1:9", "enabled": True})
    creatio.post("/_fake/orders/ORD0001", {"Status": "Delivered"})
    deadline = time.monotonic() + 5
    while creatio.state()["counters"]["webhooks_failed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert creatio.state()["webhook_calls"][-1]["error"]
    assert len(receiver.calls) == 1
    creatio.post("/_fake/reset")
    assert creatio.state()["config"]["webhook"]["url"] is None


def test_a_webhook_target_given_at_start(start_creatio: Callable[..., FakeServer], receiver: Receiver) -> None:
    from esi.systems.crm.fake.state import WebhookTarget

    fake = start_creatio(webhook=WebhookTarget(url=receiver.url, user="u", password="p"))
    fake.post(f"/_fake/contacts/{CONTACT_ID}", {"Phone": "+7 000"})
    deadline = time.monotonic() + 5
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.calls[0]["type"] == "contact_changed"
    assert receiver.calls[0]["body"]["Phone"] == "+7 000"


@pytest.mark.parametrize(
    ("query", "numbers"),
    [
        ("ModifiedOn gt 2026-12-01T10:00:00Z", ["B", "C"]),
        ("ModifiedOn ge 2026-12-01T10:00:00.000Z", ["A", "B", "C"]),
        ("ModifiedOn lt 2026-12-01T13:00:01.5+03:00 and ModifiedOn gt 2026-01-01T00:00:00Z", ["A", "B"]),
        ("ModifiedOn le 2026-12-01T10:00:00Z and ModifiedOn ge 2026-12-01T10:00:00Z", ["A"]),
        ("ModifiedOn ne 2026-12-01T10:00:00Z and ModifiedOn gt 2026-12-01T00:00:00Z", ["B", "C"]),
        ("ModifiedOn eq '2026-12-01T10:00:01Z'", ["B"]),
    ],
)
def test_changes_are_filtered_and_ordered_by_modified_on(
    creatio: FakeServer, http: httpx.Client, query: str, numbers: list[str]
) -> None:
    for number, when in (("C", "10:00:02"), ("A", "10:00:00"), ("B", "10:00:01")):
        creatio.post("/_fake/orders", {"Number": number}).raise_for_status()
        creatio.post(f"/_fake/orders/{number}", {"ModifiedOn": f"2026-12-01T{when}Z"}).raise_for_status()
    login(http)
    response = http.get("/0/odata/Order", params={"$filter": query, "$orderby": "ModifiedOn,Id", "$select": "Number"})
    assert response.status_code == 200, response.text
    assert [row["Number"] for row in response.json()["value"]] == numbers


@pytest.mark.parametrize(
    "query",
    [
        "ModifiedOn gt 'yesterday'",
        "Number gt 2026-12-01T10:00:00Z",
        f"Id gt {ORDER_9876_ID}",
        "ModifiedOn gt 2026-13-01T10:00:00Z",
    ],
)
def test_bad_date_comparisons_are_400(http: httpx.Client, query: str) -> None:
    login(http)
    assert http.get("/0/odata/Order", params={"$filter": query}).status_code == 400
