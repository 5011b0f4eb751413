"""The OpenAPI document tells the truth: requests generated from `/openapi.json` for every operation (schemathesis 4)
get only answers it describes — their status, content type, body schema and headers — and never a 5xx.

1C engineers generate their code from that document, so an answer it does not declare is a bug of the document (or of
the handler). The API runs with authentication on: a client with every scope (cheap argon2 parameters) calls every
operation with valid data and with invalid data; calls without credentials, or with made-up ones, must get the 401
every authenticated operation declares, and those of a client without scopes the 403. The dead-letter operations run
on dead letters held in memory (`FakeDeadLetters`), and a few explicit calls reach what random data does not (the state
of a request sent before, a pause). Bounded: a few examples per operation, the whole module in well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import argon2
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi as schemathesis_asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from esi.api.app import ApiDeps, create_app  # noqa: E402
from esi.bus.dead_letters import DeadLetter, DeadLetters, Filters  # noqa: E402
from esi.bus.topology import build_topology  # noqa: E402
from esi.dlq.entries import entry_of  # noqa: E402
from esi.security import ClientRegistry, make_client_entry  # noqa: E402
from esi.store import Store  # noqa: E402
from esi.systems.registry import load_registry  # noqa: E402
from tests.integration.test_schemathesis import EsiUnderTest  # noqa: E402

pytestmark = pytest.mark.integration

#: cheap argon2 parameters (as tests/unit/test_auth.py): the test is about the document, not the hashing
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CLIENT, PASSWORD = "codegen", "every-scope-password"
NOBODY = "nobody"  # a client without scopes: may neither send, nor read, nor operate


def basic(client_id: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{PASSWORD}".encode()).decode()}


AUTH = basic(CLIENT)
CREDENTIALS = ("Authorization", "X-API-Key")


def not_an_internal_error(ctx: Any, response: Any, case: Any) -> None:
    """No 500 (a bug, though declared, as every operation may fail): a 503 is a declared refusal (`backlog_full`,
    `unavailable`), which `not_a_server_error` would count as a failure too."""
    if response.status_code != 503:
        not_a_server_error(ctx, response, case)


#: what an answer must agree with: the declared statuses, content types, body schemas and headers; and no 500
CHECKS = [
    not_an_internal_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def clients() -> ClientRegistry:
    """One client with every scope (send anything, read, operate), and one with none."""
    entries = [
        make_client_entry(CLIENT, password=PASSWORD, send=["*"], read=True, operator=True, hasher=FAST),
        make_client_entry(NOBODY, password=PASSWORD, send=[], read=False, operator=False, hasher=FAST),
    ]
    return ClientRegistry.from_json(json.dumps({"clients": entries}))


class FakeDeadLetters(DeadLetters):
    """The dead-letter queues of the registry's topology, held in memory: three letters in the first queue, which
    replays and purges leave where they are."""

    def __init__(self) -> None:
        super().__init__(None, build_topology(load_registry().queues()))  # type: ignore[arg-type]
        queue = self.queues()[0]
        at = datetime.now(UTC) - timedelta(minutes=5)
        self.letters = [
            DeadLetter(
                f"{queue}:{n}", queue, "esi", "dms.request.create_user", "rejected", "BusinessError", 1, at, {}, b"{}"
            )
            for n in range(3)
        ]

    async def list(self, filters: Filters | None = None, *, limit: int | None = None) -> builtins.list[DeadLetter]:
        filters = filters or Filters()
        queues = self.queues(filters.queue)
        found = [d for d in self.letters if d.queue in queues and filters.match(d)]
        return found[:limit] if limit else found

    async def find(self, queue: str, ident: str) -> DeadLetter | None:
        return next((d for d in self.letters if d.queue == queue and d.id == ident), None)

    async def replay(
        self, filters: Filters, *, rate: float | None = None, dry_run: bool = False
    ) -> builtins.list[DeadLetter]:
        return await self.list(filters)

    async def purge(self, filters: Filters) -> builtins.list[DeadLetter]:
        # the letters stay: every example (and the explicit calls after them) sees the same three
        return await self.list(filters)


class AuthenticatedEsi(EsiUnderTest):
    """The esi API with its clients (authentication on), its store opened by the ASGI lifespan."""

    @staticmethod
    def deps_kwargs(store: Store) -> dict[str, Any]:
        return {
            "registry": load_registry(),
            "store": store,
            "on_accepted": lambda row: None,
            "max_pdf_bytes": 1024 * 1024,
            "dead_letters": FakeDeadLetters(),
            "clients": clients(),
            # a `?wait=` holds on for no longer than this: the examples stay fast
            "max_wait": 0.05,
            "wait_recheck": 0.01,
        }


async def _index(url: str, letters: FakeDeadLetters) -> None:
    """The fake's letters in the store's dead-letter index (what the listing reads), parked: a replay, a purge or an
    edit among the random examples settles them, so the explicit calls after them park them again first."""
    from sqlalchemy import update

    from esi.store import schema
    from esi.store.dead_letters import PARKED

    store = await Store.open(url)
    try:
        await store.dead_letters.add([entry_of(d, system="dms") for d in letters.letters], indexed_by="sweep")
        d = schema.dead_letters
        await store.database.write(
            lambda conn: conn.execute(update(d).values(state=PARKED, settled_at=None, job_id=None))
        )
    finally:
        await store.aclose()


#: the store the module's esi runs on (its SQLite file)
STORE_URL: dict[str, str] = {}


@pytest.fixture(scope="module")
def esi_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory: Path = tmp_path_factory.mktemp("openapi_truth")
    url = f"sqlite:///{directory}/esi.db"
    STORE_URL["url"] = url
    asyncio.run(_index(url, FakeDeadLetters()))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", AuthenticatedEsi(url))
    finally:
        schemathesis_asgi.shutdown_lifespans()


def _document() -> dict[str, Any]:
    app = create_app(
        ApiDeps(
            registry=load_registry(), store=None, on_accepted=lambda row: None, max_pdf_bytes=1024, clients=clients()
        )  # type: ignore[arg-type]
    )
    return app.openapi()


DOCUMENT = _document()
OPERATIONS = sorted(
    (path, method.upper(), spec) for path, methods in DOCUMENT["paths"].items() for method, spec in methods.items()
)


def _authenticated(spec: dict[str, Any]) -> bool:
    return bool(spec.get("security"))


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(path, method, mode) of every operation: valid data, and invalid data where there is something to get wrong."""
    cases = []
    for path, method, spec in OPERATIONS:
        cases.append((path, method, GenerationMode.POSITIVE))
        if spec.get("parameters") or spec.get("requestBody"):
            cases.append((path, method, GenerationMode.NEGATIVE))
    return cases


