"""A fake DMS (voluntary medical insurance system): the HTTP protocol esi speaks to the DMS, served from memory.

The protocol (JSON over HTTP, UTF-8; Cyrillic is sent as-is, not escaped)
------------------------------------------------------------------------
``POST /users`` — register an insured person.
    Body ``{"external_id": "U12345", "name": "Иванов Иван", "email": "ivanov@example.com", "phone": "+7..."}``
    (``phone`` optional, unknown fields ignored); optional header ``Idempotency-Key``.

    - 201 ``{"id": "DMS-000001", "external_id", "name", "email", "phone", "created_at"}``; ids are sequential,
      ``created_at`` is ISO-8601 UTC.
    - The same ``Idempotency-Key`` with the same body again: the stored answer again, 200, with the header
      ``Idempotent-Replayed: true``; no second user is created. Only successful creations are remembered under a key,
      so a refused request may be retried with its key.
    - The same key with a different body: 422 ``idempotency_key_reused``.
    - An ``external_id`` already registered (under another key or none): 409 ``user_exists``.
    - Refusals, 422 ``validation_error``: a body that is not the shape above, an empty or blank ``external_id`` or
      ``name``, an email without a local part, ``@`` and domain, and **any email at the domain ``refused.example``** —
      the deterministic way for tests and demos to make the DMS refuse a user.

``GET /policies/{policy_number}`` — the policy's details. The number is one URL-quoted path segment (it may hold
    ``/``, spaces or Cyrillic; ``%2F`` is accepted).

    - 200 ``{"policy_number", "holder_name", "status", "start_date", "end_date", "insurer", "coverage": [...]}``,
      ``status`` one of ``active`` / ``expired`` / ``suspended``, dates ISO ``YYYY-MM-DD``.
    - 404 ``policy_not_found``. The seeded policies are `SEED_POLICIES`.

``GET /health`` — 200 ``{"status": "ok"}``; never needs the API key and is never hit by injected faults.

Authentication: when the app is created with ``api_key``, ``/users`` and ``/policies/*`` require
``Authorization: Bearer <api_key>``; otherwise 401 ``unauthorized``.

Every error the DMS itself answers is ``{"error": {"code": "...", "message": "..."}}`` (also 404 ``not_found`` and
405 ``method_not_allowed`` for unknown paths and methods). Faults injected through ``/_fake/faults`` answer with
the shared body of `esi.fakes.faults.fault_response` instead (``{"error": "injected fault", "status": N}``),
so clients must accept an ``error`` that is a plain string.

Test and demo controls (never need the API key, never hit by faults)
--------------------------------------------------------------------
- ``GET /_fake/state`` — users, policies, idempotency keys held, counters (``calls`` per operation —
  ``create_user``, ``get_policy`` — counting requests that reached the operation, faulted ones excluded;
  ``created``; ``idempotent_replays``; ``refused``: ``create_user`` calls answered 409 or 422) and ``faults``.
- ``POST /_fake/reset`` — back to the seed: no users, seeded policies, counters zero, faults cleared.
- ``POST /_fake/policies`` — issue, change or cancel a policy (the body is a policy as ``GET /policies/…`` serves
  it; ``status: cancelled`` cancels): its revision goes up by one and, when a webhook URL is configured
  (``DMS_FAKE_WEBHOOK_URL``), the fake sends the DMS's signed event webhook (``policy_issued``, ``policy_changed``
  or ``policy_cancelled``) as the real DMS would, signed with ``DMS_WEBHOOK_SECRET``; a failed call is logged, and
  the answer says how it went (``webhook``).
- ``POST /_fake/faults`` — see `esi.fakes.faults`.

``/_fake/state``, ``/_fake/reset`` and ``/_fake/faults`` are the endpoints every fake has (`esi.fakes.controls`).

Layout: ``/health`` lives on the outer app, the DMS API and ``/_fake/*`` on a sub-application mounted at ``/``
on which the fault middleware is installed; that is how ``/health`` escapes injected faults.
Everything is held in plain dicts and answered without awaiting anything, so concurrent requests cannot interleave
inside an operation (the fake is used in benchmarks at thousands of requests per second).
"""

