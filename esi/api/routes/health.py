"""Health and metrics: `GET /livez` (and its alias `/healthz`), `/readyz`, `/metrics`, served without credentials
(they hold none) by the 1C API and by the small HTTP port of adapter-only processes."""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from esi import metrics
from esi.api.deps import ReadyCheck
from esi.api.responses import READINESS
from esi.api.routes.table import Route

__all__ = ["HealthRoutes"]


class HealthRoutes:
    """The routes every process serves; `readiness` checks its dependencies (None: nothing to check)."""

    def __init__(self, readiness: ReadyCheck | None) -> None:
        self._readiness = readiness

    def routes(self) -> list[Route]:
        return [
            # the probes as Kubernetes names them: /livez (liveness) and /readyz; /healthz stays as an alias
            Route("GET", "/livez", "livez", self.healthz, "The process lives (liveness)", authenticated=False),
            Route(
                "GET",
                "/healthz",
                "healthz",
                self.healthz,
                "The process lives (an alias of /livez)",
                authenticated=False,
            ),
            Route(
                "GET",
                "/readyz",
                "readyz",
                self.readyz,
                "The service can do its job: one entry per dependency",
                authenticated=False,
                responses=READINESS,
            ),
            Route(
                "GET",
                "/metrics",
                "prometheus",
                self.prometheus,
                "Prometheus metrics",
                authenticated=False,
                include_in_schema=False,
            ),
        ]

    async def healthz(self, request: Request) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self, request: Request) -> JSONResponse:
        if self._readiness is None:
            return JSONResponse({"status": "ready", "checks": {}})
        ready, checks = await self._readiness()
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
