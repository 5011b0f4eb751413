"""The Creatio session: who the bus is to Creatio, and the one authenticated request every call goes through.

An `Authenticator` is one way of authenticating: it obtains a `Credential` (what a call carries: cookies, a token),
says whether a response shows that credential has gone stale, and renews it once however many concurrent callers
noticed — the first logs in again, the others wait for it and use its result. `CookieLogin` (in `cookie_login`) is
Creatio's forms login; `ClientCredentials` (in `oauth`) the OAuth 2.0 client-credentials grant, whose bearer token
is also renewed ahead of its expiry (`Authenticator.due`).

`CreatioSession.call` sends one request with the current credential; when the answer says the credential expired it
renews it and retries once, and it translates every other failure into `esi.errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from typing import Any, Generic, Literal, TypeVar

import httpx

from esi.errors import SessionExpired
from esi.systems.http import error_for_status, http_client, translate_transport_errors

logger = logging.getLogger(__name__)

SYSTEM = "crm"
ODATA_CONTENT_TYPE = "application/json; charset=utf-8; IEEE754Compatible=true"

#: what a 2xx answer should hold: JSON data, nothing (204), or any bytes (a download)
Expect = Literal["json", "empty", "bytes"]


class Credential(ABC):
    """What one login produced and every call carries until it expires."""

    #: which login produced it: a renewal compares generations to see whether another caller already renewed
    generation: int

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """The headers a call carries to be authenticated (cookies, CSRF token, `Authorization`...)."""


C = TypeVar("C", bound=Credential)


class Authenticator(ABC, Generic[C]):
    """One way of authenticating to Creatio, with the renewal that concurrent callers share.

    Subclasses implement `_obtain` (the network login) and `is_expired`; `absorb` may keep a refresh the server
    sends along with an ordinary answer.
    """

    def __init__(self) -> None:
        self._current: C | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    @abstractmethod
    async def _obtain(self, generation: int) -> C:
        """Log in now and return the new credential, numbered `generation`; raises an `esi.errors` error."""

    @abstractmethod
    def is_expired(self, response: httpx.Response, expect: Expect) -> str | None:
        """Why `response` says the credential is no longer accepted, or None if it does not."""

    def absorb(self, credential: C, response: httpx.Response) -> None:
        """Keep what an answer to a call made with `credential` renews of it (nothing, unless overridden)."""

    def due(self, credential: C) -> bool:
        """Whether `credential` should be renewed before it is used (a token near its expiry); never, unless
        overridden."""
        return False

    def _replace(self, old: C, new: C) -> None:
        """Make `new` current if `old` still is (a late answer must not bring back an older session)."""
        if self._current is old:
            self._current = new

    async def login(self) -> C:
        """Log in now, replacing any current credential."""
        async with self._lock:
            return await self._login_locked()

    async def _login_locked(self) -> C:
        credential = await self._obtain(self._generation + 1)
        self._generation = credential.generation
        self._current = credential
        return credential

    async def current(self) -> C:
        """The current credential; logs in if there is none, and waits for a login in progress."""
        credential = self._current
        if credential is not None and not self._lock.locked() and not self.due(credential):
            return credential
        async with self._lock:  # waits for a login in progress instead of racing it with a stale credential
            if self._current is None:
                return await self._login_locked()
            if self.due(self._current):  # the first caller past the renewal time renews; the others wait for it
                logger.debug("Creatio credential %d is due for renewal", self._current.generation)
                return await self._login_locked()
            return self._current

    async def renew(self, stale: C, why: str) -> C:
        """A credential newer than `stale`: another caller's if one already logged in again, else a fresh login."""
        async with self._lock:
            if self._current is not None and self._current.generation != stale.generation:
                return self._current
            logger.info("Creatio session %d expired (%s); logging in again", stale.generation, why)
            return await self._login_locked()


class CreatioSession:
    """Authenticated requests to one Creatio instance over one connection pool."""

    def __init__(self, http: httpx.AsyncClient, auth: Authenticator[Any]) -> None:
        self.http = http
        self.auth = auth

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: Expect = "json",
    ) -> httpx.Response:
        """One business call with session renewal; returns the 2xx response or raises an `esi.errors` error.

        `json_body` is sent as OData JSON; `expect` is what a 2xx answer should hold, so that a login page served
        in its place is recognised as an expired session.
        """
        credential = await self.auth.current()
        call_headers = {"Accept": "application/json", "ForceUseSession": "true", **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            call_headers["Content-Type"] = ODATA_CONTENT_TYPE
        for attempt in (1, 2):
            request_headers = {**call_headers, **credential.headers()}
            with translate_transport_errors(SYSTEM, operation):
                response = await self.http.request(
                    method, path, params=params, content=content, headers=request_headers
                )
            why = self.auth.is_expired(response, expect)
            if why is None:
                self.auth.absorb(credential, response)
                if response.is_success:
                    return response
                raise error_for_status(response, system=SYSTEM, operation=operation, detail=error_detail(response))
            if attempt == 1:
                credential = await self.auth.renew(credential, why)
            elif response.status_code == 403:
                # a fresh session's CSRF token was refused too: not an expiry but a refusal
                raise error_for_status(response, system=SYSTEM, operation=operation, detail=error_detail(response))
            else:
                raise SessionExpired(
                    f"crm {operation}: session still refused right after logging in again ({why})",
                    code="session_expired",
                    system=SYSTEM,
                )
        raise AssertionError("unreachable")  # pragma: no cover


def session_http_client(
    *,
    base_url: str,
    timeout: float,
    ca_bundle: str | None,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.AsyncClient:
    """The connection pool of a `CreatioSession`: no redirects followed, no cookies kept."""
    return http_client(
        base_url=base_url,
        timeout=timeout,
        ca_bundle=ca_bundle,
        max_connections=max_connections,
        follow_redirects=False,
        transport=transport,
        # the session's cookies are sent explicitly; a shared jar would let a late answer to an old session
        # overwrite the new one
        cookies=CookieJar(policy=_KeepNoCookies()),
    )


class _KeepNoCookies(DefaultCookiePolicy):
    """A cookie policy that keeps nothing: the client sends each session's cookies itself."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


def json_or_none(response: httpx.Response) -> Any:
    """The response's JSON body, or None if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def error_detail(response: httpx.Response) -> str | None:
    """The message of an OData error envelope (or of a Creatio JSON error), if the body is one."""
    body = json_or_none(response)
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        inner = error.get("innererror")
        inner_message = str(inner.get("message") or "") if isinstance(inner, dict) else ""
        if inner_message and inner_message != message:
            return f"{message} {inner_message}".strip()
        return message or None
    if isinstance(error, str):
        return error
    for key in ("Message", "message"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None
