"""Single sign-on for the console: OpenID Connect sign-in (authorization code with PKCE, by Authlib), the signed
session cookie, sign-out, and the dependency that tells every console page who is looking.

The flow. A page asked for without a session answers 303 to `/console/auth/login?next=<the page>`, which sends the
browser to the provider's authorization endpoint (found in its discovery document) with a fresh `state`, `nonce`
and PKCE S256 challenge; those, the verifier and the page to return to ride in a short-lived signed cookie
(`esi_console_signin`, path /console/auth, 10 minutes). The provider sends the browser back to
`/console/auth/callback` (`ESI_OIDC_REDIRECT_URL`): Authlib checks the state, trades the code and the verifier for
the tokens, and checks the ID token (signature against the provider's JWKS, issuer, audience, expiry, nonce). The
groups come from the ID token's claim, else from the userinfo endpoint; they are mapped to esi's scopes
(esi.security.oidc.RoleMap). A person in no mapped group is refused with 403 and gets no session.

The session is a cookie `esi_console_session`, signed (itsdangerous, HMAC-SHA256) under a key derived from
`ESI_CONSOLE_SECRET` — the same on every replica — and `Secure`, `HttpOnly`, `SameSite=Lax`, path /console, with
`Max-Age` the session's lifetime (`ESI_CONSOLE_SESSION_LIFETIME`, 8 h by default), which the signature's time
enforces too: an old cookie replayed after its lifetime is refused whatever the browser kept. It holds the person's
name, their mapped groups, a random session id and, when it is short enough, the ID token as the hint for sign-out.
Lax, not Strict: the provider's redirect back is a cross-site navigation, which must carry the sign-in cookie.

Sign-out (`/console/auth/logout`, a link in the header) ends esi's session — the cookie is deleted and its id
refused by this process until it would have expired anyway — then sends the browser to the provider's
`end_session_endpoint` when the discovery document names one (RP-initiated logout, back to
`/console/auth/signed-out`), so that the next page asks for a sign-in at the provider again. Another replica knows
the cookie is gone only through the browser: a copy of the cookie kept elsewhere stays valid there until it expires
(docs/security.md).

Basic and API keys stay: machines use the API with them as before, and the console accepts them too when
`ESI_CONSOLE_BASIC` is on (its default without single sign-on; off by default with it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from esi.api.auth import Authenticator
from esi.console.core import SECURITY_HEADERS, Console, html_errors
from esi.console.i18n import N_
from esi.errors import ApiError
from esi.security.oidc import OidcConfig, principal_id
from esi.security.scopes import Principal

__all__ = ["SESSION_COOKIE", "SIGNIN_COOKIE", "ConsoleSignIn", "SignInSettings"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "esi_console_session"
SIGNIN_COOKIE = "esi_console_signin"
#: how long a sign-in may take at the provider
SIGNIN_LIFETIME_S = 600
#: an ID token longer than this is not kept in the cookie as the sign-out hint (browsers cap a cookie at 4 KiB)
_MAX_HINT_CHARS = 2000
_AUTH_PATH = "/console/auth"


@dataclass(frozen=True)
class SignInSettings:
    """How people sign in to the console (the composition root builds it from the settings)."""

    #: single sign-on; None: Basic (or an API key) only
    oidc: OidcConfig | None = None
    #: whether the console also accepts Basic and API keys (always without single sign-on)
    basic: bool = True
    session_lifetime_s: float = 8 * 3600
    #: the cookies' Secure flag: off only for a demo over plain HTTP
    cookie_secure: bool = True
    #: ESI_CONSOLE_SECRET; None: a key drawn by this process (sessions end when it restarts)
    secret: bytes | None = None


@dataclass(frozen=True)
class ConsoleSession:
    """What a session cookie says."""

    user: str
    groups: tuple[str, ...]
    sid: str
    id_token: str | None


def _authlib() -> tuple[Any, type[Exception]]:
    """Authlib's Starlette client and its error, imported only when single sign-on is configured.

    Authlib 1.9 warns on import that its fallback to httpx (instead of its fork httpx2) is deprecated; esi uses
    httpx everywhere else and pins Authlib below 2, so the warning would only be noise in every process's log."""
    import authlib.deprecate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
        from authlib.integrations.starlette_client import OAuth, OAuthError
    return OAuth, OAuthError


def _derive(secret: bytes | None, purpose: bytes) -> bytes:
    return hmac.new(secret or secrets.token_bytes(32), purpose, hashlib.sha256).digest()


def _local_path(value: str | None) -> str:
    """`value` when it is a console path of this site, else the console's home (no open redirect)."""
    if not value or not value.startswith("/console") or value.startswith(_AUTH_PATH) or "\\" in value:
        return "/console"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/console"
    return value[:2000]