#: operations whose valid requests must be accepted at least once (proof that the client's credentials work)
MUST_ACCEPT = {("/send_to_dms", "POST"), ("/send_to_crm", "POST")}


def _run(operation: Any, mode: GenerationMode, examples: int, call: Any) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        call(case)

    run()


def test_every_operation_is_documented_with_its_refusals() -> None:
    """The declarations themselves: each error an operation declares has the one error schema and an example."""
    schemas = DOCUMENT["components"]["schemas"]
    assert "ErrorBody" in schemas
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 is answered in the error shape, and declared so
    for path, method, spec in OPERATIONS:
        responses = spec["responses"]
        assert "500" in responses, (method, path)
        if _authenticated(spec):
            assert {"401", "403", "429"} <= set(responses), (method, path, sorted(responses))
        if spec.get("parameters") or spec.get("requestBody"):
            assert "422" in responses, (method, path)
        for status, response in responses.items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            assert content["examples"], (method, path, status)


# schemathesis' own pytest integration fails on pytest 9.2 (see test_schemathesis): each operation is driven with its
# Hypothesis strategy
@pytest.mark.parametrize(("path", "method", "mode"), _cases(), ids=str)
def test_every_answer_is_declared(esi_schema: Any, path: str, method: str, mode: GenerationMode) -> None:
    statuses: list[int] = []

    def call(case: Any) -> None:
        for name in CREDENTIALS:  # made-up credentials would only earn 401s: the client's are AUTH
            case.headers.pop(name, None)
        statuses.append(case.call_and_validate(headers=AUTH, checks=CHECKS).status_code)

    _run(esi_schema[path][method], mode, 20, call)
    assert statuses
    if mode is GenerationMode.POSITIVE and (path, method) in MUST_ACCEPT:
        assert 202 in statuses, sorted(set(statuses))


