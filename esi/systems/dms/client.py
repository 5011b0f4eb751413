"""The DMS client: esi's only way to the DMS, speaking the protocol described in `esi.systems.dms.fake`.

Failures leave this module as esi's own errors (see `esi.errors`):

- timeouts, connection failures, 408/425/429 and 5xx → `TransientError` (retry later);
- 404 → `NotFound` (``code`` ``policy_not_found``); 409 and 422 → `BusinessError` (``code`` the DMS's own:
  ``user_exists``, ``validation_error``, ``idempotency_key_reused``);
- any other 4xx (401 ``unauthorized``, ...) and a 2xx answer that cannot be read → `PermanentError`.

The DMS's ``error.code`` and ``error.message`` are carried in the exception's text, and its ``code`` replaces
the HTTP-derived one on every non-transient error.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self, TypeVar, cast
from urllib.parse import quote

import httpx
import orjson
import pydantic

from esi.errors import EsiError, PermanentError, TransientError
from esi.systems.http import (
    HttpAnswer,
    as_response,
    default_transport,
    error_for_status,
    http_client,
    send_and_read,
    translate_transport_errors,
)

logger = logging.getLogger(__name__)

SYSTEM = "dms"

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


class DmsUser(pydantic.BaseModel):
    """A user as the DMS registered it."""

    id: str
    external_id: str
    name: str
    email: str
    phone: str | None = None
    created_at: str | None = None


class DmsPolicy(pydantic.BaseModel):
    """A policy's details as the DMS reports them."""

    policy_number: str
    holder_name: str
    status: str
    start_date: str
    end_date: str
    insurer: str | None = None
    coverage: list[str] = []


class DmsClient:
    """An async client for the DMS's HTTP API; use it as ``async with DmsClient(...) as dms:``.

    Args:
        base_url: the DMS's root URL, e.g. ``http://dms.internal:8080``.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given; never logged.
        timeout: seconds allowed for connecting, each read and write, and waiting for a pooled connection.
        ca_bundle: a CA bundle (file or directory) to trust instead of the system's; verification is always on.
        max_connections: the connection pool's size (all of them kept alive between calls).
        transport: an httpx transport to use instead of aiohttp's sockets (tests).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 10.0,
        ca_bundle: str | None = None,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "esi-dms-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        self._transport = transport or default_transport(ca_bundle=ca_bundle, max_connections=max_connections)
        self._http = http_client(base_url=base_url, timeout=timeout, transport=self._transport, headers=headers)
        # what the hot call sends without going through the client (see `create_user`)
        self._users_url = base_url.rstrip("/") + "/users"
        self._json_headers = {**self._http.headers, "Content-Type": "application/json"}
        self._timeout = httpx.Timeout(timeout).as_dict()

    def __repr__(self) -> str:
        return f"DmsClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def create_user(
        self, *, user_id: str, name: str, email: str, phone: str | None = None, idempotency_key: str
    ) -> DmsUser:
        """Register a user in the DMS and return it as registered.

        Args:
            user_id: the user's id in the calling system, stored by the DMS as ``external_id``.
            name: the user's full name.
            email: the user's email address.
            phone: the user's phone number, if known.
            idempotency_key: sent as ``Idempotency-Key``: repeating a call with the same key and the same data
                returns the user registered the first time instead of failing or registering a second one.

        Raises:
            BusinessError: the DMS refused the user (``code`` ``user_exists``, ``validation_error``,
                ``idempotency_key_reused``).
            TransientError: the DMS could not be reached or is unavailable for now.
            PermanentError: any other failure a retry cannot cure.
        """
        operation = "create_user"
        body: dict[str, str] = {"external_id": user_id, "name": name, "email": email}
        if phone is not None:
            body["phone"] = phone
        with translate_transport_errors(SYSTEM, operation):
            # through the transport itself: the client's `send` adds what the DMS does not use (cookies, auth
            # flows, redirects, URL merging), at a cost in CPU (docs/performance.md)
            response = await send_and_read(
                self._transport,
                "POST",
                self._users_url,
                content=_json(body),
                headers={**self._json_headers, "Idempotency-Key": idempotency_key},
                timeout=self._timeout,
            )
        if not response.is_success:
            raise _error(as_response(response), operation)
        user = _parse(response, DmsUser, operation)
        if response.headers.get("Idempotent-Replayed", "").lower() == "true":
            logger.debug("dms: user %s already registered as %s (idempotent replay)", user.external_id, user.id)
        else:
            logger.debug("dms: user %s registered as %s", user.external_id, user.id)
        return user

    async def get_policy(self, policy_number: str) -> DmsPolicy:
        """The details of the policy `policy_number`.

        Raises:
            NotFound: the DMS has no such policy (``code`` ``policy_not_found``).
            TransientError: the DMS could not be reached or is unavailable for now.
            PermanentError: any other failure a retry cannot cure.
        """
        operation = "get_policy"
        with translate_transport_errors(SYSTEM, operation):
            response = await self._http.get(f"/policies/{quote(policy_number, safe='')}")
        if not response.is_success:
            raise _error(response, operation)
        policy = _parse(response, DmsPolicy, operation)
        logger.debug("dms: policy %s is %s", policy.policy_number, policy.status)
        return policy

    async def check(self) -> None:
        """Readiness: return if the DMS answers ``GET /health`` with 200, else raise `TransientError`."""
        operation = "check"
        with translate_transport_errors(SYSTEM, operation):
            response = await self._http.get("/health")
        if response.status_code != 200:
            raise TransientError(
                f"{SYSTEM} {operation}: health check answered HTTP {response.status_code}",
                code=f"http_{response.status_code}",
                system=SYSTEM,
            )


def _json(body: dict[str, str]) -> bytes:
    # compact, Cyrillic as it is (as httpx's `json=` encodes it), by orjson: a twentieth of the stdlib's cost
    return orjson.dumps(body)


def _parse(response: HttpAnswer, model: type[_Model], operation: str) -> _Model:
    """Read a 2xx answer; a body that is not the expected JSON is a `PermanentError`."""
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise PermanentError(
            f"{SYSTEM} {operation}: HTTP {response.status_code} answer is not a valid {model.__name__} ({problems})",
            code="invalid_response",
            system=SYSTEM,
        ) from None


def _error(response: httpx.Response, operation: str) -> EsiError:
    """The esi error for a non-2xx answer, carrying the DMS's own error code and message when it gave them."""
    code, message = _dms_error(response)
    detail = f"{code}: {message}" if code and message else (code or message)
    exc = cast(EsiError, error_for_status(response, system=SYSTEM, operation=operation, detail=detail))
    if code and not isinstance(exc, TransientError):
        exc.code = code
    logger.debug("dms %s: HTTP %s (%s)", operation, response.status_code, exc.code)
    return exc


def _dms_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(code, message)`` from ``{"error": {"code", "message"}}``, or ``(None, <text>)`` from a plain string error."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return (str(code) if code else None), (str(message) if message else None)
    if isinstance(error, str) and error:
        return None, error
    return None, None
