"""The API's outermost layer: the fast path for the hot routes, and the one place HTTP metrics are recorded.

FastAPI's and Starlette's layers (routing, dependency solving, parameter validation, the exception and exit-stack
middlewares) cost more CPU than the endpoints themselves (figures: docs/performance.md). So this pure ASGI
middleware answers the well-formed common cases of the routes the route table marks `hot`
(esi.api.routes.table), calling their handlers with the principal `authenticate` gives — the very handlers and
authentication FastAPI's routes use:

- a hot route with a static path (`POST /send_to_dms`, `POST /send_to_crm`): every request;
- a hot route ending in one path parameter, with at most one numeric query parameter (`GET /requests/{request_id}`
  and its `wait`): a value within the declared `max_length`, and either no query or `<name>=<plain decimal>` alone,
  within the declared bounds.

Anything else — another route or method, a query it does not recognise, a value out of bounds — goes on to FastAPI,
which validates and answers it as it always did (the 422s come from there). Either way the request is counted and
timed here, once, by its route template.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from annotated_types import Ge, Le, MaxLen
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esi import metrics, tracing
from esi.api.errors import ApiError, error_response, held, internal_error_response, store_unavailable
from esi.api.routes.table import Route
from esi.errors import StoreUnavailable
from esi.security.scopes import Principal

__all__ = ["HotPath", "record_request"]

log = logging.getLogger(__name__)

#: a path template the fast path can match: a static prefix, then one parameter at the end
_TEMPLATE = re.compile(r"([^{}]*/)\{(\w+)\}")


def record_request(template: str, method: str, status: int, started: float) -> None:
    """Count and time one request by its route template (never its raw path: ids would explode the labels)."""
    metrics.child(metrics.HTTP_REQUESTS, template, method, str(status)).inc()
    metrics.child(metrics.HTTP_DURATION, template, method).observe(time.perf_counter() - started)
    if tracing.enabled:
        tracing.answered(template, method, status)


class _Template:
    """A hot route whose path ends in a parameter: matches a path and a query, giving the handler's arguments, or
    None when FastAPI must answer."""

    __slots__ = ("convert", "default", "high", "max_length", "method", "prefix", "query", "route")

    def __init__(self, route: Route) -> None:
        match = _TEMPLATE.fullmatch(route.path)
        if match is None or not route.params or route.params[0].name != match.group(2) or len(route.params) > 2:
            raise ValueError(
                f"the fast path serves a path ending in its first parameter, and at most one query "
                f"parameter after it, not {route.method} {route.path}"
            )
        self.route = route
        self.method = route.method
        self.prefix = match.group(1)
        self.max_length = _bound(route.params[0].declaration, MaxLen, "max_length", default=1 << 30)
        self.query: re.Pattern[bytes] | None = None
        self.default: Any = None
        self.convert: Callable[[bytes], Any] = float
        self.high: Any = None
        if len(route.params) == 2:
            param = route.params[1]
            declaration = param.declaration
            if param.annotation not in (int, float) or _bound(declaration, Ge, "ge", default=None) not in (0, None):
                raise ValueError(f"the fast path reads a non-negative int or float query parameter, not {param}")
            self.high = _bound(declaration, Le, "le", default=None)
            if self.high is None or declaration.is_required():
                raise ValueError(
                    f"the fast path needs a default and an upper bound (le) on {param.name} of {route.path}"
                )
            self.convert = param.annotation
            self.default = self.convert(declaration.default)
            # a plain decimal, within the digits the bound allows: FastAPI reads the rest (exponents, signs, junk)
            digits = rf"\d{{1,{len(str(int(self.high)))}}}"
            number = digits + (r"(?:\.\d{1,6})?" if param.annotation is float else "")
            self.query = re.compile(rf"{re.escape(param.name)}=({number})".encode())

    def match(self, path: str, query: bytes) -> tuple[Any, ...] | None:
        value = path[len(self.prefix) :]
        if not value or "/" in value or len(value) > self.max_length:
            return None
        if not query:
            return (value,) if self.query is None else (value, self.default)
        if self.query is None:
            return None
        found = self.query.fullmatch(query)
        if found is None:
            return None
        number = self.convert(found.group(1))
        return (value, number) if number <= self.high else None


def _bound(declaration: Any, kind: type, attribute: str, *, default: Any) -> Any:
    return next((getattr(m, attribute) for m in getattr(declaration, "metadata", ()) if isinstance(m, kind)), default)


class HotPath:
    """Pure ASGI middleware in front of FastAPI: serves the hot `routes` itself (see the module), passes the rest on,
    and records the metrics of both (`record_request`)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[Route] = (),
        authenticate: Callable[[Request], Awaitable[Principal]] | None = None,
    ) -> None:
        self.app = app
        self._authenticate = authenticate
        #: path → method → route, for hot routes with a static path
        self._static: dict[str, dict[str, Route]] = {}
        self._templates: list[_Template] = []
        for route in routes:
            if not route.hot:
                continue
            if not route.authenticated or authenticate is None:
                raise ValueError(f"the fast path serves authenticated routes, with `authenticate`: {route.path}")
            if "{" in route.path:
                self._templates.append(_Template(route))
            elif route.params:
                raise ValueError(f"the fast path serves static paths without parameters: {route.path}")
            else:
                self._static.setdefault(route.path, {})[route.method] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if tracing.enabled and scope["path"] not in tracing.UNTRACED_PATHS:  # a SERVER span (esi.tracing)
            with tracing.serving(scope):
                await self._route(scope, receive, send)
            return
        await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope.get("root_path"):
            method = scope["method"]
            path: str = scope["path"]
            methods = self._static.get(path)
            if methods is not None:
                route = methods.get(method)
                if route is not None:
                    await self._serve(route, (), scope, receive, send)
                    return
            for template in self._templates:
                if method == template.method and path.startswith(template.prefix):
                    args = template.match(path, scope["query_string"])
                    if args is not None:
                        await self._serve(template.route, args, scope, receive, send)
                        return
        await self._forward(scope, receive, send)

    async def _serve(self, route: Route, args: tuple[Any, ...], scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        response: Response
        try:
            response = await route.handler(request, await self._authenticate(request), *args)  # type: ignore[misc]
        except StoreUnavailable as exc:
            response = error_response(store_unavailable(exc))
        except ApiError as exc:
            await held(exc)
            response = error_response(exc)
        except Exception:
            log.exception("unhandled error serving %s %s", route.method, route.path)
            response = internal_error_response()
        try:
            await response(scope, receive, send)
        finally:
            record_request(route.path, route.method, response.status_code, started)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI answers; the template is the route it matched (`unmatched` for none), the status what it sent
        (500 when it sent nothing)."""
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
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            record_request(template, scope.get("method", ""), status, started)
