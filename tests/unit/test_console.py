"""The operator console without a broker: pages, escaping, the Content-Security-Policy, CSRF, scopes, masking, and
the drawings (per-minute chart, sequence diagram) computed for the templates."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from esi.api.app import ApiDeps, create_app
from esi.console import console_router
from esi.console.csrf import COOKIE, FIELD, CsrfTokens
from esi.console.masking import mask
from esi.console.views import minute_chart, sequence
from esi.security import ClientRegistry, make_client_entry
from esi.store import Store
from esi.systems.registry import load_registry

CLIENTS = [
    make_client_entry("erp", password="erp-pw", send=["*"], read=True),
    make_client_entry("ops", password="ops-pw", send=["*"], read=True, operator=True),
    make_client_entry("viewer", password="viewer-pw", send=["*"], read=True),
    make_client_entry("writer", password="writer-pw", send=["*"], read=False),
]
HOSTILE = "<script>alert(1)</script>"


async def _readiness() -> tuple[bool, dict[str, Any]]:
    return False, {
        "store": {"status": "ok", "latency_ms": 0.4},
        "dms": {"status": "down", "latency_ms": 3.1, "error": "TransientError: dms health: <refused>"},
        "circuit (dms)": {"status": "open", "latency_ms": 0.0, "state": "open", "reason": "5 failures"},
    }


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with await Store.open(f"sqlite:///{tmp_path}/console.db") as store:
        deps = ApiDeps(
            registry=load_registry(),
            store=store,
            on_accepted=lambda row: None,
            max_pdf_bytes=1024,
            clients=ClientRegistry.from_json(json.dumps({"clients": CLIENTS})),
            console_secret=b"k" * 32,
            readiness=_readiness,
        )
        app = create_app(deps)
        app.include_pages(console_router, deps)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://esi") as client:
            yield client


async def _send(client: httpx.AsyncClient, auth: tuple[str, str], **body: str) -> None:
    response = await client.post("/send_to_dms", json=body, auth=auth)
    assert response.status_code == 202, response.text


def _token(page: httpx.Response) -> str:
    match = re.search(rf'name="{FIELD}" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


async def test_pages_carry_the_security_headers_and_need_credentials(console: httpx.AsyncClient) -> None:
    assert (await console.get("/console")).status_code == 401
    assert (await console.get("/console", auth=("writer", "writer-pw"))).status_code == 403
    for path in ("/console", "/console/requests", "/console/systems"):
        page = await console.get(path, auth=("viewer", "viewer-pw"))
        assert page.status_code == 200, (path, page.text)
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in page.text.replace('<script src="/console/static/console.js" defer></script>', "")
    overview = await console.get("/console", auth=("viewer", "viewer-pw"))
    assert "&lt;refused&gt;" in overview.text
    assert 'data-check="circuit (dms)"' in overview.text
    script = await console.get("/console/static/console.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert (await console.get("/console/static/../app.py")).status_code == 404


async def test_a_hostile_name_is_escaped_and_personal_data_masked_for_others(console: httpx.AsyncClient) -> None:
    await _send(
        console, ("erp", "erp-pw"), request_id="HOSTILE-1", user_id="U-H", name=HOSTILE, email="ivan@example.com"
    )
    mine = await console.get("/console/requests/HOSTILE-1", auth=("erp", "erp-pw"))
    assert mine.status_code == 200
    assert HOSTILE not in mine.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mine.text
    assert "ivan@example.com" in mine.text
    operator = await console.get("/console/requests/HOSTILE-1", auth=("ops", "ops-pw"))
    assert operator.status_code == 200
    assert "i•••@example.com" in operator.text
    assert "ivan@example.com" not in operator.text
    assert "alert(1)" not in operator.text
    assert "data-masked" in operator.text
    # a reader who is not an operator sees only its own requests, as through the API
    assert (await console.get("/console/requests/HOSTILE-1", auth=("viewer", "viewer-pw"))).status_code == 404


async def test_search_finds_by_request_id_and_business_key_within_what_the_client_sees(
    console: httpx.AsyncClient,
) -> None:
    for i in range(3):
        await _send(
            console, ("erp", "erp-pw"), request_id=f"FIND-{i}", user_id="U-FIND", name="Пётр", email="p@example.com"
        )
    found = await console.get("/console/requests", params={"q": "U-FIND"}, auth=("ops", "ops-pw"))
    assert found.text.count('data-request-id="FIND-') == 3
    one = await console.get("/console/requests", params={"q": "FIND-1", "status": "accepted"}, auth=("ops", "ops-pw"))
    assert one.text.count('data-request-id="FIND-') == 1
    none = await console.get("/console/requests", params={"q": "U-FIND"}, auth=("viewer", "viewer-pw"))
    assert 'data-request-id="FIND-' not in none.text
    assert "data-no-results" in none.text
    bad = await console.get("/console/requests", params={"from": "yesterday"}, auth=("ops", "ops-pw"))
    assert bad.status_code == 422
    assert "not a date" in bad.text


async def test_actions_need_the_operator_scope_and_the_clients_own_csrf_token(console: httpx.AsyncClient) -> None:
    viewer = await console.post("/console/systems/dms/pause", data={"reason": "x"}, auth=("viewer", "viewer-pw"))
    assert viewer.status_code == 403
    page = await console.get("/console/systems", auth=("ops", "ops-pw"))
    assert 'data-action="pause"' in page.text
    token, cookie = _token(page), page.cookies[COOKIE]
    assert token == cookie
    no_token = await console.post("/console/systems/dms/pause", data={"reason": "x"}, auth=("ops", "ops-pw"))
    assert no_token.status_code == 403
    assert "csrf" in no_token.text
    console.cookies.clear()
    # another client's token (valid for it) is refused for this one
    other = CsrfTokens(b"k" * 32).issue("erp")
    console.cookies.set(COOKIE, other, domain="esi.local", path="/console")
    forged = await console.post(
        "/console/systems/dms/pause", data={FIELD: other, "reason": "x"}, auth=("ops", "ops-pw")
    )
    assert forged.status_code == 403
    console.cookies.clear()
    console.cookies.set(COOKIE, cookie, domain="esi.local", path="/console")
    done = await console.post(
        "/console/systems/dms/pause", data={FIELD: token, "for": "2h", "reason": "upgrade"}, auth=("ops", "ops-pw")
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith("/console/systems?done=paused")
    page = await console.get("/console/systems", auth=("ops", "ops-pw"))
    assert "data-paused" in page.text
    assert "upgrade" in page.text
    assert "system.pause" in page.text
    viewer_page = await console.get("/console/systems", auth=("viewer", "viewer-pw"))
    assert "data-paused" in viewer_page.text
    assert "data-action" not in viewer_page.text


async def test_dead_letters_without_broker_access_say_so(console: httpx.AsyncClient) -> None:
    """The list reads the index (the store): it answers; a message's body needs the broker."""
    page = await console.get("/console/dlq", auth=("ops", "ops-pw"))
    assert page.status_code == 200
    assert "data-no-dead-letters" in page.text
    letter = await console.get("/console/dlq/messages/nothing-here", auth=("ops", "ops-pw"))
    assert letter.status_code == 503
    assert "not configured" in letter.text


