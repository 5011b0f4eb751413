"""Health and metrics endpoints, served by the 1C API and by a small HTTP port on adapter-only processes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from esi import metrics

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def ops_router(readiness: ReadyCheck | None) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="The process lives")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The service can do its job: one entry per dependency")
    async def readyz() -> JSONResponse:
        if readiness is None:
            return JSONResponse({"status": "ready", "checks": {}})
        ready, checks = await readiness()
        return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                            status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def install_http_metrics(app: FastAPI) -> None:
    """Count and time every request by its route template (never by raw path: ids would explode the labels)."""

    @app.middleware("http")
    async def measure(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(template, request.method, str(status)).inc()
            metrics.HTTP_DURATION.labels(template, request.method).observe(time.perf_counter() - started)


def create_ops_app(readiness: ReadyCheck | None) -> FastAPI:
    app = FastAPI(title="esi adapter", docs_url=None, redoc_url=None, openapi_url=None)
    install_http_metrics(app)
    app.include_router(ops_router(readiness))
    return app
