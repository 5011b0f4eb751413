"""The OpenAPI document tells the truth: requests generated from `/openapi.json` for every operation (schemathesis 4)
get only answers it describes — their status, content type, body schema and headers — and never a 5xx.

1C engineers generate their code from that document, so an answer it does not declare is a bug of the document (or of
the handler). The API runs with authentication on: a client with every scope (cheap argon2 parameters) calls every
operation with valid data and with invalid data; calls without credentials, or with made-up ones, must get the 401
every authenticated operation declares. The dead-letter operations run too: this service has no broker access, so
they answer the 503 they declare. Bounded: a few examples per operation, the whole module in well under a minute.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
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
from esi.security import ClientRegistry, make_client_entry  # noqa: E402
from esi.store import Store  # noqa: E402
from esi.systems.registry import load_registry  # noqa: E402
from tests.integration.test_schemathesis import EsiUnderTest  # noqa: E402

pytestmark = pytest.mark.integration

#: cheap argon2 parameters (as tests/unit/test_auth.py): the test is about the document, not the hashing
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CLIENT, PASSWORD = "codegen", "every-scope-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{CLIENT}:{PASSWORD}".encode()).decode()}
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
    """One client with every scope: send anything, read, operate."""
    entry = make_client_entry(CLIENT, password=PASSWORD, send=["*"], read=True, operator=True, hasher=FAST)
    return ClientRegistry.from_json(json.dumps({"clients": [entry]}))


class AuthenticatedEsi(EsiUnderTest):
    """The esi API with its clients (authentication on), its store opened by the ASGI lifespan."""

    @staticmethod
    def deps_kwargs(store: Store) -> dict[str, Any]:
        return {
            "registry": load_registry(),
            "store": store,
            "on_accepted": lambda row: None,
            "max_pdf_bytes": 1024 * 1024,
            "dead_letters": None,
            "clients": clients(),
            # a `?wait=` holds on for no longer than this: the examples stay fast
            "max_wait": 0.05,
            "wait_recheck": 0.01,
        }


@pytest.fixture(scope="module")
def esi_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory: Path = tmp_path_factory.mktemp("openapi_truth")
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", AuthenticatedEsi(f"sqlite:///{directory}/esi.db"))
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
