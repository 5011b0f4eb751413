"""Creatio's forms login: `AuthService.svc/Login`, then session cookies and the `BPMCSRF` header on every call.

A session that has expired shows up in one of three ways (HTTP 401; a 3xx to `/Login/`; HTTP 200 with an HTML login
page instead of data); a 403 is a refused CSRF token, which a fresh session cures too. Cookies that an ordinary
answer renews (sliding expiration) are kept for the calls after it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import httpx

from esi.errors import PermanentError
from esi.systems.crm.client.session import SYSTEM, Authenticator, Credential, Expect, error_detail
from esi.systems.http import error_for_status, translate_transport_errors

logger = logging.getLogger(__name__)

LOGIN_PATH = "/ServiceModel/AuthService.svc/Login"

_SESSION_COOKIE = ".ASPXAUTH"
_CSRF_COOKIE = "BPMCSRF"


@dataclass(frozen=True)
class CookieSession(Credential):
    """One forms-login session: its cookies and the CSRF token Creatio wants echoed in a header."""

    generation: int
    cookies: dict[str, str]
    csrf: str | None

    def headers(self) -> dict[str, str]:
        headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        if self.csrf:
            headers["BPMCSRF"] = self.csrf
        return headers


class CookieLogin(Authenticator[CookieSession]):
    """Log in as `username` with `password` (never logged) through Creatio's `AuthService`.

    Args:
        http: the session's connection pool (it must keep no cookies of its own and follow no redirects).
        username: the Creatio user the bus acts as.
        password: that user's password.
    """

    def __init__(self, http: httpx.AsyncClient, *, username: str, password: str) -> None:
        super().__init__()
        self._http = http
        self._username = username
        self._password = password

    async def _obtain(self, generation: int) -> CookieSession:
        """Raises `PermanentError` (code `auth_failed`) when refused, `TransientError` when Creatio is unwell."""
        body = json.dumps({"UserName": self._username, "UserPassword": self._password}).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "ForceUseSession": "true",
        }
        with translate_transport_errors(SYSTEM, "login"):
            response = await self._http.post(LOGIN_PATH, content=body, headers=headers)
        if response.status_code != 200:
            raise error_for_status(response, system=SYSTEM, operation="login", detail=error_detail(response))
        try:
            result = response.json()
        except ValueError:
            result = None
        if not isinstance(result, dict) or "Code" not in result:
            raise PermanentError(
                f"crm login: unexpected answer from {LOGIN_PATH} (not Creatio's AuthService?)",
                code="auth_failed",
                system=SYSTEM,
            )
        if result["Code"] not in (0, "0"):
            message = str(result.get("Message") or "no message")
            logger.warning("Creatio login as %s refused: %s", self._username, message)
            raise PermanentError(
                f"crm login as {self._username!r} refused (Code {result['Code']}): {message}",
                code="auth_failed",
                system=SYSTEM,
            )
        cookies = _set_cookies(response)
        if not cookies.get(_SESSION_COOKIE):
            raise PermanentError(
                "crm login: Creatio answered Code 0 but set no session cookie", code="auth_failed", system=SYSTEM
            )
        logger.info("Logged in to Creatio as %s (session %d)", self._username, generation)
        return CookieSession(generation, cookies, cookies.get(_CSRF_COOKIE))

    def is_expired(self, response: httpx.Response, expect: Expect) -> str | None:
        status = response.status_code
        if status == 401:
            return "HTTP 401"
        if status == 403:
            return "HTTP 403 (CSRF token refused?)"
        if 300 <= status < 400 and "/login/" in response.headers.get("location", "").lower():
            return f"HTTP {status} to the login page"
        if 200 <= status < 300:
            content_type = response.headers.get("content-type", "").lower()
            if "text/html" in content_type:
                return "an HTML login page instead of data"
            if expect == "json" and response.content.lstrip()[:1] == b"<":
                return "an HTML login page instead of JSON"
            if expect == "empty" and status == 200 and response.content.lstrip()[:1] == b"<":
                return "an HTML login page instead of 204"
        return None

    def absorb(self, credential: CookieSession, response: httpx.Response) -> None:
        """Keep a sliding-expiration renewal of the current session's cookies."""
        if "set-cookie" not in response.headers or self._current is not credential:
            return
        updates = {name: value for name, value in _set_cookies(response).items() if value}
        if updates:
            cookies = {**credential.cookies, **updates}
            self._replace(
                credential, CookieSession(credential.generation, cookies, cookies.get(_CSRF_COOKIE, credential.csrf))
            )


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    """name → value of every `Set-Cookie` in the response (attributes ignored)."""
    cookies: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        pair = header.split(";", 1)[0]
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            cookies[name.strip()] = value.strip().strip('"')
    return cookies
