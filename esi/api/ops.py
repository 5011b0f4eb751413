"""Health and metrics endpoints, served by the 1C API and by a small HTTP port on adapter-only processes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esi.api import TELEMETRY_OFF
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


class HttpMetrics:
    """Pure ASGI middleware counting and timing every request by its route template (never by raw path: ids would
    explode the labels). Starlette's BaseHTTPMiddleware costs a task group and a stream per request; this does not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.HTTP_REQUESTS.labels(template, method, str(status)).inc()
            metrics.HTTP_DURATION.labels(template, method).observe(time.perf_counter() - started)


def install_http_metrics(app: FastAPI) -> None:
    app.add_middleware(HttpMetrics)


def create_ops_app(readiness: ReadyCheck | None) -> FastAPI:
    app = FastAPI(title="esi adapter", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF)
    install_http_metrics(app)
    app.include_router(ops_router(readiness))
    return app
