"""The small HTTP app of adapter-only processes: health and metrics (esi.api.routes.health), nothing else."""

from __future__ import annotations

from fastapi import FastAPI

from esi.api import TELEMETRY_OFF
from esi.api.deps import ReadyCheck
from esi.api.hot import HotPath
from esi.api.routes.health import HealthRoutes
from esi.api.routes.table import add_routes

__all__ = ["ReadyCheck", "create_health_app"]


def create_health_app(readiness: ReadyCheck | None) -> FastAPI:
    """`GET /livez` (`/healthz`), `/readyz` and `/metrics`, without docs; requests are counted as the API's are."""
    app = FastAPI(title="esi adapter", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF)
    add_routes(app, HealthRoutes(readiness).routes())
    app.add_middleware(HotPath)  # no hot routes: it only records the metrics
    return app