from __future__ import annotations

import copy
import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, cast

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from esi.fakes.controls import TELEMETRY_OFF, install_controls
from esi.fakes.faults import Faults
from esi.messages.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger(__name__)

#: the email domain the fake DMS always refuses (422 validation_error)
REFUSED_EMAIL_DOMAIN = "refused.example"

#: the policies a fresh (or reset) fake DMS holds, by number
SEED_POLICIES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        cast(str, policy["policy_number"]): MappingProxyType(policy)
        for policy in (
            {
                "policy_number": "POL-0001",
                "holder_name": "Иванов Иван Иванович",
                "status": "active",
                "start_date": "2025-01-01",
                "end_date": "2025-12-31",
                "insurer": "СК «Надёжная защита»",
                "coverage": ["outpatient", "inpatient", "dentistry"],
            },
            {
                "policy_number": "POL-0002",
                "holder_name": "Петрова Мария Сергеевна",
                "status": "expired",
                "start_date": "2023-01-01",
                "end_date": "2023-12-31",
                "insurer": "СК «Надёжная защита»",
                "coverage": ["outpatient"],
            },
            {
                "policy_number": "POL-0003",
                "holder_name": "Сидоров Пётр Алексеевич",
                "status": "suspended",
                "start_date": "2025-03-01",
                "end_date": "2026-02-28",
                "insurer": "СК «Надёжная защита»",
                "coverage": ["outpatient", "emergency"],
            },
            {
                "policy_number": "POL-12345",
                "holder_name": "Иванов Иван",
                "status": "active",
                "start_date": "2025-06-01",
                "end_date": "2026-05-31",
                "insurer": "СК «Надёжная защита»",
                "coverage": ["outpatient", "inpatient"],
            },
            {
                # a number with a slash, a space and Cyrillic: clients must quote it as one path segment
                "policy_number": "ДМС 2025/077",
                "holder_name": "Кузнецова Анна Викторовна",
                "status": "active",
                "start_date": "2025-02-15",
                "end_date": "2026-02-14",
                "insurer": "СК «Надёжная защита»",
                "coverage": ["outpatient", "telemedicine"],
            },
        )
    }
)

_OPERATIONS = ("create_user", "get_policy")


class NewUser(BaseModel):
    """The body of ``POST /users``."""

    model_config = ConfigDict(extra="ignore")

    external_id: str
    name: str
    email: str
    phone: str | None = None


class NewPolicy(BaseModel):
    """The body of ``POST /_fake/policies``: a policy as ``GET /policies/{number}`` serves it."""

    model_config = ConfigDict(extra="forbid")

    policy_number: str = Field(min_length=1)
    holder_name: str
    status: Literal["active", "expired", "suspended", "cancelled"]
    start_date: dt.date
    end_date: dt.date
    insurer: str | None = None
    coverage: list[str] = []


