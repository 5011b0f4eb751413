"""Who may do what through the HTTP API: authentication, scopes, reading only one's own requests, operators."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from esi.api.app import ApiDeps, create_app
from esi.security import ClientRegistry, generate_api_key, make_client_entry
from esi.store import Store
from esi.systems.registry import load_registry
from esi.testing import ESI, free_port
from tests.support import unique

pytestmark = pytest.mark.integration

ERP_KEY = generate_api_key("erp")
CLIENTS = [
    make_client_entry("erp", password="erp-pw-1", api_key=ERP_KEY, send=["dms:create_user", "dms:get_policy_info"]),
    make_client_entry("crm-feed", password="crm-pw-2", send=["crm:*"]),
    make_client_entry("writer", password="writer-pw", send=["dms:*"], read=False),
    make_client_entry("ops", password="ops-pw-3", send=[], read=True, operator=True),
]
USER = {"user_id": "U1", "name": "Иван", "email": "ivan@example.com"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with await Store.open(f"sqlite:///{tmp_path}/auth.db") as store:
        registry = ClientRegistry.from_json(json.dumps({"clients": CLIENTS}))
        app = create_app(
            ApiDeps(
                registry=load_registry(),
                store=store,
                on_accepted=lambda row: None,
                max_pdf_bytes=1024,
                clients=registry,
            )
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://esi") as client:
            yield client


async def test_no_or_wrong_credentials_are_401_with_a_json_error(api: httpx.AsyncClient) -> None:
    for auth in (None, ("erp", "wrong"), ("nobody", "erp-pw-1")):
        r = await api.post("/send_to_dms", json=USER, auth=auth)
        assert r.status_code == 401, (auth, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = await api.get("/requests/anything", headers={"X-API-Key": "erp.not-the-key"})
    assert r.status_code == 401
    assert (await api.get("/healthz")).status_code == 200  # probes stay open


async def test_basic_and_api_key_are_both_accepted(api: httpx.AsyncClient) -> None:
    r = await api.post("/send_to_dms", json={**USER, "request_id": unique("B")}, auth=("erp", "erp-pw-1"))
    assert r.status_code == 202
    r = await api.post(
        "/send_to_dms", json={**USER, "request_id": unique("K"), "user_id": "U2"}, headers={"X-API-Key": ERP_KEY}
    )
    assert r.status_code == 202


async def test_sending_outside_the_scopes_is_403(api: httpx.AsyncClient) -> None:
    r = await api.post("/send_to_crm", json={"order_id": "ORD9876", "status": "Shipped"}, auth=("erp", "erp-pw-1"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = await api.post("/send_to_dms", json=USER, auth=("crm-feed", "crm-pw-2"))
    assert r.status_code == 403
    assert (
        await api.post("/send_to_crm", json={"order_id": "ORD9876", "status": "Shipped"}, auth=("crm-feed", "crm-pw-2"))
    ).status_code == 202


async def test_a_client_reads_only_its_own_requests(api: httpx.AsyncClient) -> None:
    request_id = unique("OWN")
    await api.post(
        "/send_to_dms", json={**USER, "request_id": request_id, "user_id": "U-own"}, auth=("erp", "erp-pw-1")
    )
    own = await api.get(f"/requests/{request_id}", auth=("erp", "erp-pw-1"))
    assert own.status_code == 200
    assert own.json()["client_id"] == "erp"
    other = await api.get(f"/requests/{request_id}", auth=("crm-feed", "crm-pw-2"))
    assert other.status_code == 404  # exactly as for an unknown id
    started = time.monotonic()
    other = await api.get(f"/requests/{request_id}", params={"wait": 30}, auth=("crm-feed", "crm-pw-2"))
    assert other.status_code == 404
    assert time.monotonic() - started < 5
    no_read = await api.get(f"/requests/{request_id}", params={"wait": 30}, auth=("writer", "writer-pw"))
    assert no_read.status_code == 403
    assert time.monotonic() - started < 10
    waited = await api.get(f"/requests/{request_id}", params={"wait": 0.3}, auth=("erp", "erp-pw-1"))
    assert waited.status_code == 200
    assert waited.json()["request_id"] == request_id
    assert (await api.get(f"/requests/{request_id}/timeline", auth=("crm-feed", "crm-pw-2"))).status_code == 404
    found = await api.get("/requests", params={"key": "U-own"}, auth=("crm-feed", "crm-pw-2"))
    assert found.status_code == 200
    assert found.json()["count"] == 0
    found = await api.get("/requests", params={"key": "U-own"}, auth=("erp", "erp-pw-1"))
    assert [r["request_id"] for r in found.json()["requests"]] == [request_id]
    no_read = await api.get(f"/requests/{request_id}", auth=("writer", "writer-pw"))
    assert no_read.status_code == 403
    # another client reusing the id learns nothing about the first request
    clash = await api.post(
        "/send_to_crm",
        json={"request_id": request_id, "order_id": "ORD9876", "status": "New"},
        auth=("crm-feed", "crm-pw-2"),
    )
    assert clash.status_code == 409
    assert "dms" not in clash.json()["error"]["message"]


async def test_operator_endpoints_need_the_operator_scope(api: httpx.AsyncClient) -> None:
    r = await api.get("/dlq", auth=("erp", "erp-pw-1"))
    assert r.status_code == 403
    r = await api.post("/dlq/replay", json={"all": True}, auth=("erp", "erp-pw-1"))
    assert r.status_code == 403
    r = await api.get("/dlq", auth=("ops", "ops-pw-3"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"


def _run_settings_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ESI, "run", "onec"], env=env, capture_output=True, text=True, timeout=60)


def test_production_refuses_demo_credentials_and_auth_off(tmp_path: Path) -> None:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESI_", "CREATIO_", "DMS_"))}
    base.update(
        {
            "ESI_ENV": "production",
            "CREATIO_PASSWORD": "not-the-demo",
            "ESI_HTTP_PORT": str(free_port()),
            "ESI_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
            "ESI_HEALTH_PORT": str(free_port()),
        }
    )
    off = _run_settings_check({**base, "ESI_AUTH": "off"})
    assert off.returncode != 0
    assert "ESI_AUTH=off" in off.stderr
    no_clients = _run_settings_check(base)
    assert no_clients.returncode != 0
    assert "ESI_CLIENTS_FILE" in no_clients.stderr
    demo_file = tmp_path / "clients.json"
    demo_file.write_text(json.dumps({"clients": [make_client_entry("demo", password="demo", send=["dms:*"])]}))
    demo = _run_settings_check({**base, "ESI_CLIENTS_FILE": str(demo_file)})
    assert demo.returncode != 0
    assert "demo" in demo.stderr
    assert "Supervisor" not in demo.stderr + no_clients.stderr


async def test_requests_by_key_come_a_page_at_a_time_by_cursor(api: httpx.AsyncClient) -> None:
    """`GET /requests?key=` with `limit`: `next` is the `after` of the following page, null on the last; every
    request comes once, even with requests accepted between the pages; a made-up cursor is 422."""
    sent = []
    for i in range(5):
        request_id = unique(f"PAGE{i}")
        r = await api.post(
            "/send_to_dms", json={**USER, "request_id": request_id, "user_id": "U-pages"}, auth=("erp", "erp-pw-1")
        )
        assert r.status_code == 202
        sent.append(request_id)
    seen: list[str] = []
    params: dict[str, str | int] = {"key": "U-pages", "limit": 2}
    while True:
        page = (await api.get("/requests", params=params, auth=("erp", "erp-pw-1"))).json()
        assert page["count"] == len(page["requests"]) <= 2
        seen += [r["request_id"] for r in page["requests"]]
        if page["next"] is None:
            break
        await api.post(  # a newer one between two pages: not on the pages after
            "/send_to_dms", json={**USER, "request_id": unique("LATE"), "user_id": "U-pages"}, auth=("erp", "erp-pw-1")
        )
        params["after"] = page["next"]
    assert seen == sent[::-1]  # newest first, each once
    bad = await api.get("/requests", params={"key": "U-pages", "after": "not-a-cursor"}, auth=("erp", "erp-pw-1"))
    assert bad.status_code == 422
