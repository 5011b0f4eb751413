"""The hot path (esi.api.hot) answers exactly as FastAPI's routes do, and leaves everything else to them."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from esi.api.app import ApiDeps, create_app
from esi.security import ClientRegistry, make_client_entry
from esi.store import Store
from esi.systems.registry import load_registry
from tests.support import unique

pytestmark = pytest.mark.integration

CLIENTS = [
    make_client_entry("erp", password="erp-pw-1", send=["dms:create_user"]),
    make_client_entry("writer", password="writer-pw", send=["dms:*"], read=False),
]
ERP = ("erp", "erp-pw-1")
USER = {"user_id": "U1", "name": "Иван", "email": "ivan@example.com"}


@dataclass
class RouterSpy:
    """Sits where FastAPI's router sits: records what reached it."""

    app: Any
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@dataclass
class Pair:
    hot: httpx.AsyncClient
    plain: httpx.AsyncClient
    hot_router: RouterSpy
    store: Store
    auth: bool


@pytest.fixture(params=["open", "auth"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    async with await Store.open(f"sqlite:///{tmp_path}/hot.db") as store:
        registry = ClientRegistry.from_json(json.dumps({"clients": CLIENTS})) if request.param == "auth" else None

        def app(hot: bool) -> Any:
            return create_app(
                ApiDeps(
                    registry=load_registry(),
                    store=store,
                    on_accepted=lambda row: None,
                    max_pdf_bytes=1024,
                    clients=registry,
                    max_wait=0.2,
                    wait_recheck=0.05,
                    hot_path=hot,
                )
            )

        hot_app = app(True)
        spy = RouterSpy(hot_app.router)
        hot_app.router = spy
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=hot_app), base_url="http://esi", auth=ERP) as hot,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app(False)), base_url="http://esi", auth=ERP) as plain,
        ):
            yield Pair(hot, plain, spy, store, request.param == "auth")


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.headers.get("content-type") == b.headers.get("content-type")
    for name in ("x-esi-duplicate", "www-authenticate", "retry-after"):
        assert a.headers.get(name) == b.headers.get(name), name
    assert _generated_ids_masked(a.json()) == _generated_ids_masked(b.json())


def _generated_ids_masked(body: Any) -> Any:
    if isinstance(body, dict) and re.fullmatch(r"[0-9a-f]{32}", str(body.get("request_id", ""))):
        return {**body, "request_id": "(generated)"}
    return body


async def test_posts_answer_alike_and_skip_the_router(pair: Pair) -> None:
    rid = unique("HOT")
    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("/send_to_dms", {"content": b"{not json"}, None),
        ("/send_to_dms", {"content": b""}, None),
        ("/send_to_dms", {"json": [1, 2]}, None),
        ("/send_to_dms", {"json": {"user_id": "U1"}}, None),
        ("/send_to_dms", {"json": {**USER, "message_type": "fly"}}, None),
        ("/send_to_dms", {"json": {**USER, "request_id": "bad id"}}, None),
        ("/send_to_dms", {"json": {**USER, "message_type": "get_policy_info", "policy_number": "P1"}}, None),  # 403
        ("/send_to_dms", {"json": USER}, ("erp", "wrong")),  # 401
        ("/send_to_dms", {"json": USER}, httpx.USE_CLIENT_DEFAULT),
        ("/send_to_crm", {"json": {"order_id": "ORD1", "status": "Shipped"}}, None),
        ("/send_to_dms", {"content": b"{" + b" " * 2_000_000 + b"}"}, None),  # 413
    ]
    for path, kwargs, auth in cases:
        extra = {} if auth is None else {"auth": auth}
        _same(await pair.hot.post(path, **kwargs, **extra), await pair.plain.post(path, **kwargs, **extra))
    # accepted, then the same again (a duplicate), then a conflict — first through the hot app, then the plain one
    first = await pair.hot.post("/send_to_dms", json={**USER, "request_id": rid})
    assert first.status_code == 202
    assert first.json() == {"status": "accepted", "request_id": rid}
    _same(
        await pair.hot.post("/send_to_dms", json={**USER, "request_id": rid}),
        await pair.plain.post("/send_to_dms", json={**USER, "request_id": rid}),
    )
    conflict = {**USER, "request_id": rid, "name": "Пётр"}
    _same(await pair.hot.post("/send_to_dms", json=conflict), await pair.plain.post("/send_to_dms", json=conflict))
    assert not [seen for seen in pair.hot_router.seen if seen[1] in ("/send_to_dms", "/send_to_crm")]


