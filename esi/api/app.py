"""The HTTP API for 1C (FastAPI), assembled from its route table. OpenAPI at /docs.

`create_app` builds the table from the routes of each concern (esi.api.routes), registers it with FastAPI, and puts
the fast path (esi.api.hot) in front, serving the hot routes from the same table. Pages built on the API (the
operator console) are routers the composition root adds (`Api.include_pages`): the API knows none of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from fastapi import APIRouter, FastAPI
from starlette.types import Receive, Scope, Send

from esi.api import TELEMETRY_OFF
from esi.api.auth import Authenticator
from esi.api.deps import ApiDeps
from esi.api.errors import install_error_handlers
from esi.api.hot import HotPath
from esi.api.routes.contracts import ContractRoutes
from esi.api.routes.dead_letters import DeadLetterRoutes
from esi.api.routes.events import EventRoutes
from esi.api.routes.health import HealthRoutes
from esi.api.routes.requests import RequestRoutes
from esi.api.routes.systems import SystemsRoutes
from esi.api.routes.table import Route, add_routes
from esi.security.throttle import TrustedProxies

__all__ = ["Api", "ApiDeps", "build_routes", "create_app"]


def build_routes(deps: ApiDeps) -> list[Route]:
    """The API's route table, in the order of the OpenAPI document."""
    return [
        *HealthRoutes(deps.readiness).routes(),
        *RequestRoutes(deps).routes(),
        *DeadLetterRoutes(deps.dead_letters, deps.store, deps.registry.catalog if deps.registry else None).routes(),
        *SystemsRoutes(deps.store, deps.registry).routes(),
        *ContractRoutes(deps.registry, deps.topology).routes(),
        *EventRoutes(deps.registry, deps.store, deps.sink, dict(deps.system_settings or {})).routes(),
    ]


class Api(FastAPI):
    """FastAPI with the fast path (esi.api.hot) in front of its whole middleware stack: what the fast path answers
    skips FastAPI's and Starlette's layers on the way in and on the way out (the server error, body limit and
    telemetry middlewares wrap each `send`: a few percent of the API's CPU); anything else goes through them as
    before."""

    hot: HotPath | None = None
    #: who is calling: the API's own authentication, for the pages served beside it (`include_pages`)
    authenticator: Authenticator

    def include_pages(self, router: Callable[[ApiDeps, Authenticator], APIRouter], deps: ApiDeps) -> None:
        """Serve `router(deps, authenticator)` beside the API's routes (never on the fast path): a console."""
        self.include_router(router(deps, self.authenticator))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it, for the endpoints the fast path calls
        await self.hot(scope, receive, send)


def create_app(deps: ApiDeps) -> Api:
    """The 1C API over `deps`; its route table is `app.state.routes`."""
    app = Api(
        title="esi — Enterprise System Integration",
        description="Send requests from 1C to the DMS and the CRM, and read their outcome.",
        version="0.1.0",
        telemetry=TELEMETRY_OFF,
    )
    install_error_handlers(app)
    # the document alone (the docs site, the schema tests) is built without a store: nothing to audit then
    audit = deps.store.audit.record if deps.store is not None else None
    auth = Authenticator(deps.clients, trusted_proxies=TrustedProxies(deps.trusted_proxies), audit=audit)
    routes = build_routes(deps)
    add_routes(app, routes, auth.dependency)
    app.state.routes = routes
    app.authenticator = auth
    # outermost: what it answers skips FastAPI's middlewares, routing and dependencies
    app.hot = HotPath(
        functools.partial(FastAPI.__call__, app), routes=routes if deps.hot_path else (), authenticate=auth.authenticate
    )
    return app
