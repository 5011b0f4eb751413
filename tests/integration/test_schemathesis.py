"""The HTTP API against its own OpenAPI schema (schemathesis 4): no 5xx, and every 4xx in esi's JSON error shape.

The API runs in-process on a SQLite store in a temporary directory. Its store is opened inside the application's
lifespan, because schemathesis drives ASGI apps on an event loop of its own (a store opened on pytest's loop would
be bound to the wrong loop). The dead-letter operations need a broker and are left out.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi as schemathesis_asgi  # noqa: E402

from esi.api.app import ApiDeps, create_app  # noqa: E402
from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD, demo_registry  # noqa: E402
from esi.store import Store  # noqa: E402
from esi.systems.registry import load_registry  # noqa: E402

pytestmark = pytest.mark.integration

#: sent with every case; harmless while the API has no authentication, and what it needs once it has
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_PASSWORD}".encode()).decode()}


class EsiUnderTest:
    """The esi API, with its store opened and closed by the ASGI lifespan."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.store: Store | None = None
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.store = await Store.open(self.database_url)
                    self.app = create_app(ApiDeps(**self.deps_kwargs(self.store)))
                except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported by schemathesis as a failed startup
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.store is not None:
                    await self.store.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def deps_kwargs(store: Store) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "registry": load_registry(),
            "store": store,
            "on_accepted": lambda row: None,
            "max_pdf_bytes": 1024 * 1024,
            "dead_letters": None,
        }
        # once the API authenticates its clients (ApiDeps.clients), the demo client has every scope
        if "clients" in {f.name for f in dataclasses.fields(ApiDeps)}:
            kwargs["clients"] = demo_registry()
        return kwargs


@pytest.fixture(scope="module")
def esi_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    app = EsiUnderTest(f"sqlite:///{directory}/esi.db")
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        schemathesis_asgi.shutdown_lifespans()


def errors_have_the_json_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx (and 5xx) answers `{"error": {"code": str, "message": str, ...}}` as JSON."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered with Content-Type {content_type!r}: {response.content[:300]!r}"
    )
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} with a body that is not JSON: {response.content[:300]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an 'error' object: {body!r}"[:500]
    assert isinstance(error.get("code"), str), f"error.code missing or empty: {body!r}"[:500]
    assert error["code"], f"error.code missing or empty: {body!r}"[:500]
    assert isinstance(error.get("message"), str), f"error.message missing: {body!r}"[:500]
    return None


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(path, method, mode) of every operation but the dead-letter ones (they need a broker); negative cases only
    where there is something to get wrong (parameters or a body)."""
    app = create_app(ApiDeps(registry=load_registry(), store=None, on_accepted=lambda row: None, max_pdf_bytes=1024))  # type: ignore[arg-type]
    cases = []
    for path, methods in sorted(app.openapi()["paths"].items()):
        if path.startswith("/dlq"):
            continue
        for method, spec in sorted(methods.items()):
            cases.append((path, method.upper(), GenerationMode.POSITIVE))
            if spec.get("parameters") or spec.get("requestBody"):
                cases.append((path, method.upper(), GenerationMode.NEGATIVE))
    return cases


#: operations whose valid requests must be accepted at least once (proof that the store works in the test)
MUST_ACCEPT = {("/send_to_dms", "POST"), ("/send_to_crm", "POST")}


# schemathesis' own pytest integration (`schemathesis.pytest.from_fixture`) fails on pytest 9.2 (it sets
# `request.node._nodeid`, which pytest 9.2 no longer has): each operation is driven with its Hypothesis strategy,
# as schemathesis documents for use with `@given`
@pytest.mark.parametrize(("path", "method", "mode"), _operations(), ids=lambda v: str(v))
def test_the_api_never_answers_5xx_and_always_shapes_its_errors(
    esi_schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    operation = esi_schema[path][method]
    statuses: list[int] = []

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if mode is GenerationMode.POSITIVE and case.headers:
            # credentials schemathesis makes up for the declared security schemes would only earn 401s here
            # (test_auth covers those); the valid ones are AUTH
            for name in ("Authorization", "X-API-Key"):
                case.headers.pop(name, None)
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error, errors_have_the_json_error_shape])
        statuses.append(response.status_code)

    run()
    assert statuses
    if mode is GenerationMode.POSITIVE and (path, method) in MUST_ACCEPT:
        assert 202 in statuses, sorted(set(statuses))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/send_to_dms", {"request_id": "R1\n", "user_id": "U1", "name": "Иван", "email": "ivan@example.com"}),
        ("/send_to_crm", {"request_id": "R2\n", "order_id": "ORD9876", "status": "Shipped"}),
    ],
)
def test_a_request_id_with_a_trailing_newline_is_not_a_server_error(
    esi_schema: Any, path: str, body: dict[str, Any]
) -> None:
    case = esi_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error, errors_have_the_json_error_shape])
    assert response.status_code == 422