@pytest.mark.parametrize(
    ("path", "method"), [(path, method) for path, method, spec in OPERATIONS if _authenticated(spec)], ids=str
)
def test_unauthenticated_calls_get_the_declared_401(esi_schema: Any, path: str, method: str) -> None:
    statuses: list[int] = []

    def call(case: Any) -> None:
        # every other call without credentials; the rest with what schemathesis makes up for the declared schemes
        if len(statuses) % 2 == 0:
            for name in CREDENTIALS:
                case.headers.pop(name, None)
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    _run(esi_schema[path][method], GenerationMode.POSITIVE, 6, call)
    assert set(statuses) == {401}, sorted(set(statuses))


@pytest.mark.parametrize(
    ("path", "method"), [(path, method) for path, method, spec in OPERATIONS if _authenticated(spec)], ids=str
)
def test_a_client_without_scopes_gets_the_declared_403(esi_schema: Any, path: str, method: str) -> None:
    statuses: list[int] = []

    def call(case: Any) -> None:
        for name in CREDENTIALS:
            case.headers.pop(name, None)
        statuses.append(case.call_and_validate(headers=basic(NOBODY), checks=CHECKS).status_code)

    _run(esi_schema[path][method], GenerationMode.POSITIVE, 6, call)
    # a path parameter naming nothing is a 404 first (the generic send route's target too)
    if "{" not in path:
        assert 403 in statuses, sorted(set(statuses))


def test_the_answers_random_data_does_not_reach_are_declared_too(esi_schema: Any) -> None:
    """A request sent, then read, found, traced, sent again differently; a system paused and resumed; a dead letter
    shown, and a purge that expects the wrong count."""

    def call(path: str, method: str, status: int, **kwargs: Any) -> Any:
        case = esi_schema[path][method].Case(**kwargs)
        response = case.call_and_validate(headers=AUTH, checks=CHECKS)
        assert response.status_code == status, (method, path, response.status_code, response.content[:300])
        return response.json()

    # ids of its own: the random examples before may have sent anything ("U1"; a CI run met its old "truth-1")
    request_id, user_id = f"truth-{uuid.uuid4().hex}", f"truth-{uuid.uuid4().hex[:12]}"
    body = {"request_id": request_id, "user_id": user_id, "name": "Иван", "email": "ivan@example.com"}
    path = "/requests/{target}/{message_type}"
    sent = {"target": "dms", "message_type": "create_user"}
    call(path, "POST", 202, path_parameters=sent, body=body, media_type="application/json")
    call(path, "POST", 202, path_parameters=sent, body=body, media_type="application/json")  # the same again
    call(path, "POST", 409, path_parameters=sent, body={**body, "name": "Пётр"}, media_type="application/json")
    call("/requests/{request_id}", "GET", 200, path_parameters={"request_id": request_id}, query={"wait": 1})
    call("/requests/{request_id}/timeline", "GET", 200, path_parameters={"request_id": request_id})
    assert call("/requests", "GET", 200, query={"key": user_id})["count"] == 1
    call("/systems/{code}/pause", "POST", 200, path_parameters={"code": "dms"}, body={"for": "1h", "reason": "test"})
    call("/systems/{code}/pause", "POST", 422, path_parameters={"code": "dms"}, body={"for": "soon"})
    call("/systems/{code}/resume", "POST", 200, path_parameters={"code": "dms"})
    asyncio.run(_index(STORE_URL["url"], FakeDeadLetters()))  # parked again, whatever the examples did
    letters = call("/dlq", "GET", 200)["messages"]
    call("/dlq/{ident}", "GET", 200, path_parameters={"ident": letters[0]["id"]})
    call("/dlq/purge", "POST", 409, body={"expect": len(letters) + 1})
    call("/dlq/replay", "POST", 200, body={"ids": [letters[0]["id"]], "dry_run": True})
