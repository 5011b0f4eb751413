"""HTTP plumbing shared by the external systems' clients: one place that turns httpx failures into ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from esi.errors import BusinessError, NotFound, PermanentError, TransientError

#: statuses that a later retry may cure
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@contextlib.contextmanager
def translate_transport_errors(system: str, operation: str) -> Iterator[None]:
    """Turn httpx's timeouts and connection failures into `TransientError`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransientError(f"{system} {operation}: timed out ({type(exc).__name__})", code="timeout", system=system) from exc
    except httpx.TransportError as exc:
        raise TransientError(
            f"{system} {operation}: connection failed ({type(exc).__name__}: {exc})", code="connection_error", system=system
        ) from exc


def error_for_status(response: httpx.Response, *, system: str, operation: str, detail: str | None = None) -> Exception:
    """The esi error an unexpected HTTP status stands for (the caller raises it)."""
    status = response.status_code
    text = detail or _short_body(response)
    message = f"{system} {operation}: HTTP {status}" + (f": {text}" if text else "")
    if status in TRANSIENT_STATUSES or status >= 500:
        return TransientError(message, code=f"http_{status}", system=system)
    if status == 404:
        return NotFound(message, code="not_found", system=system)
    if status in (409, 422):
        return BusinessError(message, code=f"http_{status}", system=system)
    return PermanentError(message, code=f"http_{status}", system=system)


def _short_body(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # pragma: no cover - undecodable body
        return ""
    text = " ".join(text.split())
    return text[:limit]


def fast_transport(*, verify: bool | str = True, max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """httpx's API over aiohttp's connection handling (httpx-aiohttp).

    Measured here against the fake DMS, 2,000 POSTs at concurrency 64: httpx's own transport cost 5.6 ms of CPU per
    request (its pool inspects every pooled connection on each request), this one 0.9 ms. The clients still speak
    httpx (requests, responses, cookies, errors); only the sockets are aiohttp's. aiohttp's own cookie jar is
    disabled so that cookies live in one place, the httpx client's.
    """
    import ssl

    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    if verify is True:
        context: ssl.SSLContext | bool = ssl.create_default_context()
    elif isinstance(verify, str):
        context = ssl.create_default_context(cafile=verify)
    else:
        context = False

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, ssl=context, keepalive_timeout=30)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return AiohttpTransport(client=session)