class ConsoleSignIn:
    """Who is looking at a console page: the session of a single sign-on, or Basic / an API key as configured."""

    def __init__(self, console: Console, auth: Authenticator, settings: SignInSettings) -> None:
        self.console = console
        self.auth = auth
        self.settings = settings
        self.oidc = settings.oidc
        self.basic = settings.basic or settings.oidc is None
        lifetime = max(60, int(settings.session_lifetime_s))
        self.lifetime_s = lifetime
        self._sessions = URLSafeTimedSerializer(_derive(settings.secret, b"esi console session"), salt="session")
        self._signins = URLSafeTimedSerializer(_derive(settings.secret, b"esi console sign-in"), salt="sign-in")
        #: session id → when it would have expired: the sessions signed out of in this process
        self._ended: dict[str, float] = {}
        self._client: Any = None
        self._oauth_error: type[Exception] = Exception
        if self.oidc is not None:
            oauth_cls, self._oauth_error = _authlib()
            oauth = oauth_cls()
            client_kwargs: dict[str, Any] = {"scope": self.oidc.scopes, "code_challenge_method": "S256", "timeout": 10}
            if self.oidc.ca_file:
                client_kwargs["verify"] = ssl.create_default_context(cafile=self.oidc.ca_file)
            self._client = oauth.register(
                "esi",
                client_id=self.oidc.client_id,
                client_secret=self.oidc.client_secret,
                server_metadata_url=self.oidc.discovery_url,
                client_kwargs=client_kwargs,
            )

    # --- the dependency -------------------------------------------------------------------------------------------

    async def principal(self, request: Request) -> Principal:
        """The FastAPI dependency of every console page: the signed-in person, else Basic / an API key when the
        console accepts them; without either a page is redirected to the sign-in (303), anything else 401."""
        if self.oidc is None:
            return await self.auth.authenticate(request)
        session = self._session(request)
        if session is not None:
            principal = self.oidc.roles.principal(session.user, session.groups)
            if principal is None:  # the mapping changed since the sign-in
                raise ApiError(403, "forbidden", N_("none of your groups may use the console"))
            return principal
        headers = request.headers
        if self.basic and (headers.get("authorization") or headers.get("x-api-key")):
            return await self.auth.authenticate(request)
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            location = f"{_AUTH_PATH}/login?{urlencode({'next': target})}"
            raise ApiError(303, "sign_in_required", "sign in first", headers={"Location": location})
        raise ApiError(401, "unauthorized", "sign in to the console first")

    def _session(self, request: Request) -> ConsoleSession | None:
        value = request.cookies.get(SESSION_COOKIE)
        if not value or len(value) > 4096:
            return None
        try:
            data = self._sessions.loads(value, max_age=self.lifetime_s)
            session = ConsoleSession(
                user=str(data["u"]), groups=tuple(str(g) for g in data["g"]), sid=str(data["s"]), id_token=data.get("t")
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if session.sid in self._ended:
            return None
        return session

    # --- the routes -------------------------------------------------------------------------------------------------

    async def _audit(self, action: str, client_id: str, detail: dict[str, Any]) -> None:
        """A sign-in, a refusal or a sign-out in the audit log (`GET /audit`); a store away is logged, not fatal:
        the log line has it."""
        if self.console.store is None:
            return
        try:
            await self.console.store.audit.record(action, client_id=client_id[:64], detail=detail)
        except Exception as exc:  # noqa: BLE001 - the sign-in itself does not depend on the store
            log.warning("could not write %s of %s to the audit log: %s", action, client_id, exc)

    def _cookie(self, response: Response, name: str, value: str, *, max_age: int, path: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=path,
            secure=self.settings.cookie_secure,
            httponly=True,
            samesite="lax",
        )

    def _forget(self, response: Response, name: str, *, path: str) -> None:
        response.delete_cookie(name, path=path, secure=self.settings.cookie_secure, httponly=True, samesite="lax")

    def _no_sso(self) -> None:
        if self._client is None:
            raise ApiError(404, "not_found", N_("single sign-on is not configured"))

    @html_errors
    async def login(self, *, request: Request, principal: Principal | None = None) -> Response:
        """To the provider, with a new state, nonce and PKCE challenge kept in the sign-in cookie."""
        self._no_sso()
        assert self.oidc is not None  # noqa: S101 - checked by _no_sso; narrows for mypy
        pending: dict[str, Any] = {"next": _local_path(request.query_params.get("next"))}
        request.scope["session"] = pending
        try:
            redirect = await self._client.authorize_redirect(request, self.oidc.redirect_url)
        except Exception as exc:  # noqa: BLE001 - the provider is away or its discovery document is wrong
            log.warning("single sign-on: cannot reach the provider %s: %s", self.oidc.issuer, exc)
            raise ApiError(
                502, "provider_unavailable", N_("the sign-in service does not answer: try again later")
            ) from None
        response = RedirectResponse(redirect.headers["location"], status_code=302, headers=SECURITY_HEADERS)
        self._cookie(response, SIGNIN_COOKIE, self._signins.dumps(pending), max_age=SIGNIN_LIFETIME_S, path=_AUTH_PATH)
        return response

    @html_errors
    async def callback(self, *, request: Request, principal: Principal | None = None) -> Response:
        """Back from the provider: the code traded for checked tokens, the groups mapped, the session issued."""
        self._no_sso()
        assert self.oidc is not None  # noqa: S101 - checked by _no_sso; narrows for mypy
        try:
            pending = self._signins.loads(request.cookies.get(SIGNIN_COOKIE, ""), max_age=SIGNIN_LIFETIME_S)
            if not isinstance(pending, dict):
                raise BadSignature("not a sign-in")
        except BadSignature:
            raise ApiError(
                400, "sign_in_failed", N_("the sign-in expired or did not start here: sign in again")
            ) from None
        request.scope["session"] = pending
        try:
            token = await self._client.authorize_access_token(request)
        except Exception as exc:  # noqa: BLE001 - a bad token (signature, nonce, audience...) or the provider away
            if isinstance(exc, self._oauth_error):  # the provider's own refusal (error=... back, invalid_grant)
                error = re.sub(r"[^a-z_]", "", str(getattr(exc, "error", "")))[:40] or "?"  # shown on the page
                log.warning("single sign-on refused: %s: %s", error, getattr(exc, "description", ""))
                raise ApiError(
                    400, "sign_in_failed", N_("the sign-in failed (%(error)s): sign in again", error=error)
                ) from None
            log.warning("single sign-on failed: %s: %s", type(exc).__name__, exc)
            raise ApiError(400, "sign_in_failed", N_("the sign-in could not be verified: sign in again")) from None
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        groups = self.oidc.groups_of(claims)
        if not groups and self.oidc.groups_claim not in claims:
            try:  # some providers put the groups in the userinfo only
                claims = {**dict(await self._client.userinfo(token=token)), **claims}
            except Exception as exc:  # noqa: BLE001 - no userinfo: no groups, refused below
                log.warning("single sign-on: the userinfo endpoint failed: %s", exc)
            groups = self.oidc.groups_of(claims)
        user = self.oidc.user_of(claims)
        if user is None:
            raise ApiError(400, "sign_in_failed", N_("the provider named nobody: sign in again"))
        principal = self.oidc.roles.principal(user, groups)
        if principal is None:
            log.warning("single sign-on: %r is in none of the mapped groups (has %s)", user, groups[:20])
            await self._audit("console.sign_in_refused", principal_id(user), {"groups": groups[:50]})
            refused = self.console.page(
                request,
                None,
                "error.html",
                status=403,
                title=N_("Error"),
                error=ApiError(403, "forbidden", N_("none of your groups may use the console")),
            )
            self._forget(refused, SIGNIN_COOKIE, path=_AUTH_PATH)
            return refused
        id_token = token.get("id_token")
        mapped = self.oidc.roles.mapped(groups)
        session = {
            "u": user,
            "g": mapped,
            "s": secrets.token_urlsafe(16),
            "t": id_token if isinstance(id_token, str) and len(id_token) <= _MAX_HINT_CHARS else None,
        }
        log.info("single sign-on: %s signed in to the console (%s)", principal.client_id, ", ".join(mapped))
        scopes = sorted(self.oidc.roles.scopes_of(mapped))
        await self._audit("console.sign_in", principal.client_id, {"groups": mapped, "scopes": scopes})
        response = RedirectResponse(_local_path(pending.get("next")), status_code=303, headers=SECURITY_HEADERS)
        self._cookie(response, SESSION_COOKIE, self._sessions.dumps(session), max_age=self.lifetime_s, path="/console")
        self._forget(response, SIGNIN_COOKIE, path=_AUTH_PATH)
        return response

    @html_errors
    async def logout(self, *, request: Request, principal: Principal | None = None) -> Response:
        """esi's session ended, then the provider's (its end_session_endpoint, when it has one)."""
        self._no_sso()
        assert self.oidc is not None  # noqa: S101 - checked by _no_sso; narrows for mypy
        if request.headers.get("sec-fetch-site") == "cross-site":
            # a link on another site must not sign people out behind their backs
            return self.console.redirect("/console")
        session = self._session(request)
        now = time.time()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        target = "/console/auth/signed-out"
        if session is not None:
            self._ended[session.sid] = now + self.lifetime_s
            log.info("single sign-on: %s signed out of the console", principal_id(session.user))
            await self._audit("console.sign_out", principal_id(session.user), {})
            try:
                metadata = await self._client.load_server_metadata()
                if metadata.get("end_session_endpoint"):
                    hint = {"id_token_hint": session.id_token} if session.id_token else {}
                    result = await self._client.create_logout_url(
                        post_logout_redirect_uri=self.signed_out_url, client_id=self.oidc.client_id, **hint
                    )
                    target = result["url"]
            except Exception as exc:  # noqa: BLE001 - esi's session is over; the provider's may outlive it
                log.warning("single sign-on: cannot reach the provider to end its session: %s", exc)
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        self._forget(response, SESSION_COOKIE, path="/console")
        return response

    @property
    def signed_out_url(self) -> str:
        """Where the provider sends the browser after its sign-out: beside the callback."""
        assert self.oidc is not None  # noqa: S101 - only with single sign-on; narrows for mypy
        return self.oidc.redirect_url.removesuffix("/callback") + "/signed-out"

    @html_errors
    async def signed_out(self, *, request: Request, principal: Principal | None = None) -> Response:
        return self.console.page(request, None, "signed_out.html", title=N_("Signed out"), sign_in=True)
