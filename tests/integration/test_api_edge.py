"""Bad input at the HTTP edge: a 4xx with a JSON body naming the problem, and nothing stored or published."""

from __future__ import annotations

import base64

import httpx
import pytest

from esi.testing import EsiSystem
from tests.support import unique

pytestmark = pytest.mark.integration


def _assert_error(response: httpx.Response, status: int, code: str, mentions: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    if mentions:
        assert mentions in body["error"]["message"], body
    return body


@pytest.mark.parametrize(
    ("path", "content", "status", "code", "mentions"),
    [
        ("/send_to_dms", b"{not json", 400, "invalid_json", None),
        ("/send_to_dms", b"[1, 2]", 400, "invalid_json", "object"),
        ("/send_to_dms", b"", 400, "empty_body", None),
        ("/send_to_dms", b'{"request_id": "R1", "name": "x", "email": "a@b.c"}', 422, "validation_error", "user_id"),
        (
            "/send_to_dms",
            b'{"user_id": "U1", "name": "x", "email": "a@b.c", "surprise": 1}',
            422,
            "validation_error",
            "surprise",
        ),
        (
            "/send_to_crm",
            b'{"order_id": "ORD9876", "status": "Shipped", "policy_number": ""}',
            422,
            "validation_error",
            "policy_number",
        ),
        (
            "/send_to_crm",
            b'{"order_id": "ORD9876", "status": "Shipped", "status_changed_at": "yesterday"}',
            422,
            "validation_error",
            "status_changed_at",
        ),
        (
            "/send_to_crm",
            b'{"message_type": "fly_to_moon", "order_id": "x"}',
            422,
            "unknown_message_type",
            "fly_to_moon",
        ),
        ("/requests/erp/create_user", b'{"user_id": "U1"}', 404, "unknown_target", "erp"),
        ("/requests/dms/drop_tables", b'{"user_id": "U1"}', 404, "unknown_message_type", "drop_tables"),
        ("/requests/dms/user_created", b'{"user_id": "U1"}', 404, "unknown_message_type", "user_created"),
        (
            "/send_to_dms",
            b'{"request_id": "bad id with spaces", "user_id": "U1", "name": "x", "email": "a@b.c"}',
            422,
            "invalid_request_id",
            None,
        ),
    ],
)
def test_bad_requests_are_refused_with_a_named_problem(
    esi_sqlite: EsiSystem, path: str, content: bytes, status: int, code: str, mentions: str | None
) -> None:
    response = httpx.post(
        f"{esi_sqlite.api_url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=10
    )
    _assert_error(response, status, code, mentions)


def test_a_refused_request_is_not_stored(esi_sqlite: EsiSystem) -> None:
    request_id = unique("BAD")
    response = esi_sqlite.post("/send_to_dms", {"request_id": request_id, "user_id": "U1", "name": "x"})
    _assert_error(response, 422, "validation_error", "email")
    missing = httpx.get(f"{esi_sqlite.api_url}/requests/{request_id}", timeout=10)
    _assert_error(missing, 404, "unknown_request", request_id)


def test_not_a_pdf_and_too_large_are_refused(esi_sqlite: EsiSystem) -> None:
    not_pdf = base64.b64encode(b"GIF89a...").decode()
    response = esi_sqlite.post(
        "/send_to_crm",
        {"message_type": "send_pdf_file", "order_id": "ORD9876", "file_name": "x.pdf", "file_content": not_pdf},
    )
    _assert_error(response, 422, "not_a_pdf", "PDF")

    response = httpx.post(
        f"{esi_sqlite.api_url}/requests/crm/send_pdf_file",
        data={"order_id": "ORD9876"},
        files={"file": ("x.pdf", b"PK\x03\x04 a zip file", "application/pdf")},
        timeout=10,
    )
    _assert_error(response, 422, "not_a_pdf")

    big = b"%PDF-1.4\n" + b"0" * (10 * 1024 * 1024)
    response = httpx.post(
        f"{esi_sqlite.api_url}/requests/crm/send_pdf_file",
        data={"order_id": "ORD9876"},
        files={"file": ("big.pdf", big, "application/pdf")},
        timeout=30,
    )
    _assert_error(response, 413, "file_too_large")
    response = esi_sqlite.post(
        "/send_to_crm",
        {"message_type": "send_pdf_file", "order_id": "ORD9876", "file_content": base64.b64encode(big).decode()},
    )
    _assert_error(response, 413, "file_too_large")


def test_unknown_request_is_404_with_json(esi_sqlite: EsiSystem) -> None:
    _assert_error(httpx.get(f"{esi_sqlite.api_url}/requests/nope-{unique('x')}", timeout=10), 404, "unknown_request")


def test_same_request_id_twice_is_idempotent_and_a_different_payload_conflicts(esi_sqlite: EsiSystem) -> None:
    request_id = unique("DUP")
    body = {"request_id": request_id, "user_id": unique("U"), "name": "Анна", "email": "anna@example.com"}
    first = esi_sqlite.post("/send_to_dms", body)
    second = esi_sqlite.post("/send_to_dms", body)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert esi_sqlite.wait_final(request_id)["status"] == "completed"
    users = [u for u in esi_sqlite.dms_state()["users"] if u["external_id"] == body["user_id"]]
    assert len(users) == 1
    conflict = esi_sqlite.post("/send_to_dms", {**body, "name": "Другая Анна"})
    _assert_error(conflict, 409, "request_id_conflict", request_id)


def test_openapi_document_lists_the_endpoints(esi_sqlite: EsiSystem) -> None:
    spec = httpx.get(f"{esi_sqlite.api_url}/openapi.json", timeout=10).json()
    for path in ("/send_to_dms", "/send_to_crm", "/requests/{target}/{message_type}", "/requests/{request_id}"):
        assert path in spec["paths"]
    assert httpx.get(f"{esi_sqlite.api_url}/docs", timeout=10).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(esi_sqlite: EsiSystem) -> None:
    def chunks():
        yield b'{"user_id": "U1", "name": "'
        for _ in range(20):
            yield b"x" * (1024 * 1024)  # 20 MB, sent without a Content-Length
        yield b'", "email": "a@b.c"}'

    response = httpx.post(
        f"{esi_sqlite.api_url}/send_to_dms", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    _assert_error(response, 413, "body_too_large")


def test_deeply_nested_json_is_a_clear_4xx(esi_sqlite: EsiSystem) -> None:
    deep = b'{"user_id": "U1", "name": "n", "email": "a@b.c", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(
        f"{esi_sqlite.api_url}/send_to_dms", content=deep, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"] in ("invalid_json", "validation_error")
