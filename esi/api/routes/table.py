"""The API's route table: each route declared once, as data, and served from it by FastAPI and the fast path.

A `Route` names its method, path, handler, parameters (with their FastAPI declarations: bounds, defaults,
descriptions), OpenAPI bits and the errors it answers (`refusals`: esi.api.responses). `add_routes` registers every
route with FastAPI, which validates, documents and serves it; `esi.api.hot.HotPath` answers the routes marked `hot`
itself, from the same descriptors, calling the same handlers, and leaves anything it cannot check exactly as FastAPI
would to FastAPI.

A handler is `async handler(request, principal, *params)` — `handler(request, *params)` for a route that needs no
credentials — its parameters named and ordered as `Route.params`; it returns a `Response`, or what FastAPI
serialises.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request

from esi.api.responses import (
    AUTHENTICATION,
    INTERNAL_ERROR,
    INVALID_PARAMETERS,
    STORE_UNAVAILABLE,
    UNREADABLE_BODY,
    Refusal,
    refusals,
)
from esi.security.scopes import Principal

__all__ = ["Endpoint", "Param", "Route", "add_routes"]

#: what serves a route: `async endpoint(request, principal, *params)` (the bus has its own kind of handler: a
#: message type's, `esi.messages.Handler`)
Endpoint = Callable[..., Awaitable[Any]]
_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """A parameter of a route: its name, its type, and how FastAPI reads it (`fastapi.Path(...)`, `Query(...)`;
    nothing for a pydantic body). The fast path reads the same declaration for its bounds."""

    name: str
    annotation: Any
    declaration: Any = _EMPTY


@dataclass(frozen=True)
class Route:
    """One HTTP route: what both FastAPI and the fast path serve it from."""

    method: str
    path: str
    #: the operation's name (FastAPI derives the OpenAPI operationId from it and the path)
    name: str
    handler: Endpoint
    summary: str
    params: tuple[Param, ...] = ()
    #: answered by the fast path when a request is one it can check exactly as FastAPI would
    hot: bool = False
    #: the handler gets the caller's principal (a 401 comes first without credentials)
    authenticated: bool = True
    #: the OpenAPI description; the handler's docstring when not given
    description: str | None = None
    status_code: int | None = None
    response_model: Any = None
    #: what it answers besides its status_code (FastAPI's `responses=`): its other successes
    responses: Mapping[int | str, Any] | None = None
    #: the errors its handler answers (esi.api.responses); `add_routes` adds those of the layers around it:
    #: authentication (401, 429) when `authenticated`, the parameters' validation (422) when it has `params`, the
    #: body's parsing (400) when one is a body model, the 500
    refusals: tuple[Refusal, ...] = ()
    openapi_extra: Mapping[str, Any] | None = None
    include_in_schema: bool = True


def add_routes(
    app: FastAPI, routes: Iterable[Route], principal: Callable[..., Awaitable[Principal]] | None = None
) -> None:
    """Register `routes` with FastAPI, in order; `principal` is the dependency giving authenticated handlers their
    caller (`esi.api.auth.Authenticator.dependency`)."""
    for route in routes:
        target = _function(route.handler)
        extra: dict[str, Any] = {}
        if route.response_model is not None:
            extra["response_model"] = route.response_model
        app.add_api_route(
            route.path,
            _endpoint(route, principal),
            methods=[route.method],
            name=route.name,
            summary=route.summary,
            description=route.description or inspect.cleandoc(target.__doc__ or ""),
            status_code=route.status_code,
            responses={**(route.responses or {}), **refusals(*_refusals(route))},
            openapi_extra=dict(route.openapi_extra) if route.openapi_extra else None,
            include_in_schema=route.include_in_schema,
            **extra,
        )


def _refusals(route: Route) -> tuple[Refusal, ...]:
    """Every error `route` can answer: its handler's, then those of the layers around it."""
    return (
        *route.refusals,
        *(AUTHENTICATION if route.authenticated else ()),
        *((INVALID_PARAMETERS,) if route.params else ()),
        *((UNREADABLE_BODY,) if any(p.declaration is _EMPTY for p in route.params) else ()),
        STORE_UNAVAILABLE,
        INTERNAL_ERROR,
    )


def _function(handler: Endpoint) -> Any:
    return handler.func if isinstance(handler, functools.partial) else handler


def _endpoint(route: Route, principal: Callable[..., Awaitable[Principal]] | None) -> Endpoint:
    """A FastAPI endpoint calling `route.handler`, its signature built from the route's parameters: FastAPI reads
    the parameters (and, without a `response_model`, the response's schema from the return type) from it."""
    handler = route.handler
    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    if route.authenticated:
        if principal is None:
            raise ValueError(f"{route.method} {route.path} needs credentials, and no principal dependency was given")
        parameters.append(
            inspect.Parameter(
                "principal", inspect.Parameter.KEYWORD_ONLY, annotation=Principal, default=Depends(principal)
            )
        )
    parameters += [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=p.annotation, default=p.declaration)
        for p in route.params
    ]
    returns = typing.get_type_hints(_function(handler)).get("return", inspect.Signature.empty)

    async def endpoint(**values: Any) -> Any:
        return await handler(**values)

    endpoint.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    endpoint.__name__ = route.name
    return endpoint
