"""`GET /asyncapi.json`: the AsyncAPI 3.0 document of the bus the API's systems make (esi.contracts), served
without credentials, as FastAPI serves `/openapi.json`: it describes the interface, it holds no data."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from esi.api.routes.table import Route
from esi.bus.topology import Topology
from esi.systems.registry import Registry

__all__ = ["ContractRoutes"]


class ContractRoutes:
    def __init__(self, registry: Registry, topology: Topology | None = None) -> None:
        self._registry = registry
        self._topology = topology
        self._document: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/asyncapi.json",
                "asyncapi",
                self.asyncapi,
                "The AsyncAPI 3.0 document of the bus: routing keys, who sends and receives, message schemas",
                authenticated=False,
            )
        ]

    async def asyncapi(self, request: Request) -> JSONResponse:
        if self._document is None:  # built once, on first use: the registry does not change while the API runs
            from esi.contracts.asyncapi import build_asyncapi

            self._document = build_asyncapi(self._registry, self._topology)
        return JSONResponse(self._document)
