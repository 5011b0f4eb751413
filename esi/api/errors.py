"""Every error the API answers has one JSON shape: `{"error": {"code": ..., "message": ..., "details": [...]}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, details: list[Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)


def internal_error_response() -> JSONResponse:
    """A 500 that tells nothing of the failure (the server logs it)."""
    return JSONResponse(error_body("internal_error", "internal error; the service log has the details"),
                        status_code=500)


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "(body)", "problem": e.get("msg", "")}
            for e in errors]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        message = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        return JSONResponse(error_body("validation_error", message, details), status_code=422)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises it afterwards, so the server logs the traceback
        return internal_error_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
