"""The original system's clients, unchanged: its HTTP payloads byte for byte, bodies as 1C writes them, and the
envelopes its adapters published onto `main_exchange` — each handled, each answer routed as esi's own."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aio_pika
import httpx
import pytest

from esi.testing import EsiSystem, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _seed_bodies(request_ids: tuple[str, str]) -> list[tuple[str, bytes]]:
    """The two curl examples of the original's README, byte for byte but for the request ids (made unique)."""
    # %-formatting: the JSON's braces need no escaping
    user = (
        '{\n        "request_id": "%s",\n        "user_id": "U12345",\n        "name": "Иванов Иван",\n'  # noqa: UP031
        '        "email": "ivanov@example.com"\n    }' % request_ids[0]
    )
    order = (
        '{\n        "request_id": "%s",\n        "order_id": "ORD9876",\n        "status": "Shipped",\n'  # noqa: UP031
        '        "needs_policy_info": true\n    }' % request_ids[1]
    )
    return [("/send_to_dms", user.encode()), ("/send_to_crm", order.encode())]


def test_the_original_http_payloads_complete_as_they_were(esi_sqlite: EsiSystem) -> None:
    ids = (unique("USER_REQ"), unique("ORDER_REQ"))
    for path, body in _seed_bodies(ids):
        response = esi_sqlite.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
    user = esi_sqlite.wait_final(ids[0])
    assert user["status"] == "completed", user
    assert user["response"]["name"] == "Иванов Иван", user
    order = esi_sqlite.wait_final(ids[1])
    assert order["status"] == "completed", order
    # asked for policy info without a policy number, as the original's 1C did: the status is set, and the answer
    # says why the DMS was not asked
    assert order["response"]["status"] == "Shipped", order
    assert "policy_number" in order["response"]["note"], order

    # the original's send_pdf_file fields: filename, file_data_base64
    pdf_id = unique("PDF_REQ")
    response = esi_sqlite.post(
        "/send_to_crm",
        {
            "request_id": pdf_id,
            "message_type": "send_pdf_file",
            "order_id": "ORD9876",
            "filename": "invoice-original.pdf",
            "file_data_base64": base64.b64encode(PDF).decode(),
        },
    )
    assert response.status_code == 202, response.text
    pdf = esi_sqlite.wait_final(pdf_id)
    assert pdf["status"] == "completed", pdf
    assert pdf["response"]["file_name"] == "invoice-original.pdf", pdf
    files = [f for f in esi_sqlite.creatio_state()["files"] if f["name"] == "invoice-original.pdf"]
    assert files
    assert files[0]["size"] == len(PDF)
    assert files[0]["complete"]


def test_names_that_are_not_the_originals_stay_refused(esi_sqlite: EsiSystem) -> None:
    response = esi_sqlite.post(
        "/send_to_crm",
        {
            "message_type": "send_pdf_file",
            "order_id": "ORD9876",
            "file_name": "a.pdf",
            "file_data": base64.b64encode(PDF).decode(),
        },
    )
    assert response.status_code == 422, response.text
    assert "file_data" in response.text, response.text