async def test_a_prefer_wait_answers_alike(pair: Pair) -> None:
    rid = unique("PREFER")
    wait = {"Prefer": "wait=5"}  # capped by the apps' max_wait (0.2 s)
    first = await pair.hot.post("/send_to_dms", json={**USER, "request_id": rid}, headers=wait)
    assert first.status_code == 202  # nothing settles it here: the wait ran out
    _same(
        await pair.hot.post("/send_to_dms", json={**USER, "request_id": rid}, headers=wait),
        await pair.plain.post("/send_to_dms", json={**USER, "request_id": rid}, headers=wait),
    )
    await pair.store.requests.record_response(rid, response={"dms_user_id": "DMS-1"}, error=None)
    hot = await pair.hot.post("/send_to_dms", json={**USER, "request_id": rid}, headers=wait)
    _same(hot, await pair.plain.post("/send_to_dms", json={**USER, "request_id": rid}, headers=wait))
    assert hot.status_code == 200
    assert hot.json()["status"] == "completed"
    assert hot.json()["response"] == {"dms_user_id": "DMS-1"}
    if pair.auth:
        # a client that may send but not read outcomes gets no outcome by waiting: the preference is ignored
        writer = ("writer", "writer-pw")
        mine = unique("PREFER-W")
        assert (await pair.hot.post("/send_to_dms", json={**USER, "request_id": mine}, auth=writer)).status_code == 202
        await pair.store.requests.record_response(mine, response={"dms_user_id": "DMS-2"}, error=None)
        for client in (pair.hot, pair.plain):
            again = await client.post("/send_to_dms", json={**USER, "request_id": mine}, headers=wait, auth=writer)
            assert again.status_code == 202
            assert again.json() == {"status": "accepted", "request_id": mine}
            assert "DMS-2" not in again.text
    assert not [seen for seen in pair.hot_router.seen if seen[1] == "/send_to_dms"]


async def test_reads_answer_alike_and_odd_queries_go_to_fastapi(pair: Pair) -> None:
    rid = unique("READ")
    assert (await pair.plain.post("/send_to_dms", json={**USER, "request_id": rid})).status_code == 202
    for query in ("", "?wait=0", "?wait=0.1", "?wait=300"):
        hot, plain = await pair.hot.get(f"/requests/{rid}{query}"), await pair.plain.get(f"/requests/{rid}{query}")
        _same(hot, plain)
        assert hot.json()["status"] == "accepted"
    _same(await pair.hot.get("/requests/nope"), await pair.plain.get("/requests/nope"))
    _same(
        await pair.hot.get(f"/requests/{rid}", auth=("erp", "bad")),
        await pair.plain.get(f"/requests/{rid}", auth=("erp", "bad")),
    )
    assert not pair.hot_router.seen
    # not the hot path's to answer: FastAPI validates (422) or routes them
    for path in (
        f"/requests/{rid}?wait=301",
        f"/requests/{rid}?wait=abc",
        f"/requests/{rid}?wait=1e1",
        f"/requests/{rid}?wait=1&x=2",
        "/requests/" + "x" * 129,
        f"/requests/{rid}/timeline",
    ):
        _same(await pair.hot.get(path), await pair.plain.get(path))
        assert pair.hot_router.seen[-1][1] == path.split("?")[0]
    assert (await pair.hot.get(f"/requests/{rid}?wait=abc")).status_code == 422
