"""Every flow of the original system, end to end: HTTP API → RabbitMQ → adapters → fakes → back to 1C."""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from esi.testing import EsiSystem
from tests.support import unique

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 2000 + b"%%EOF\n"


def test_create_user_reaches_the_dms_and_its_answer_reaches_1c(esi_system: EsiSystem) -> None:
    request_id = unique("USER_REQ")
    user_id = unique("U")
    response = esi_system.post(
        "/send_to_dms",
        {"request_id": request_id, "user_id": user_id, "name": "Иванов Иван", "email": "ivanov@example.com"},
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "request_id": request_id}

    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["target"] == "dms"
    assert final["message_type"] == "create_user"
    assert final["response"]["name"] == "Иванов Иван"
    assert final["response"]["dms_user_id"].startswith("DMS-")

    users = [u for u in esi_system.dms_state()["users"] if u["external_id"] == user_id]
    assert len(users) == 1
    assert users[0]["name"] == "Иванов Иван"
    assert users[0]["id"] == final["response"]["dms_user_id"]


def test_update_order_status_with_policy_info_goes_crm_then_dms_then_back(esi_system: EsiSystem) -> None:
    request_id = unique("ORDER_REQ")
    response = esi_system.post(
        "/send_to_crm",
        {
            "request_id": request_id,
            "order_id": "ORD9876",
            "status": "Shipped",
            "needs_policy_info": True,
            "policy_number": "POL-0001",
        },
    )
    assert response.status_code == 202, response.text

    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["response"]["status"] == "Shipped"
    assert final["response"]["order_number"] == "ORD9876"
    assert final["response"]["policy_info"]["policy_number"] == "POL-0001"
    assert final["response"]["policy_info"]["status"] == "active"

    state = esi_system.creatio_state()
    order = next(o for o in state["orders"] if o["Number"] == "ORD9876")
    shipped = next(s for s in state["statuses"] if s["Name"] == "Shipped")
    assert order["StatusId"] == shipped["Id"]


def test_update_order_status_by_guid_without_policy(esi_system: EsiSystem) -> None:
    state = esi_system.creatio_state()
    order = next(o for o in state["orders"] if o["Number"] == "ORD0001")
    request_id = unique("ORDER_REQ")
    assert (
        esi_system.post(
            "/send_to_crm", {"request_id": request_id, "order_id": order["Id"], "status": "Delivered"}
        ).status_code
        == 202
    )
    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["response"]["order_guid"] == order["Id"]
    assert "policy_info" not in final["response"]
    after = next(o for o in esi_system.creatio_state()["orders"] if o["Id"] == order["Id"])
    delivered = next(s for s in state["statuses"] if s["Name"] == "Delivered")
    assert after["StatusId"] == delivered["Id"]


def test_a_late_older_order_update_does_not_overwrite_a_newer_one(esi_system: EsiSystem) -> None:
    number = f"ORD-CAS-{uuid.uuid4().hex[:6]}"
    created = httpx.post(f"{esi_system.creatio_url}/_fake/orders", json={"Number": number}, timeout=10)
    assert created.status_code == 201, created.text
    delivered_id, shipped_id = unique("CAS-DELIVERED"), unique("CAS-SHIPPED")
    # 1C changed the order to Shipped at 10:00 and to Delivered at 11:00; Shipped was held up (a retried send)
    assert (
        esi_system.post(
            "/send_to_crm",
            {
                "request_id": delivered_id,
                "order_id": number,
                "status": "Delivered",
                "status_changed_at": "2026-12-01T11:00:00+00:00",
            },
        ).status_code
        == 202
    )
    assert esi_system.wait_final(delivered_id)["response"]["applied"] is True
    assert (
        esi_system.post(
            "/send_to_crm",
            {
                "request_id": shipped_id,
                "order_id": number,
                "status": "Shipped",
                "status_changed_at": "2026-12-01T13:00:00+03:00",
            },
        ).status_code
        == 202
    )
    late = esi_system.wait_final(shipped_id)
    assert late["status"] == "completed", late
    assert late["response"]["applied"] is False, late
    assert "superseded" in late["response"]["note"], late
    assert "Delivered" in late["response"]["note"], late
    state = esi_system.creatio_state()
    order = next(o for o in state["orders"] if o["Number"] == number)
    assert order["StatusName"] == "Delivered", order
    # a newer one still applies
    closed_id = unique("CAS-NEWER")
    assert (
        esi_system.post(
            "/send_to_crm",
            {
                "request_id": closed_id,
                "order_id": number,
                "status": "Shipped",
                "status_changed_at": "2026-12-01T12:00:00Z",
            },
        ).status_code
        == 202
    )
    assert esi_system.wait_final(closed_id)["response"]["applied"] is True
    order = next(o for o in esi_system.creatio_state()["orders"] if o["Number"] == number)
    assert order["StatusName"] == "Shipped", order