class FakeDmsError(Exception):
    """An error the fake answers as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class FakeDms:
    """The fake DMS's in-memory state and operations (reachable as ``app.state.fake``)."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self._expected_authorization = f"Bearer {api_key}".encode() if api_key else None
        self.faults = Faults()
        self.reset()

    def reset(self) -> None:
        """Back to the seed: no users, the seeded policies, counters zero, no fault armed."""
        self.users: dict[str, dict[str, Any]] = {}  # by DMS id, in creation order
        self.ids_by_external_id: dict[str, str] = {}
        #: Idempotency-Key -> (the request it was first used with, the answer given)
        self.idempotency: dict[str, tuple[NewUser, dict[str, Any]]] = {}
        self.policies: dict[str, dict[str, Any]] = {
            number: copy.deepcopy(dict(policy)) for number, policy in SEED_POLICIES.items()
        }
        self.calls = dict.fromkeys(_OPERATIONS, 0)
        self.created = 0
        self.idempotent_replays = 0
        self.refused = 0
        self._next_id = 1
        self.faults.reset()

    # -- operations --------------------------------------------------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Refuse the call unless it carries the expected bearer token (when the fake has one)."""
        if self._expected_authorization is None:
            return
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, self._expected_authorization):
            raise FakeDmsError(401, "unauthorized", "missing or wrong bearer token")

    def create_user(self, user: NewUser, idempotency_key: str | None) -> tuple[int, dict[str, Any]]:
        """Register `user`; returns (HTTP status, body). Raises `FakeDmsError` on refusal."""
        if idempotency_key is not None:
            remembered = self.idempotency.get(idempotency_key)
            if remembered is not None:
                first_request, answer = remembered
                if first_request != user:
                    raise FakeDmsError(
                        422, "idempotency_key_reused", "Idempotency-Key already used with a different request body"
                    )
                self.idempotent_replays += 1
                return 200, answer
        self._validate(user)
        if user.external_id in self.ids_by_external_id:
            raise FakeDmsError(
                409,
                "user_exists",
                f"user {user.external_id!r} already registered as {self.ids_by_external_id[user.external_id]}",
            )
        dms_id = f"DMS-{self._next_id:06d}"
        self._next_id += 1
        record = {
            "id": dms_id,
            "external_id": user.external_id,
            "name": user.name,
            "email": user.email,
            "phone": user.phone,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        self.users[dms_id] = record
        self.ids_by_external_id[user.external_id] = dms_id
        if idempotency_key is not None:
            self.idempotency[idempotency_key] = (user, record)
        self.created += 1
        return 201, record

    def add_policy(self, policy: NewPolicy) -> dict[str, Any]:
        """Add (or replace) a policy; returns it as served."""
        return self.change_policy(policy)[0]

    def change_policy(self, policy: NewPolicy) -> tuple[dict[str, Any], str]:
        """Issue, change or cancel a policy: the policy as served (its revision one up) and the event it makes."""
        before = self.policies.get(policy.policy_number)
        record = {**policy.model_dump(mode="json"), "revision": int(before.get("revision", 1)) + 1 if before else 1}
        self.policies[policy.policy_number] = record
        if before is None:
            return record, "policy_issued"
        return record, "policy_cancelled" if policy.status == "cancelled" else "policy_changed"

    def get_policy(self, policy_number: str) -> dict[str, Any]:
        """The policy `policy_number`; raises `FakeDmsError` (404) when there is none."""
        policy = self.policies.get(policy_number)
        if policy is None:
            raise FakeDmsError(404, "policy_not_found", f"no policy {policy_number!r}")
        return policy

    def state(self) -> dict[str, Any]:
        """Everything the fake holds, as JSON-ready data."""
        return {
            "users": list(self.users.values()),
            "policies": list(self.policies.values()),
            "idempotency_keys": len(self.idempotency),
            "counters": {
                "calls": dict(self.calls),
                "created": self.created,
                "idempotent_replays": self.idempotent_replays,
                "refused": self.refused,
            },
            "faults": self.faults.state(),
        }

    @staticmethod
    def _validate(user: NewUser) -> None:
        if not user.external_id.strip():
            raise FakeDmsError(422, "validation_error", "external_id must not be empty")
        if not user.name.strip():
            raise FakeDmsError(422, "validation_error", "name must not be empty")
        local, at, domain = user.email.rpartition("@")
        if not (local and at and domain):
            raise FakeDmsError(422, "validation_error", f"email {user.email!r} is not an address")
        if domain.lower() == REFUSED_EMAIL_DOMAIN:
            raise FakeDmsError(422, "validation_error", f"email domain {REFUSED_EMAIL_DOMAIN} is refused by the DMS")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(
    *, api_key: str | None = None, webhook_url: str | None = None, webhook_secret: str | None = None
) -> FastAPI:
    """The fake DMS as an ASGI app; its state is ``app.state.fake`` (a `FakeDms`).

    Args:
        api_key: when set, the business endpoints require ``Authorization: Bearer <api_key>``.
        webhook_url: esi's base URL, where policy changes are announced (``/events/dms/<type>``), signed with
            ``webhook_secret``; None: no webhook.
    """
    fake = FakeDms(api_key=api_key)

    # the outer app serves only /health; its own docs are off so that /docs shows the DMS API below
    app = FastAPI(title="Fake DMS", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF)
    app.state.fake = fake

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: always ok, never faulted."""
        return {"status": "ok"}

    api = FastAPI(
        title="Fake DMS",
        summary="An in-memory stand-in for the DMS, for tests, demos and benchmarks",
        telemetry=TELEMETRY_OFF,
    )
    api.state.fake = fake

    @api.exception_handler(FakeDmsError)
    async def on_dms_error(request: Request, exc: FakeDmsError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @api.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail))

    @api.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "validation_error", _summarize(exc))

    # the body is parsed by hand (auth first, every refusal counted); its schema is still documented
    user_body = {"required": True, "content": {"application/json": {"schema": NewUser.model_json_schema()}}}

    @api.post("/users", status_code=201, openapi_extra={"requestBody": user_body})
    async def create_user(request: Request) -> JSONResponse:
        """Register an insured person (idempotent under the ``Idempotency-Key`` header)."""
        fake.calls["create_user"] += 1
        fake.authorize(request.headers.get("authorization"))
        try:
            try:
                user = NewUser.model_validate_json(await request.body())
            except ValidationError as exc:
                raise FakeDmsError(422, "validation_error", _summarize(exc)) from None
            status, body = fake.create_user(user, request.headers.get("idempotency-key"))
        except FakeDmsError:
            fake.refused += 1
            raise
        headers = {"Idempotent-Replayed": "true"} if status == 200 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @api.get("/policies/{policy_number:path}")
    async def get_policy(policy_number: str, request: Request) -> JSONResponse:
        """A policy's holder, status and dates."""
        fake.calls["get_policy"] += 1
        fake.authorize(request.headers.get("authorization"))
        return JSONResponse(fake.get_policy(policy_number))

    @api.post("/_fake/policies", status_code=201)
    async def add_policy(policy: NewPolicy) -> JSONResponse:
        """Issue, change or cancel a policy (tests and demos), and announce it by the signed webhook."""
        record, event = fake.change_policy(policy)
        answer = {**record, "event": event}
        if webhook_url:
            answer["webhook"] = await _announce(webhook_url, webhook_secret or "", event, record)
        return JSONResponse(answer, status_code=201)

    install_controls(api, fake)  # /_fake/state, /_fake/reset, /_fake/faults and the faults on the DMS API
    app.mount("/", api)
    return app


async def _announce(url: str, secret: str, event: str, policy: dict[str, Any]) -> int | str:
    """POST the DMS's signed webhook for `event`; its status, or why it failed (logged, not retried: as a real DMS
    whose call failed, the change waits for the next one)."""
    body = json.dumps(policy).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(stamp),
        SIGNATURE_HEADER: sign(secret, body, stamp),
    }
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{url.rstrip('/')}/events/dms/{event}", content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("the fake DMS's webhook for %s failed: %s", event, exc)
        return f"{type(exc).__name__}: {exc}"
    if response.status_code >= 300:
        log.warning("the fake DMS's webhook for %s answered %s: %s", event, response.status_code, response.text[:300])
    return response.status_code


def _summarize(exc: ValidationError | RequestValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False) if isinstance(exc, ValidationError) else exc.errors()
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "invalid body: " + "; ".join(parts)