@pytest.mark.parametrize("how", ["bom", "charset", "crlf"])
def test_bodies_as_1c_writes_them(esi_sqlite: EsiSystem, how: str) -> None:
    request_id = unique(f"1C-{how}")
    body = json.dumps(
        {
            "request_id": request_id,
            "user_id": unique("U-1C"),
            "name": "Сидоров Сидор",
            "email": f"{uuid.uuid4().hex[:8]}@example.com",
        },
        ensure_ascii=False,
        indent=4,
    )
    content_type = "application/json"
    if how == "crlf":
        body = body.replace("\n", "\r\n") + "\r\n"
    raw = body.encode("utf-8")
    if how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    if how == "charset":
        content_type = "application/json; charset=utf-8"
    response = esi_sqlite.post("/send_to_dms", content=raw, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    record = esi_sqlite.wait_final(request_id)
    assert record["status"] == "completed", record
    assert record["response"]["name"] == "Сидоров Сидор", record


# --- the original's adapters on the wire ------------------------------------------------------------------------


def _original_envelope(source: str, target: str, message_type: str, body: dict[str, Any]) -> bytes:
    """As the original's adapters built a message: upper-case system codes, the whole body as the payload (its
    request_id inside), a naive timestamp, no message_id, no schema_version."""
    return json.dumps(
        {
            "source_system": source,
            "target_system": target,
            "message_type": message_type,
            "payload": body,
            "request_id": body["request_id"],
            "timestamp": "2024-05-14T10:15:30.123456",
        },
        ensure_ascii=False,
    ).encode()


class Spy:
    """A queue of the test's own, bound to the answers it wants to see."""

    def __init__(self, amqp_url: str, bindings: list[str]) -> None:
        self.amqp_url, self.bindings, self.name = amqp_url, bindings, f"spy-{uuid.uuid4().hex[:8]}"

    async def _run(
        self, publish: list[tuple[str, bytes]], expect: set[tuple[str, str]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Publish, then gather answers until each `(routing key, request id)` of `expect` has come."""
        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("main_exchange")
            queue = await channel.declare_queue(self.name, exclusive=True)
            for key in self.bindings:
                await queue.bind(exchange, key)
            for key, body in publish:  # the original published plain persistent messages, no mandatory flag
                await exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                    ),
                    routing_key=key,
                )
            seen: list[tuple[str, dict[str, Any]]] = []
            if not expect:
                return seen
            async with asyncio.timeout(30):
                async with queue.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        seen.append((message.routing_key or "", json.loads(message.body)))
                        if expect <= {(key, env["request_id"]) for key, env in seen}:
                            break
            return seen
        finally:
            await connection.close()

    def run(self, publish: list[tuple[str, bytes]], expect: set[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
        return asyncio.run(self._run(publish, expect))


def test_the_original_adapters_envelopes_are_handled_and_answered(esi_sqlite: EsiSystem) -> None:
    user = {
        "request_id": unique("ORIG-U"),
        "user_id": unique("U"),
        "name": "Петров Пётр",
        "email": f"{uuid.uuid4().hex[:8]}@example.com",
    }
    order = {
        "request_id": unique("ORIG-O"),
        "order_id": "ORD9876",
        "status": "Delivered",
        "needs_policy_info": True,
        "policy_number": "POL-0001",
    }
    policy = {"request_id": unique("ORIG-P"), "policy_number": "POL-0001"}
    user_message = _original_envelope("1C", "DMS", "create_user", user)
    spy = Spy(esi_sqlite.amqp_url, ["*.response.1c.*", "*.response.crm.*"])
    created_before = esi_sqlite.dms_state()["counters"]["created"]
    answers = spy.run(
        [
            ("1c.request.dms.create_user", user_message),
            ("1c.request.dms.create_user", user_message),  # the original resent on a timeout: one effect
            ("1c.request.crm.update_order_status", _original_envelope("1C", "CRM", "update_order_status", order)),
            ("crm.request.dms.get_policy_info", _original_envelope("CRM", "DMS", "get_policy_info", policy)),
        ],
        expect={
            ("dms.response.1c.user_created", user["request_id"]),
            ("dms.response.crm.policy_info_response", order["request_id"]),  # the order's sub-request
            ("crm.response.1c.order_status_updated", order["request_id"]),
            ("dms.response.crm.policy_info_response", policy["request_id"]),
        },
    )
    by_request: dict[str, dict[str, dict[str, Any]]] = {}
    for key, envelope in answers:
        by_request.setdefault(envelope["request_id"], {})[key] = envelope
    created = by_request[user["request_id"]]["dms.response.1c.user_created"]
    assert created["payload"]["user_id"] == user["user_id"], created
    assert "error" not in created, created
    # the resend carried the same derived message id (the inbox, the DMS's idempotency key): one user
    users = [u for u in esi_sqlite.dms_state()["users"] if u["external_id"] == user["user_id"]]
    assert len(users) == 1, users
    assert esi_sqlite.dms_state()["counters"]["created"] == created_before + 1
    assert set(by_request[order["request_id"]]) == {
        "dms.response.crm.policy_info_response",
        "crm.response.1c.order_status_updated",
    }
    updated = by_request[order["request_id"]]["crm.response.1c.order_status_updated"]
    assert updated["payload"]["status"] == "Delivered"
    assert updated["payload"]["policy_info"]["status"] == "active"
    info = by_request[policy["request_id"]]["dms.response.crm.policy_info_response"]
    assert info["payload"]["policy_number"] == "POL-0001"
    assert info["source_system"] == "dms"


def test_a_payload_request_id_that_is_not_the_envelopes_is_dead_lettered(esi_sqlite: EsiSystem) -> None:
    body = {"request_id": unique("ORIG-X"), "user_id": unique("U"), "name": "X", "email": "x@example.com"}
    message = json.loads(_original_envelope("1C", "DMS", "create_user", body))
    message["request_id"] = unique("OTHER")
    Spy(esi_sqlite.amqp_url, []).run([("1c.request.dms.create_user", json.dumps(message).encode())], expect=set())

    def parked() -> list[dict[str, Any]]:
        found = httpx.get(f"{esi_sqlite.api_url}/dlq", params={"reason": message["request_id"]}, timeout=30)
        return list(found.json()["messages"])

    [letter] = wait_until(parked, timeout=30, interval=0.5, what="the mismatched message in the DLQ")
    assert letter["queue"] == "dms_dead_letter_queue", letter
    assert "is not the envelope's" in letter["reason"], letter
    assert letter["attempts"] <= 1, letter  # permanent: dead-lettered on its first try