def test_masking_keeps_the_shape_and_hides_personal_fields() -> None:
    value = {
        "user_id": "U1",
        "name": "Иванов Иван",
        "email": "ivanov@example.com",
        "nested": [{"holder_name": "A"}],
        "file_content": "x" * 5000,
    }
    masked = mask(value, reveal=False)
    assert masked["user_id"] == "U1"
    assert masked["name"] == "И•••"
    assert masked["email"] == "i•••@example.com"
    assert masked["nested"] == [{"holder_name": "A•••"}]
    assert len(masked["file_content"]) < 200
    assert mask(value, reveal=True)["name"] == "Иванов Иван"


def test_the_minute_chart_stacks_outcomes_in_the_last_hour_only() -> None:
    now = datetime(2026, 11, 25, 10, 30, 20, tzinfo=UTC)
    chart = minute_chart(
        [
            ("2026-11-25T10:30", "completed", 4),
            ("2026-11-25T10:30", "failed", 2),
            ("2026-11-25T09:31", "completed", 1),
            ("2026-11-25T09:30", "completed", 99),
        ],
        now=now,
    )
    assert chart.peak == 6
    assert chart.totals["completed"] == 5
    assert chart.total == 7
    last = [b for b in chart.bars if b.x == 59 * 5]
    assert [b.outcome for b in last] == ["completed", "failed"]
    assert sum(b.height for b in last) == chart.height
    assert any(b.x == 0 for b in chart.bars)


