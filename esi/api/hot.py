"""The API's hot path: the requests 1C makes all day, served without FastAPI's routing and dependency machinery.

Profiled under load, FastAPI's and Starlette's layers (routing, dependency solving, parameter validation, the
exception and exit-stack middlewares) took half of what the 1C process spent on HTTP, more than the endpoints
themselves. This pure ASGI middleware answers the well-formed common cases of three routes itself, calling the very
functions the FastAPI endpoints call:

- `POST /send_to_dms`, `POST /send_to_crm`;
- `GET /requests/{request_id}` with no query, or with `wait=<seconds>` alone, within its bounds.

Anything else — another route or method, a query it does not recognise, a value out of bounds — goes on to FastAPI,
which validates and answers it as it always did (the 422s come from there). The FastAPI routes stay the documented
ones (OpenAPI), and the behaviour is the same either way: tests drive both.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from esi import metrics
from esi.api.errors import ApiError, error_response, internal_error_response

log = logging.getLogger(__name__)

#: `wait=` values answered here: a plain decimal number (FastAPI takes the rest: exponents, signs, junk → 422)
_WAIT = re.compile(rb"wait=(\d{1,3}(?:\.\d{1,6})?)")
_REQUEST_PREFIX = "/requests/"


@dataclass(frozen=True)
class HotRoutes:
    #: path → endpoint for the POSTs served here (e.g. "/send_to_dms")
    posts: dict[str, Callable[[Request], Awaitable[Response]]]
    #: `GET /requests/{request_id}` with its `wait`
    get_request: Callable[[Request, str, float], Awaitable[Response]]
    #: the bounds FastAPI's route declares: past them, FastAPI answers (422)
    max_request_id: int
    max_wait: float


class HotPath:
    def __init__(self, app: ASGIApp, routes: HotRoutes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method = scope["method"]
            path: str = scope["path"]
            if method == "POST":
                endpoint = self.routes.posts.get(path)
                if endpoint is not None:
                    await self._serve(path, method, endpoint(Request(scope, receive)), scope, receive, send)
                    return
            elif method == "GET" and path.startswith(_REQUEST_PREFIX):
                request_id = path[len(_REQUEST_PREFIX):]
                wait = self._wait(scope["query_string"])
                if (wait is not None and request_id and "/" not in request_id
                        and len(request_id) <= self.routes.max_request_id):
                    response = self.routes.get_request(Request(scope, receive), request_id, wait)
                    await self._serve("/requests/{request_id}", method, response, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _wait(self, query: bytes) -> float | None:
        """The `wait` of a query this path answers (0 when there is no query); None sends it on to FastAPI."""
        if not query:
            return 0.0
        match = _WAIT.fullmatch(query)
        if match is None:
            return None
        wait = float(match.group(1))
        return wait if wait <= self.routes.max_wait else None

    @staticmethod
    async def _serve(template: str, method: str, pending: Awaitable[Response], scope: Scope, receive: Receive,
                     send: Send) -> None:
        started = time.perf_counter()
        try:
            response = await pending
        except ApiError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("unhandled error serving %s %s", method, template)
            response = internal_error_response()
        try:
            await response(scope, receive, send)
        finally:
            metrics.HTTP_REQUESTS.labels(template, method, str(response.status_code)).inc()
            metrics.HTTP_DURATION.labels(template, method).observe(time.perf_counter() - started)
