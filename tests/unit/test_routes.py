"""The route table (esi.api.routes): each route declared once, served alike by the fast path (esi.api.hot) and by
FastAPI, and counted once in the HTTP metrics whichever serves it. The API runs in-process on SQLite stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
from fastapi import Query, Request
from fastapi.routing import APIRoute

from esi import metrics
from esi.api.app import ApiDeps, create_app
from esi.api.hot import HotPath
from esi.api.routes import Param, Route, SendRoute
from esi.security import ClientRegistry, Principal, make_client_entry
from esi.store import Store
from esi.systems.crm.messages import UpdateOrderStatus
from esi.systems.dms.messages import CreateUser, GetPolicyInfo
from esi.systems.registry import load_registry

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ERP = ("erp", "erp-pw")
#: a send route beyond the original two: send routes are data
POLICY_ROUTE = SendRoute(
    "/send_policy_query",
    "dms",
    "get_policy_info",
    GetPolicyInfo,
    summary="Ask the DMS for a policy (default message type: get_policy_info)",
)
SEND_ROUTES = (*load_registry().send_routes, POLICY_ROUTE)
#: a valid body for each send route's default request
SAMPLES: dict[type, dict[str, Any]] = {
    CreateUser: {"user_id": "U1", "name": "Иван", "email": "ivan@example.com"},
    UpdateOrderStatus: {"order_id": "ORD1", "status": "Shipped"},
    GetPolicyInfo: {"policy_number": "POL-1"},
}


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
class Apps:
    """The same API twice, each on a store of its own: with the fast path, and with FastAPI serving everything."""

    hot: httpx.AsyncClient
    plain: httpx.AsyncClient
    spy: RouterSpy
    #: the hot app's route table, FastAPI's routes, and its OpenAPI document
    routes: list[Route]
    served: list[Any]
    openapi: dict[str, Any]
    auth: bool


@pytest.fixture(params=["open", "auth"])
async def apps(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Apps]:
    entries = json.dumps([make_client_entry("erp", password="erp-pw", send=["*"], hasher=FAST)])

    def clients() -> ClientRegistry | None:
        # one each: the two apps stand for two processes, each with its own count of failed sign-ins
        return ClientRegistry.from_json(entries) if request.param == "auth" else None

    async with (
        await Store.open(f"sqlite:///{tmp_path}/hot.db") as hot_store,
        await Store.open(f"sqlite:///{tmp_path}/plain.db") as plain_store,
    ):

        def app(store: Store, hot: bool) -> Any:
            return create_app(
                ApiDeps(
                    registry=load_registry(),
                    store=store,
                    on_accepted=lambda row: None,
                    max_pdf_bytes=1024,
                    clients=clients(),
                    max_wait=0.2,
                    wait_recheck=0.05,
                    hot_path=hot,
                    send_routes=SEND_ROUTES,
                )
            )

        hot_app = app(hot_store, True)
        table, served, openapi = hot_app.state.routes, hot_app.routes, hot_app.openapi()
        spy = RouterSpy(hot_app.router)
        hot_app.router = spy
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=hot_app), base_url="http://esi", auth=ERP) as hot,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app(plain_store, False)), base_url="http://esi", auth=ERP
            ) as plain,
        ):
            yield Apps(hot, plain, spy, table, served, openapi, request.param == "auth")


def _masked(body: Any) -> Any:
    """The body without what differs between two stores: the times."""
    if isinstance(body, dict):
        return {k: "(time)" if k in ("created_at", "updated_at") else _masked(v) for k, v in body.items()}
    return body


async def _both(apps: Apps, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The same request to both apps: the answers must be the same."""
    hot = await apps.hot.request(method, url, **kwargs)
    plain = await apps.plain.request(method, url, **kwargs)
    assert hot.status_code == plain.status_code, (url, hot.text, plain.text)
    for name in ("content-type", "x-esi-duplicate", "www-authenticate", "retry-after", "allow"):
        assert hot.headers.get(name) == plain.headers.get(name), (url, name)
    assert _masked(hot.json()) == _masked(plain.json()), url
    return hot


def _send_cases(route: SendRoute) -> list[tuple[dict[str, Any], int]]:
    sample = SAMPLES[route.body_model]
    return [
        ({"json": {**sample, "request_id": f"R-{route.target}-{route.default_message_type}"}}, 202),
        ({"json": {**sample, "request_id": f"R-{route.target}-{route.default_message_type}"}}, 202),  # a duplicate
        ({"json": {**sample, "request_id": f"R-{route.target}-{route.default_message_type}", "x": 1}}, 422),
        ({"json": {**sample, "request_id": f"W-{route.name}"}, "headers": {"Prefer": "wait=5"}}, 202),
        ({"json": {**sample, "message_type": "no_such_type"}}, 422),
        ({"json": {}}, 422),
        ({"content": b"{not json"}, 400),
        ({"content": b""}, 400),
        ({"json": [1, 2]}, 400),
    ]


async def test_the_table_declares_each_route_once_and_fastapi_serves_every_one(apps: Apps) -> None:
    declared = [(r.method, r.path) for r in apps.routes]
    assert len(declared) == len(set(declared))
    served = [(m, r.path) for r in apps.served if isinstance(r, APIRoute) for m in r.methods]
    assert sorted(served) == sorted(declared)
    openapi = apps.openapi
    for route in SEND_ROUTES:
        operation = openapi["paths"][route.path]["post"]
        assert operation["summary"] == route.summary
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert set(route.body_model.model_fields) | {"request_id"} == set(schema["properties"])
    assert "/requests/{target}/{message_type}" in openapi["paths"]


