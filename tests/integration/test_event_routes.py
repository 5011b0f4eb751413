"""The event routes in process, over a real store (no broker: what the relay would publish is caught): the
webhooks' authentication (the scope events:<source>, the DMS's signature and replay window), their refusals, the
idempotency on (record id, version), and the pull feed's scope and cursor."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from esi.api.app import ApiDeps, create_app
from esi.events.identity import event_id, message_id, version_key
from esi.events.sink import EventSink
from esi.messages.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from esi.security import ClientRegistry, make_client_entry
from esi.store import Store
from esi.store.records import OutboxRow
from esi.systems.dms.settings import DmsSettings
from esi.systems.registry import load_registry

pytestmark = pytest.mark.integration

SECRET = "s3cret"
CLIENTS = [
    {**make_client_entry("creatio", password="creatio-pw", send=[]), "events": ["crm"]},
    {**make_client_entry("erp", password="erp-pw", send=["dms:*"]), "feeds": ["1c"]},
    make_client_entry("ops", password="ops-pw", send=[], read=True, operator=True),
]
CREATIO = ("creatio", "creatio-pw")


class Api:
    def __init__(self, client: httpx.AsyncClient, published: list[OutboxRow], store: Store) -> None:
        self.http = client
        self.published = published
        self.store = store

    async def signed(
        self, event: str, body: dict[str, Any], *, secret: str = SECRET, at: float | None = None
    ) -> httpx.Response:
        raw = orjson.dumps(body)
        stamp = int(at if at is not None else time.time())
        headers = {
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(secret, raw, stamp),
            "Content-Type": "application/json",
        }
        return await self.http.post(f"/events/dms/{event}", content=raw, headers=headers)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    published: list[OutboxRow] = []
    registry = load_registry()
    async with await Store.open(f"sqlite:///{tmp_path}/events.db") as store:
        sink = EventSink(registry=registry, log=store.event_log, on_accepted=published.append)
        app = create_app(
            ApiDeps(
                registry=registry,
                store=store,
                on_accepted=lambda row: None,
                max_pdf_bytes=1024,
                clients=ClientRegistry.from_json(json.dumps({"clients": CLIENTS})),
                sink=sink,
                system_settings={"dms": DmsSettings(webhook_secret=SECRET, webhook_tolerance=60)},  # type: ignore[call-arg]
            )
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://esi") as client:
            yield Api(client, published, store)


def order(status: str = "Paid", modified: str = "2026-12-07T10:00:00Z", order_id: str | None = None) -> dict[str, Any]:
    return {"Id": order_id or str(uuid.uuid4()), "Number": "ORD9876", "Status": status, "ModifiedOn": modified}


async def test_creatio_needs_a_client_with_the_scope_events_crm(api: Api) -> None:
    body = order()
    assert (await api.http.post("/events/crm/order_changed", json=body)).status_code == 401
    wrong = await api.http.post("/events/crm/order_changed", json=body, auth=("erp", "erp-pw"))
    assert wrong.status_code == 403
    assert "events:crm" in wrong.json()["error"]["message"]
    assert api.published == []
    taken = await api.http.post("/events/crm/order_changed", json=body, auth=CREATIO)
    assert taken.status_code == 202, taken.text
    answer = taken.json()
    assert answer["status"] == "accepted"
    assert (
        answer["version"] == version_key("2026-12-07T10:00:00Z") == "2026-12-07T10:00:00+00:00".replace("+", ".000000+")
    )
    assert answer["event_id"] == event_id("crm", "order_changed", body["Id"], answer["version"])
    assert answer["message_id"] == message_id(answer["event_id"])
    [row] = api.published
    assert (row.routing_key, row.message_id) == ("crm.event.order_changed", answer["message_id"])
    wire = json.loads(row.body)
    assert wire["payload"]["Status"] == "Paid"
    assert wire["source_system"] == "crm"


async def test_a_repeat_of_one_change_is_taken_once_and_a_new_version_is_new(api: Api) -> None:
    body = order()
    first = await api.http.post("/events/crm/order_changed", json=body, auth=CREATIO)
    again = await api.http.post("/events/crm/order_changed", json=body, auth=CREATIO)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["status"] == "duplicate"
    assert again.json()["event_id"] == first.json()["event_id"]
    # the same time written another way is the same version
    same = await api.http.post(
        "/events/crm/order_changed", json={**body, "ModifiedOn": "2026-12-07T10:00:00+00:00"}, auth=CREATIO
    )
    assert same.status_code == 200
    later = await api.http.post(
        "/events/crm/order_changed",
        json={**body, "Status": "Shipped", "ModifiedOn": "2026-12-07T11:00:00Z"},
        auth=CREATIO,
    )
    assert later.status_code == 202
    assert len(api.published) == 2


async def test_refusals_name_the_problem_and_publish_nothing(api: Api) -> None:
    invalid = await api.http.post("/events/crm/order_changed", json={"Id": "x1", "Status": "Paid"}, auth=CREATIO)
    assert invalid.status_code == 422
    assert "Number" in invalid.json()["error"]["message"]
    assert "ModifiedOn" in invalid.json()["error"]["message"]
    bad_version = await api.http.post(
        "/events/dms/policy_issued", json={"policy_number": "P", "revision": 0, "status": "active"}
    )
    assert bad_version.status_code == 401  # the signature comes first, before the body is even read as JSON
    unknown = await api.http.post("/events/crm/order_deleted", json=order(), auth=CREATIO)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_event")
    nobody = await api.http.post("/events/erp/order_changed", json=order(), auth=CREATIO)
    assert nobody.status_code == 404
    not_json = await api.http.post("/events/crm/order_changed", content=b"[1, 2", auth=CREATIO)
    assert not_json.status_code == 400
    huge = await api.http.post("/events/crm/order_changed", content=b"{" + b" " * 300_000 + b"}", auth=CREATIO)
    assert huge.status_code == 413
    assert api.published == []


async def test_the_dms_signature_and_its_replay_window(api: Api) -> None:
    body = {"policy_number": f"POL-{uuid.uuid4().hex[:6]}", "revision": 1, "status": "active"}
    assert (await api.signed("policy_issued", body, secret="guess")).status_code == 401
    replay = await api.signed("policy_issued", body, at=time.time() - 120)
    assert replay.status_code == 401
    assert "tolerance 60 s" in replay.json()["error"]["message"]
    future = await api.signed("policy_issued", body, at=time.time() + 120)
    assert future.status_code == 401
    bad_stamp = await api.http.post(
        "/events/dms/policy_issued", json=body, headers={TIMESTAMP_HEADER: "yesterday", SIGNATURE_HEADER: "sha256=00"}
    )
    assert "Unix seconds" in bad_stamp.json()["error"]["message"]
    # a Basic client, even one allowed events of any source, cannot stand in for the signature
    assert (await api.http.post("/events/dms/policy_issued", json=body, auth=CREATIO)).status_code == 401
    assert api.published == []
    good = await api.signed("policy_issued", body)
    assert good.status_code == 202, good.text
    assert (await api.signed("policy_issued", body)).status_code == 200  # within the window: a harmless repeat
    zero = await api.signed("policy_issued", {**body, "revision": 0})
    assert zero.status_code == 422
    assert len(api.published) == 1


async def test_operators_see_events_and_the_feed_needs_its_scope(api: Api) -> None:
    body = order()
    taken = (await api.http.post("/events/crm/order_changed", json=body, auth=CREATIO)).json()
    assert (await api.http.get("/events", auth=CREATIO)).status_code == 403
    listed = (await api.http.get("/events", params={"key": "ORD9876"}, auth=("ops", "ops-pw"))).json()
    assert taken["event_id"] in [e["event_id"] for e in listed["events"]]
    shown = (await api.http.get(f"/events/{taken['event_id']}", auth=("ops", "ops-pw"))).json()
    assert shown["record_id"] == body["Id"]
    assert set(shown["subscribers"]) == {"1c"}
    assert (await api.http.get("/events/evt-none", auth=("ops", "ops-pw"))).status_code == 404
    # the feed: 1C's job reads with feed:1c; an unknown feed is 404
    assert (await api.http.get("/feed/1c", auth=CREATIO)).status_code == 403
    assert (await api.http.get("/feed/erp", auth=("erp", "erp-pw"))).status_code == 404
    for i in range(3):
        await api.store.feed.append("1c", message_id=f"m{i}", message_type="order_changed", source="crm",
                                    record_key=f"k{i}", body=json.dumps({"n": i}))  # fmt: skip
    assert not await api.store.feed.append("1c", message_id="m0", message_type="order_changed", source="crm",
                                           record_key="k0", body="{}")  # fmt: skip
    page = (await api.http.get("/feed/1c", params={"limit": 2}, auth=("erp", "erp-pw"))).json()
    assert [e["message_id"] for e in page["entries"]] == ["m0", "m1"]
    assert page["more"] is True
    acked = (await api.http.post("/feed/1c/ack", json={"cursor": page["next"]}, auth=("erp", "erp-pw"))).json()
    assert (acked["acked"], acked["pending"]) == (page["next"], 1)
    rest = (await api.http.get("/feed/1c", auth=("erp", "erp-pw"))).json()
    assert [e["message_id"] for e in rest["entries"]] == ["m2"]
    assert rest["entries"][0]["body"] == {"n": 2}
    assert await api.store.feed.prune_acked("9999") == 2
    # the event log is kept as long as requests are (ESI_REQUEST_RETENTION)
    assert await api.store.event_log.prune("2000") == 0
    assert await api.store.event_log.prune("9999") == 1
    assert await api.store.event_log.get(taken["event_id"]) is None
