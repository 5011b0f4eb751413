"""OAuth 2.0 client credentials to Creatio 8.x: a bearer token from the Identity Service's `/connect/token`.

The grant has no refresh token: a new token is requested before the current one expires (`margin` ahead, at most a
tenth of its lifetime, so that a short-lived token is not renewed on every call), by the first call past that
moment while the others wait for it (`Authenticator.current`). A 401 on a call renews once and retries it
(`CreatioSession.call`), however many calls saw it. Calls then carry `Authorization: Bearer …` and no `BPMCSRF`.

The token request goes over the session's own connection pool (its timeouts, TLS and limits), and its failures are
translated like every other call's: a refused client is a `PermanentError` (code `auth_failed`), an Identity Service
that is down or overloaded a `TransientError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from esi.errors import PermanentError
from esi.systems.crm.client.session import SYSTEM, Authenticator, Credential, Expect, error_detail, json_or_none
from esi.systems.http import TRANSIENT_STATUSES, error_for_status, translate_transport_errors

logger = logging.getLogger(__name__)

#: the token endpoint under the Identity Service's URL
TOKEN_PATH = "/connect/token"  # noqa: S105 - a path, not a secret
#: the lifetime assumed when the Identity Service does not say (`expires_in` missing): Creatio's default
DEFAULT_LIFETIME_S = 3600.0
#: the renewal margin never exceeds this share of a token's lifetime
MAX_MARGIN_SHARE = 0.1


@dataclass(frozen=True)
class BearerToken(Credential):
    """One access token and when it is to be renewed (monotonic seconds)."""

    generation: int
    access_token: str
    renew_at: float
    expires_in: float

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class ClientCredentials(Authenticator[BearerToken]):
    """Tokens for the client application `client_id` (its secret never logged) from `token_url`.

    Args:
        http: the session's connection pool (`token_url` is absolute, so it may be another host).
        token_url: the Identity Service's token endpoint, e.g. `https://id.example.com/connect/token`.
        client_id: the client application's id.
        client_secret: its secret.
        margin: renew this many seconds before expiry (capped at a tenth of the token's lifetime).
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not client_id or not client_secret:
            raise ValueError("OAuth to Creatio needs a client id and a client secret")
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._margin = max(0.0, margin)
        self._clock = clock

    async def _obtain(self, generation: int) -> BearerToken:
        """Raises `PermanentError` (code `auth_failed`) when refused, `TransientError` when the service is unwell."""
        form = {"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": self._client_secret}
        with translate_transport_errors(SYSTEM, "token"):
            response = await self._http.post(self._token_url, data=form, headers={"Accept": "application/json"})
        body = json_or_none(response)
        if response.status_code != 200:
            if response.status_code in TRANSIENT_STATUSES or response.status_code >= 500:
                raise error_for_status(response, system=SYSTEM, operation="token", detail=error_detail(response))
            reason = body.get("error") if isinstance(body, dict) else None
            logger.warning("Creatio's Identity Service refused the client %s: %s", self._client_id, reason)
            raise PermanentError(
                f"crm token for client {self._client_id!r} refused: HTTP {response.status_code}"
                + (f" ({reason})" if reason else ""),
                code="auth_failed",
                system=SYSTEM,
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentError(
                f"crm token: no access_token in the answer of {self._token_url} (not an Identity Service?)",
                code="auth_failed",
                system=SYSTEM,
            )
        assert isinstance(body, dict)  # noqa: S101 - a token was found in it; narrows for mypy
        lifetime = _lifetime(body.get("expires_in"))
        margin = min(self._margin, lifetime * MAX_MARGIN_SHARE)
        logger.info("Creatio token %d obtained for %s (expires in %.0f s)", generation, self._client_id, lifetime)
        return BearerToken(generation, token, renew_at=self._clock() + lifetime - margin, expires_in=lifetime)

    def due(self, credential: BearerToken) -> bool:
        return self._clock() >= credential.renew_at

    def is_expired(self, response: httpx.Response, expect: Expect) -> str | None:
        return "HTTP 401" if response.status_code == 401 else None


def _lifetime(value: object) -> float:
    """`expires_in` in seconds; Creatio's default when missing or unreadable."""
    if isinstance(value, bool):
        return DEFAULT_LIFETIME_S
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return DEFAULT_LIFETIME_S
        return seconds if seconds > 0 else DEFAULT_LIFETIME_S
    return DEFAULT_LIFETIME_S


def token_url(identity_url: str) -> str:
    """The token endpoint of an Identity Service given by its root URL (or already by the endpoint itself)."""
    root = identity_url.rstrip("/")
    return root if root.endswith(TOKEN_PATH) else root + TOKEN_PATH