def test_get_policy_info_through_the_generic_endpoint(esi_system: EsiSystem) -> None:
    response = esi_system.post("/requests/dms/get_policy_info", {"policy_number": "POL-0001"})
    assert response.status_code == 202
    request_id = response.json()["request_id"]  # generated, since none was sent
    assert request_id
    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["response"]["holder_name"] == "Иванов Иван Иванович"
    assert final["message_type"] == "get_policy_info"


def _files_for(system: EsiSystem, order_guid: str) -> list[dict]:
    return [f for f in system.creatio_state()["files"] if f["order_id"] == order_guid]


def test_send_pdf_file_as_base64_json_is_attached_in_two_steps(esi_system: EsiSystem) -> None:
    request_id = unique("PDF_REQ")
    name = f"Счёт-{request_id}.pdf"
    response = esi_system.post(
        "/send_to_crm",
        {
            "request_id": request_id,
            "message_type": "send_pdf_file",
            "order_id": "ORD9876",
            "file_name": name,
            "file_content": base64.b64encode(PDF).decode(),
        },
    )
    assert response.status_code == 202, response.text
    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["response"]["size"] == len(PDF)
    files = [f for f in _files_for(esi_system, final["response"]["order_guid"]) if f["name"] == name]
    assert len(files) == 1
    assert files[0]["complete"]
    assert files[0]["size"] == len(PDF)
    download = httpx.get(f"{esi_system.creatio_url}/0/rest/FileService/Download/OrderFile/{files[0]['id']}")
    # the download needs a session; log in as a client would
    if download.status_code != 200:
        with httpx.Client(base_url=esi_system.creatio_url) as c:
            c.post("/ServiceModel/AuthService.svc/Login", json={"UserName": "Supervisor", "UserPassword": "Supervisor"})
            download = c.get(f"/0/rest/FileService/Download/OrderFile/{files[0]['id']}")
    assert download.content == PDF


def test_send_pdf_file_as_multipart_upload(esi_system: EsiSystem) -> None:
    request_id = unique("PDF_MP")
    response = httpx.post(
        f"{esi_system.api_url}/requests/crm/send_pdf_file",
        data={"request_id": request_id, "order_id": "ORD0002"},
        files={"file": (f"{request_id}.pdf", PDF, "application/pdf")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    final = esi_system.wait_final(request_id)
    assert final["status"] == "completed", final
    assert final["response"]["file_name"] == f"{request_id}.pdf"
    files = [f for f in _files_for(esi_system, final["response"]["order_guid"]) if f["name"] == f"{request_id}.pdf"]
    assert len(files) == 1
    assert files[0]["size"] == len(PDF)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"order_id": "ORD9876", "status": "NoSuchStatus"}, "NoSuchStatus"),
        ({"order_id": "ORD-DOES-NOT-EXIST", "status": "Shipped"}, "ORD-DOES-NOT-EXIST"),
    ],
)
def test_crm_business_failures_end_as_failed_with_a_reason(esi_system: EsiSystem, body: dict, problem: str) -> None:
    request_id = unique("ORDER_FAIL")
    assert esi_system.post("/send_to_crm", {"request_id": request_id, **body}).status_code == 202
    final = esi_system.wait_final(request_id)
    assert final["status"] == "failed", final
    assert problem in final["error"]["message"]
    assert final["error"]["code"] in ("unknown_status", "not_found")


def test_dms_refusing_a_user_ends_as_failed_with_its_reason(esi_system: EsiSystem) -> None:
    request_id = unique("USER_FAIL")
    body = {"request_id": request_id, "user_id": unique("U"), "name": "Пётр", "email": "petr@refused.example"}
    assert esi_system.post("/send_to_dms", body).status_code == 202
    final = esi_system.wait_final(request_id)
    assert final["status"] == "failed", final
    assert final["error"]["system"] == "dms"
    assert "refused" in final["error"]["message"] or "validation" in final["error"]["message"]


def test_unknown_policy_in_the_crm_sub_request_fails_the_order_request(esi_system: EsiSystem) -> None:
    request_id = unique("ORDER_POL")
    assert (
        esi_system.post(
            "/send_to_crm",
            {
                "request_id": request_id,
                "order_id": "ORD0001",
                "status": "Shipped",
                "needs_policy_info": True,
                "policy_number": "POL-NOPE",
            },
        ).status_code
        == 202
    )
    final = esi_system.wait_final(request_id)
    assert final["status"] == "failed", final
    assert "POL-NOPE" in final["error"]["message"]
    # the status change itself happened and is reported
    assert final["response"]["status"] == "Shipped"


