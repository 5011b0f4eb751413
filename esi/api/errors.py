"""Every error the API answers has one JSON shape: `{"error": {"code": ..., "message": ..., "details": [...]}}`.

This module is the one place that shapes it: `error_response` turns an `ApiError` into its response, and every other
failure — a request FastAPI's validation refused, a 404 or 405 from routing, an unhandled exception — is first put
as an `ApiError` (the 500 without details), on the fast path (esi.api.hot) and through FastAPI alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from esi.errors import ApiError, StoreUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "error_body",
    "error_response",
    "held",
    "install_error_handlers",
    "internal_error_response",
    "validation_details",
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable `code`, a message for people, and, for some codes, the details."""

    code: str = Field(description="stable and machine-readable: branch on it (`unauthorized`, `validation_error`, ...)")
    message: str = Field(description="for people: what was refused and why")
    details: list[Any] = Field(
        default_factory=list,
        description=(
            "only when there are some: for `validation_error` one `{field, problem}` per problem, for "
            "`quota_exceeded` the quota that was reached"
        ),
    )


class ErrorBody(BaseModel):
    """The body of every error the API answers (`error_body` builds it)."""

    error: ErrorDetail


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """The JSON body of an error (`details` only when there are some)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


#: the longest a 429 is held before it is answered (its Retry-After, at most this): a client stuck in a loop that
#: ignores Retry-After — over its quota, or signing in with a wrong password again and again — gets one answer per
#: connection per hold, not thousands a second, so refusing it costs the process next to nothing and the other
#: clients keep their latency (docs/security.md)
REFUSAL_HOLD_S = 1.0


#: the shortest hold, as a share of the full one: each hold is drawn between the two
REFUSAL_HOLD_MIN_SHARE = 0.5


async def held(exc: ApiError) -> None:
    """Hold a refusal with 429 (only those) for its Retry-After, `REFUSAL_HOLD_S` at most: a tarpit for callers
    that do not wait. Called where an error becomes a response (the fast path and FastAPI's handler), once.

    Each hold is drawn between half and all of that (jitter): a runaway client's connections, refused together when
    its quota ran out, would otherwise all come back together one hold later, find the bucket refilled and spend it
    at once — a burst of accepted work every second, during which every other client waits (section `fairness` of
    the benchmark measured its p99 doubled). Spread out, they come back one by one and its accepted requests are
    spread over the second as its rate says."""
    if exc.status != 429:
        return
    retry_after = (exc.headers or {}).get("Retry-After", "")
    full = min(REFUSAL_HOLD_S, float(retry_after)) if retry_after.isdigit() else REFUSAL_HOLD_S
    await asyncio.sleep(full * random.uniform(REFUSAL_HOLD_MIN_SHARE, 1.0))  # noqa: S311 - jitter, not a secret


def error_response(exc: ApiError) -> JSONResponse:
    """The response to a refused request."""
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)


def internal_error_response() -> JSONResponse:
    """A 500 that tells nothing of the failure (the server logs it)."""
    return error_response(ApiError(500, "internal_error", "internal error; the service log has the details"))


def validation_details(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as `{"field", "problem"}` pairs, the field a dotted path without the leading `body`."""
    return [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "(body)", "problem": e.get("msg", "")}
        for e in errors
    ]


def _validation_error(exc: RequestValidationError) -> ApiError:
    details = validation_details(list(exc.errors()))
    message = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
    return ApiError(422, "validation_error", message, details=details)


def _http_error(exc: StarletteHTTPException) -> ApiError:
    return ApiError(
        exc.status_code,
        _HTTP_CODES.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=getattr(exc, "headers", None),
    )


#: how long a caller is asked to wait when the store does not answer (a restart takes seconds)
STORE_RETRY_AFTER_S = 1


_last_store_warning = 0.0


def store_unavailable(exc: StoreUnavailable) -> ApiError:
    """The 503 of a request the store could not take: nothing was stored (its transaction did not commit). Logged
    once per ten seconds, not per request: an outage of the database is one event."""
    global _last_store_warning
    now = time.monotonic()
    if now - _last_store_warning >= 10:
        _last_store_warning = now
        log.warning("the store does not answer; answering 503 store_unavailable: %s", exc.message)
    return ApiError(
        503,
        "store_unavailable",
        f"the store does not answer; retry after {STORE_RETRY_AFTER_S} s",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StoreUnavailable):
        return error_response(store_unavailable(exc))
    if isinstance(exc, ApiError):
        await held(exc)
        return error_response(exc)
    if isinstance(exc, RequestValidationError):
        return error_response(_validation_error(exc))
    if isinstance(exc, StarletteHTTPException):
        return error_response(_http_error(exc))
    # Starlette still re-raises it afterwards, so the server logs the traceback
    return internal_error_response()


def install_error_handlers(app: FastAPI) -> None:
    """Have FastAPI answer every error in the JSON shape."""
    for kind in (ApiError, StoreUnavailable, RequestValidationError, Exception, StarletteHTTPException):
        app.add_exception_handler(kind, _handle)
