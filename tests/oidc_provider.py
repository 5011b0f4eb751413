"""A small but real OpenID Connect provider for the console's single sign-on tests: a FastAPI app served over HTTP
on a free port (`esi.testing.serve_in_thread`), not a stand-in for the client library.

It implements what esi's sign-in uses, and validates what a real provider validates:

- discovery (`/.well-known/openid-configuration`) and its keys (`/jwks`: an RSA key drawn at start, RS256);
- `/authorize`: the client and its exact registered redirect URI (an unknown one is refused with a page of the
  provider's, never redirected to), `response_type=code`, the `openid` scope, PKCE with S256 (required), `state`
  echoed and `nonce` put in the ID token. Without the provider's own session it shows a sign-in form (user and
  password); signed in, it approves at once (no consent screen);
- `/token`: the client's secret (Basic or in the form), the code — single use, short-lived, for this client and this
  redirect URI — and the PKCE verifier against the challenge; it issues an ID token signed RS256 with `groups`;
- `/userinfo` with the access token;
- `/logout` (the `end_session_endpoint`): ends the provider's session and returns to a registered
  `post_logout_redirect_uri` only.

What it saw is kept for the tests to assert (`authorizations`, `token_requests`, `logouts`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.jwk import RSAKey

from esi.testing import serve_in_thread

__all__ = ["Provider", "User", "running_provider"]

SESSION_COOKIE = "idp_session"
CODE_LIFETIME_S = 60
#: the head of the provider's pages (no favicon request: a 404 would show as an error in the browser's console)
_HEAD = '<!doctype html><title>Test provider</title><link rel="icon" href="data:,">'


@dataclass
class User:
    password: str
    groups: list[str]
    name: str = ""
    email: str = ""


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: str
    scope: str
    expires: float


@dataclass
class Provider:
    """The provider's state: its clients, users, key, codes and sessions."""

    client_id: str
    client_secret: str
    users: dict[str, User]
    redirect_uris: list[str] = field(default_factory=list)
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8)}))
    codes: dict[str, _Code] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    authorizations: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    logouts: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: whether the ID token carries the groups (some providers put them in the userinfo only)
    groups_in_id_token: bool = True
    #: what to get wrong in the next ID tokens, for the tests that esi refuses them: "nonce", "audience", "issuer",
    #: "expired" or "key" (signed with a key the JWKS does not hold); None: nothing
    forge: str | None = None

    # --- the protocol's checks ----------------------------------------------------------------------------------

    def _authorize_problem(self, params: dict[str, str]) -> tuple[str, str] | None:
        """(error, description) for a request the provider refuses by redirecting back with an error."""
        if params.get("response_type") != "code":
            return "unsupported_response_type", "only the authorization code flow"
        if "openid" not in params.get("scope", "").split():
            return "invalid_scope", "openid is required"
        if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
            return "invalid_request", "PKCE with S256 is required"
        return None

    def _issue_code(self, params: dict[str, str], user: str) -> str:
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = _Code(
                client_id=params["client_id"],
                redirect_uri=params["redirect_uri"],
                challenge=params["code_challenge"],
                nonce=params.get("nonce"),
                user=user,
                scope=params.get("scope", ""),
                expires=time.monotonic() + CODE_LIFETIME_S,
            )
        return code

    def _back(self, params: dict[str, str], **query: str) -> RedirectResponse:
        if params.get("state"):
            query["state"] = params["state"]
        query["iss"] = self.issuer
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(query)}", status_code=302)

    def _client_of(self, request: Request, form: dict[str, str]) -> str | None:
        """The authenticated client id (client_secret_basic or client_secret_post), or None."""
        header = request.headers.get("authorization", "")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if header.lower().startswith("basic "):
            from urllib.parse import unquote

            decoded = base64.b64decode(header[6:]).decode()
            user, _, password = decoded.partition(":")
            client_id, secret = unquote(user), unquote(password)
        if client_id != self.client_id or secret is None:
            return None
        return client_id if hmac.compare_digest(secret.encode(), self.client_secret.encode()) else None

    def id_token(self, user: str, *, nonce: str | None, lifetime: int = 300) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"sub-{user}",
            "aud": self.client_id,
            "iat": now,
            "exp": now + lifetime,
            "auth_time": now,
            **self.claims(user),
        }
        if not self.groups_in_id_token:
            del claims["groups"]
        if nonce:
            claims["nonce"] = nonce
        key = self.key
        if self.forge == "nonce":
            claims["nonce"] = "not-the-nonce-esi-sent"
        elif self.forge == "audience":
            claims["aud"] = "another-client"
        elif self.forge == "issuer":
            claims["iss"] = "https://another-provider.example"
        elif self.forge == "expired":
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif self.forge == "key":
            key = RSAKey.generate_key(2048, parameters={"kid": self.key.kid})
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, key)

    def claims(self, user: str) -> dict[str, Any]:
        person = self.users[user]
        return {
            "sub": f"sub-{user}",
            "preferred_username": user,
            "name": person.name or user,
            "email": person.email or f"{user}@example.com",
            "groups": list(person.groups),
        }

    # --- the app ------------------------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "userinfo_endpoint": f"{self.issuer}/userinfo",
                "jwks_uri": f"{self.issuer}/jwks",
                "end_session_endpoint": f"{self.issuer}/logout",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "grant_types_supported": ["authorization_code"],
                "scopes_supported": ["openid", "profile", "email"],
                "claims_supported": ["sub", "preferred_username", "name", "email", "groups"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            public = self.key.as_dict(private=False)
            return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}

        def checked(params: dict[str, str]) -> Response | None:
            """A page of the provider's for an unknown client or redirect URI (never a redirect to it)."""
            if params.get("client_id") != self.client_id:
                return HTMLResponse(f"{_HEAD}<h1>unknown client</h1>", status_code=400)
            if params.get("redirect_uri") not in self.redirect_uris:
                return HTMLResponse(f"{_HEAD}<h1>redirect_uri is not registered for this client</h1>", status_code=400)
            return None

        def sign_in_form(params: dict[str, str], message: str = "") -> HTMLResponse:
            hidden = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items()
            )
            return HTMLResponse(
                f"{_HEAD}<h1>Sign in to the test provider</h1>"
                f'<p class="message">{html.escape(message)}</p>'
                f'<form method="post" action="/authorize">{hidden}'
                '<label>User <input name="username" id="username"></label>'
                '<label>Password <input name="password" id="password" type="password"></label>'
                '<button type="submit" id="submit">Sign in</button></form>'
            )

        @app.get("/authorize")
        async def authorize(request: Request) -> Response:
            params = dict(request.query_params)
            self.authorizations.append(params)
            refused = checked(params)
            if refused is not None:
                return refused
            problem = self._authorize_problem(params)
            if problem is not None:
                return self._back(params, error=problem[0], error_description=problem[1])
            user = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
            if user is None:
                return sign_in_form(params)
            return self._back(params, code=self._issue_code(params, user))

        @app.post("/authorize")
        async def sign_in(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            username, password = form.pop("username", ""), form.pop("password", "")
            refused = checked(form)
            if refused is not None:
                return refused
            problem = self._authorize_problem(form)
            if problem is not None:
                return self._back(form, error=problem[0], error_description=problem[1])
            person = self.users.get(username)
            if person is None or not hmac.compare_digest(person.password.encode(), password.encode()):
                return sign_in_form(form, "wrong user or password")
            sid = secrets.token_urlsafe(16)
            self.sessions[sid] = username
            response = self._back(form, code=self._issue_code(form, username))
            response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax", path="/")
            return response

        def token_error(error: str, status: int = 400) -> JSONResponse:
            return JSONResponse({"error": error}, status_code=status, headers={"Cache-Control": "no-store"})

        @app.post("/token")
        async def token(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
            client_id = self._client_of(request, form)
            if client_id is None:
                return token_error("invalid_client", 401)
            if form.get("grant_type") != "authorization_code":
                return token_error("unsupported_grant_type")
            with self.lock:
                code = self.codes.pop(form.get("code", ""), None)  # single use: gone whatever happens next
            if code is None or code.expires < time.monotonic() or code.client_id != client_id:
                return token_error("invalid_grant")
            if form.get("redirect_uri") != code.redirect_uri:
                return token_error("invalid_grant")
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not hmac.compare_digest(challenge, code.challenge):
                return token_error("invalid_grant")
            access = secrets.token_urlsafe(24)
            self.tokens[access] = code.user
            return JSONResponse(
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": code.scope,
                    "id_token": self.id_token(code.user, nonce=code.nonce),
                },
                headers={"Cache-Control": "no-store"},
            )

        @app.api_route("/userinfo", methods=["GET", "POST"])
        async def userinfo(request: Request) -> Response:
            scheme, _, access = request.headers.get("authorization", "").partition(" ")
            user = self.tokens.get(access) if scheme.lower() == "bearer" else None
            if user is None:
                return JSONResponse({"error": "invalid_token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(self.claims(user))

        @app.get("/logout")
        async def logout(request: Request) -> Response:
            params = dict(request.query_params)
            self.logouts.append(params)
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            target = params.get("post_logout_redirect_uri")
            if target:
                if target not in self.post_logout_redirect_uris:
                    return HTMLResponse(f"{_HEAD}<h1>post_logout_redirect_uri is not registered</h1>", status_code=400)
                query = {"state": params["state"]} if params.get("state") else {}
                response: Response = RedirectResponse(
                    f"{target}?{urlencode(query)}" if query else target, status_code=302
                )
            else:
                response = HTMLResponse(f"{_HEAD}<h1>signed out of the test provider</h1>")
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response

        return app


@contextmanager
def running_provider(provider: Provider) -> Iterator[Provider]:
    """`provider` served on a free port; its `issuer` set to that address."""
    with serve_in_thread(provider.app(), name="oidc-provider") as base_url:
        provider.issuer = base_url.rstrip("/")
        yield provider