async def test_every_hot_route_answers_alike_on_both_paths(apps: Apps) -> None:
    hot = {(r.method, r.path) for r in apps.routes if r.hot}
    # a route made hot needs its cases here
    assert hot == {("POST", r.path) for r in SEND_ROUTES} | {("GET", "/requests/{request_id}")}
    for route in SEND_ROUTES:
        for kwargs, status in _send_cases(route):
            assert (await _both(apps, "POST", route.path, **kwargs)).status_code == status, (route.path, kwargs)
        if apps.auth:
            answer = await _both(apps, "POST", route.path, json=SAMPLES[route.body_model], auth=("erp", "wrong"))
            assert answer.status_code == 401
    duplicate = await apps.hot.post("/send_to_dms", json={**SAMPLES[CreateUser], "request_id": "R-dms-create_user"})
    assert duplicate.headers["x-esi-duplicate"] == "true"
    read = "/requests/R-dms-create_user"
    for query, status in (("", 200), ("?wait=0", 200), ("?wait=0.1", 200), ("?wait=300", 200)):
        assert (await _both(apps, "GET", read + query)).status_code == status
    assert (await _both(apps, "GET", "/requests/unknown")).status_code == 404
    if apps.auth:
        assert (await _both(apps, "GET", read, auth=("erp", "wrong"))).status_code == 401
    assert not apps.spy.seen, apps.spy.seen

    # what the fast path cannot check exactly as FastAPI would is FastAPI's to answer
    for url, status in (
        (read + "?wait=abc", 422),
        (read + "?wait=301", 422),
        (read + "?wait=1e1", 200),
        (read + "?wait=1&x=2", 200),
        ("/requests/" + "x" * 129, 422),
        (read + "/timeline", 200),
    ):
        assert (await _both(apps, "GET", url)).status_code == status, url
        assert apps.spy.seen[-1] == ("GET", url.split("?")[0])


def _http_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for metric in metrics.REGISTRY.collect():
        for sample in metric.samples:
            if sample.name in ("esi_http_requests_total", "esi_http_request_duration_seconds_count"):
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.mark.parametrize(
    ("method", "url", "template", "status"),
    [
        ("POST", "/send_to_dms", "/send_to_dms", 202),  # the fast path
        ("POST", "/send_policy_query", "/send_policy_query", 202),
        ("GET", "/requests/M1", "/requests/{request_id}", 200),
        ("GET", "/requests/M1?wait=abc", "/requests/{request_id}", 422),  # FastAPI, on both apps
        ("GET", "/requests/M1/timeline", "/requests/{request_id}/timeline", 200),
        ("GET", "/healthz", "/healthz", 200),
        ("GET", "/livez", "/livez", 200),
        ("GET", "/no/such/route", "unmatched", 404),
        ("DELETE", "/send_to_dms", "/send_to_dms", 405),
    ],
)
async def test_each_request_is_counted_once_whichever_path_serves_it(
    apps: Apps, method: str, url: str, template: str, status: int
) -> None:
    sample = SAMPLES[GetPolicyInfo] if "policy" in url else SAMPLES[CreateUser]
    for client in (apps.hot, apps.plain):
        assert (await client.post("/send_to_dms", json={**SAMPLES[CreateUser], "request_id": "M1"})).status_code in (
            202,
            200,
        )
        before = _http_samples()
        body = {"json": {**sample, "request_id": "M" + url.replace("/", "-")}} if method == "POST" else {}
        response = await client.request(method, url, **body)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        after = _http_samples()
        changed = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
        assert changed == {
            ("esi_http_requests_total", (("method", method), ("route", template), ("status", str(status)))): 1.0,
            ("esi_http_request_duration_seconds_count", (("method", method), ("route", template))): 1.0,
        }


async def _handler(request: Request, principal: Principal, *args: Any) -> None:
    """A handler for routes the fast path must refuse to serve."""


@pytest.mark.parametrize(
    "route",
    [
        Route("GET", "/a/{x}/b", "a", _handler, "a", params=(Param("x", str),), hot=True),
        Route("GET", "/a/{x}", "a", _handler, "a", params=(Param("x", str), Param("n", int, Query(0, ge=0))), hot=True),
        Route("GET", "/a/{x}", "a", _handler, "a", params=(Param("x", str), Param("n", int, Query(le=5))), hot=True),
        Route("GET", "/a/{x}", "a", _handler, "a", params=(Param("x", str), Param("n", str, Query(""))), hot=True),
        Route("GET", "/a", "a", _handler, "a", params=(Param("n", int, Query(0, le=5)),), hot=True),
        Route("GET", "/a", "a", _handler, "a", hot=True, authenticated=False),
    ],
)
def test_the_fast_path_refuses_routes_it_could_not_check_as_fastapi_does(route: Route) -> None:
    async def authenticate(request: Request) -> Principal:
        return Principal("x")

    with pytest.raises(ValueError, match="fast path"):
        HotPath(lambda scope, receive, send: None, routes=[route], authenticate=authenticate)  # type: ignore[arg-type]