def test_a_long_poll_answers_as_soon_as_the_request_settles(esi_system: EsiSystem) -> None:
    request_id = unique("USER_WAIT")
    body = {"request_id": request_id, "user_id": unique("U"), "name": "Сидоров", "email": "sidorov@example.com"}
    assert esi_system.post("/send_to_dms", body).status_code == 202
    response = httpx.get(f"{esi_system.api_url}/requests/{request_id}", params={"wait": 20}, timeout=30)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "completed", record  # one GET, no polling loop
    assert record["response"]["dms_user_id"].startswith("DMS-")


def test_a_long_poll_ends_with_the_current_state_when_the_wait_runs_out(esi_sqlite: EsiSystem) -> None:
    esi_sqlite.fault("dms", {"latency_ms": 3000, "count": 1})
    try:
        request_id = unique("USER_SLOW")
        body = {"request_id": request_id, "user_id": unique("U"), "name": "Медленный", "email": "slow@example.com"}
        assert esi_sqlite.post("/send_to_dms", body).status_code == 202
        started = time.monotonic()
        response = httpx.get(f"{esi_sqlite.api_url}/requests/{request_id}", params={"wait": 0.5}, timeout=30)
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["status"] in ("accepted", "in_progress")
        assert 0.5 <= waited < 2.5, waited
        # a second long poll outlasts the slow call and gets the answer
        response = httpx.get(f"{esi_sqlite.api_url}/requests/{request_id}", params={"wait": 20}, timeout=30)
        assert response.json()["status"] == "completed", response.text
    finally:
        esi_sqlite.fault("dms", {})


def test_a_long_poll_refuses_a_bad_wait_and_an_unknown_request(esi_sqlite: EsiSystem) -> None:
    response = httpx.get(f"{esi_sqlite.api_url}/requests/nope-{unique('X')}", params={"wait": 5}, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_request"
    response = httpx.get(f"{esi_sqlite.api_url}/requests/whatever", params={"wait": -1}, timeout=10)
    assert response.status_code == 422
    assert "wait" in response.text


def test_a_post_with_prefer_wait_answers_with_the_outcome(esi_system: EsiSystem) -> None:
    request_id = unique("USER_PREFER")
    body = {"request_id": request_id, "user_id": unique("U"), "name": "Сразу", "email": "at-once@example.com"}
    response = esi_system.post("/send_to_dms", body, headers={"Prefer": "wait=20"})
    assert response.status_code == 200, response.text  # one request: accepted, carried, answered
    record = response.json()
    assert record["request_id"] == request_id, record
    assert record["status"] == "completed", record
    assert record["response"]["dms_user_id"].startswith("DMS-")
    assert record == esi_system.get_request(request_id)
    # the same request again: no second effect, the same outcome at once, marked as a duplicate
    again = esi_system.post("/send_to_dms", body, headers={"Prefer": "respond-async, wait=20"})
    assert again.status_code == 200
    assert again.headers["X-Esi-Duplicate"] == "true"
    assert again.json() == record
    users = [u for u in esi_system.dms_state()["users"] if u["external_id"] == body["user_id"]]
    assert len(users) == 1


def test_a_post_with_prefer_wait_reports_a_business_failure(esi_system: EsiSystem) -> None:
    request_id = unique("USER_PREFER_REFUSED")
    body = {"request_id": request_id, "user_id": unique("U"), "name": "Отказ", "email": "no@refused.example"}
    response = esi_system.post("/send_to_dms", body, headers={"Prefer": "wait=20"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"] == "validation_error"


def test_a_post_whose_wait_runs_out_is_accepted_as_without_it(esi_sqlite: EsiSystem) -> None:
    esi_sqlite.fault("dms", {"latency_ms": 3000, "count": 1})
    try:
        request_id = unique("USER_PREFER_SLOW")
        body = {"request_id": request_id, "user_id": unique("U"), "name": "Долго", "email": "late@example.com"}
        started = time.monotonic()
        response = esi_sqlite.post("/send_to_dms", body, headers={"Prefer": "wait=1"})
        waited = time.monotonic() - started
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "accepted", "request_id": request_id}
        assert 1 <= waited < 2.5, waited
        # a malformed preference is ignored, as RFC 7240 asks: the answer is at once
        other = {**body, "request_id": unique("USER_PREFER_BAD"), "user_id": unique("U")}
        assert esi_sqlite.post("/send_to_dms", other, headers={"Prefer": "wait=soon"}).status_code == 202
        assert esi_sqlite.wait_final(request_id)["status"] == "completed"
    finally:
        esi_sqlite.fault("dms", {})
