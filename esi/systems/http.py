"""HTTP plumbing shared by the external systems' clients: one place that turns httpx failures into ours."""

from __future__ import annotations

import contextlib
import email.utils
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

import httpx

from esi.errors import BusinessError, NotFound, PermanentError, TransientError
from esi.security.tls import http_verify

#: statuses that a later retry may cure
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@contextlib.contextmanager
def translate_transport_errors(system: str, operation: str) -> Iterator[None]:
    """Turn httpx's timeouts and connection failures into `TransientError`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        import aiohttp  # here, not at the top: the 1C process imports this module and has no use for aiohttp

        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
            # httpx-aiohttp maps every aiohttp connection error (refused, reset, the server hanging up) to
            # ConnectTimeout; only aiohttp's own timeouts are timeouts
            raise _connection_failed(system, operation, cause) from exc
        raise TransientError(
            f"{system} {operation}: timed out ({type(exc).__name__})", code="timeout", system=system
        ) from exc
    except httpx.TransportError as exc:
        raise _connection_failed(system, operation, exc) from exc


def _connection_failed(system: str, operation: str, exc: BaseException) -> TransientError:
    return TransientError(
        f"{system} {operation}: connection failed ({type(exc).__name__}: {exc})", code="connection_error", system=system
    )


def error_for_status(response: httpx.Response, *, system: str, operation: str, detail: str | None = None) -> Exception:
    """The esi error an unexpected HTTP status stands for (the caller raises it)."""
    status = response.status_code
    text = detail or _short_body(response)
    message = f"{system} {operation}: HTTP {status}" + (f": {text}" if text else "")
    if status in TRANSIENT_STATUSES or status >= 500:
        return TransientError(
            message, code=f"http_{status}", system=system, retry_after=retry_after(response.headers.get("retry-after"))
        )
    if status == 404:
        return NotFound(message, code="not_found", system=system)
    if status in (409, 422):
        return BusinessError(message, code=f"http_{status}", system=system)
    return PermanentError(message, code=f"http_{status}", system=system)


#: the longest `Retry-After` honoured: a system asking for more gets the ladder's last rung and its dead letter
MAX_RETRY_AFTER_S = 24 * 3600.0


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (RFC 9110: delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _short_body(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001  # pragma: no cover - undecodable body
        return ""
    text = " ".join(text.split())
    return text[:limit]


def fast_transport(*, verify: ssl.SSLContext | bool = True, max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """httpx's API over aiohttp's connection handling (httpx-aiohttp).

    `verify` is what `esi.security.tls.http_verify` gives: `True` (the default trust store) or a context trusting a
    named CA bundle. httpx's own pool costs several times the CPU per request (docs/performance.md).
    aiohttp's cookie jar is off so that cookies live in one place, the httpx client's.
    """
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    from esi import tracing

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, ssl=verify, keepalive_timeout=30)
        # with tracing on, a CLIENT span per request (esi.tracing); off, no hooks at all
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=tracing.aiohttp_trace_configs() or None,
        )

    return AiohttpTransport(client=session)


def default_transport(*, ca_bundle: str | None = None, max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """The transport of every external system's client: aiohttp's sockets, TLS as `http_verify` allows it."""
    return fast_transport(verify=http_verify(ca_bundle), max_connections=max_connections)


def http_client(
    *,
    base_url: str,
    timeout: float,
    ca_bundle: str | None = None,
    max_connections: int = 100,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """The one way esi builds an HTTP client for an external system (`options`: httpx.AsyncClient's own)."""
    if transport is None:
        transport = default_transport(ca_bundle=ca_bundle, max_connections=max_connections)
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout), transport=transport, **options)


#: (aiohttp, its httpx transport class, its error mapping), imported on the first call (the 1C process makes none):
#: an import statement on every call costs its lookups every time
_AIOHTTP: tuple[Any, Any, Any] | None = None


def _aiohttp_parts() -> tuple[Any, Any, Any]:
    global _AIOHTTP
    if _AIOHTTP is None:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport
        from httpx_aiohttp.transport import map_aiohttp_exceptions

        _AIOHTTP = (aiohttp, AiohttpTransport, map_aiohttp_exceptions)
    return _AIOHTTP


class HttpAnswer(Protocol):
    """What a hot call reads of an answer: an `httpx.Response`, or an `Answer`."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def is_success(self) -> bool: ...


class Answer:
    """An answer read whole by aiohttp, as it came (no content-encoding to undo): building an `httpx.Response` from
    it cost a fortieth of the DMS adapter's CPU per call (docs/performance.md). `response()` builds one for the
    error paths, which read its text, JSON and `Retry-After`."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # aiohttp's, case-insensitive
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def response(self) -> httpx.Response:
        return httpx.Response(self.status_code, headers=list(self.headers.items()), content=self.content)


def as_response(answer: HttpAnswer) -> httpx.Response:
    """`answer` as an `httpx.Response` (for the error paths)."""
    return answer if isinstance(answer, httpx.Response) else cast(Answer, answer).response()


async def send_and_read(
    transport: httpx.AsyncBaseTransport,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: bytes,
    timeout: dict[str, float | None],  # noqa: ASYNC109 - httpx's per-phase timeouts, passed to the transport
) -> HttpAnswer:
    """Send a request through `transport` itself (not a client's `send`) and read the whole answer.

    On the aiohttp transport (`fast_transport`) aiohttp sends it and reads the body in one call: building an
    `httpx.Request` and reading through httpx's async byte stream were most of what httpx added to the DMS call in
    the profile (docs/performance.md). Any other
    transport gets an `httpx.Request` as usual. `timeout` is httpx's per-phase dict (`httpx.Timeout.as_dict()`),
    and failures leave as httpx's errors, mapped as the transport maps them.
    """
    aiohttp, aiohttp_transport, map_aiohttp_exceptions = _aiohttp_parts()
    if not isinstance(transport, aiohttp_transport):
        request = httpx.Request(method, url, headers=headers, content=content, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response
    if not isinstance(transport.client, aiohttp.ClientSession):
        transport.client = transport.get_client()  # as the transport does on its first request
    with map_aiohttp_exceptions():
        async with transport.client.request(
            method,
            url,
            headers=headers,
            data=content or None,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
            timeout=aiohttp.ClientTimeout(
                sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
            ),
        ) as answer:
            body = await answer.read()
    if "Content-Encoding" in answer.headers:
        # decoded by httpx here, as it would be by the stream; the answer carries no request
        return httpx.Response(answer.status, headers=answer.raw_headers, content=body)
    return Answer(answer.status, answer.headers, body)