def test_the_sequence_puts_each_hop_between_its_lanes() -> None:
    events = [
        {
            "at": "2026-11-25T10:00:00.100000+00:00",
            "event": "accepted",
            "service": "api",
            "message_type": "create_user",
        },
        {
            "at": "2026-11-25T10:00:00.110000+00:00",
            "event": "published",
            "service": "relay",
            "detail": {"routing_key": "1c.request.dms.create_user"},
        },
        {
            "at": "2026-11-25T10:00:00.120000+00:00",
            "event": "consumed",
            "service": "dms",
            "message_type": "create_user",
            "detail": {"attempt": 1},
        },
        {
            "at": "2026-11-25T10:00:00.130000+00:00",
            "event": "external_call",
            "service": "dms",
            "detail": {"system": "dms", "operation": "create_user", "outcome": "ok", "duration_ms": 4.2},
        },
        {
            "at": "2026-11-25T10:00:00.140000+00:00",
            "event": "published",
            "service": "dms",
            "message_type": "user_created",
            "detail": {"routing_key": "dms.response.1c.user_created"},
        },
        {
            "at": "2026-11-25T10:00:00.150000+00:00",
            "event": "completed",
            "service": "onec",
            "message_type": "user_created",
        },
    ]
    diagram = sequence(load_registry(), events)
    hops = [(s.event, s.source, s.target) for s in diagram.steps]
    assert hops == [
        ("accepted", "ext:1c", "esi:1c"),
        ("published", "esi:1c", "esi:dms"),
        ("consumed", "esi:dms", "esi:dms"),
        ("external_call", "esi:dms", "ext:dms"),
        ("published", "esi:dms", "esi:1c"),
        ("completed", "esi:1c", "ext:1c"),
    ]
    assert [lane.key for lane in diagram.lanes] == ["ext:1c", "esi:1c", "esi:dms", "ext:dms"]
    assert diagram.steps[3].label == "create_user · 4.2 ms · ok"
    assert diagram.steps[-1].offset_ms == 50.0


async def test_the_request_list_pages_by_cursor_older_and_back_newer(console: httpx.AsyncClient) -> None:
    """/console/requests a page of 50 at a time: "older" follows a cursor (`after=`), "newer" comes back
    (`before=`) to the same page; the pages do not overlap and together hold every request."""
    ops = ("ops", "ops-pw")
    for i in range(120):
        await _send(console, ops, request_id=f"L-{i:03d}", user_id=f"U{i}", name="n", email="n@example.com")

    def listed(page: httpx.Response) -> list[str]:
        assert page.status_code == 200, page.text
        return re.findall(r'href="/console/requests/(L-\d+)"', page.text)

    def link(page: httpx.Response, rel: str) -> str | None:
        found = re.search(rf'href="(/console/requests\?[^"]+)" rel="{rel}"', page.text)
        return found.group(1).replace("&amp;", "&") if found else None

    first = await console.get("/console/requests", auth=ops)
    assert link(first, "prev") is None
    second = await console.get(link(first, "next") or "", auth=ops)
    third = await console.get(link(second, "next") or "", auth=ops)
    assert "after=" in (link(first, "next") or "")
    assert link(third, "next") is None  # 120 = 50 + 50 + 20
    pages = [listed(first), listed(second), listed(third)]
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [rid for p in pages for rid in p] == [f"L-{i:03d}" for i in reversed(range(120))]
    back = await console.get(link(third, "prev") or "", auth=ops)
    assert listed(back) == pages[1]
    assert "page 2" in back.text
    newest = await console.get(link(back, "prev") or "", auth=ops)
    assert listed(newest) == pages[0]
    assert link(newest, "prev") is None
    assert (await console.get("/console/requests?after=bad", auth=ops)).status_code == 422
