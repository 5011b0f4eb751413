"""CSRF tokens for the console's forms: a signed double-submit token tied to the client.

The token is `<nonce>.<signature>`, the signature an HMAC of the nonce and the client id under the console's key. It
is set as a cookie (HttpOnly, SameSite=Strict, path /console) and repeated in every form; a POST is accepted only
when the form's token equals the cookie's and its signature holds for the client that authenticated. Another site
can neither read the cookie nor forge a signature, and a token taken from one client is worthless to another.

API replicas behind one address share the key through `ESI_CONSOLE_SECRET`; without it each process draws its own
(a form rendered by one replica and posted to another is then refused, and a reload mends it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["COOKIE", "FIELD", "CsrfTokens"]

#: the cookie and the form field that carry the token
COOKIE = "esi_console_csrf"
FIELD = "csrf_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CsrfTokens:
    """Issues and checks tokens under one key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _sign(self, nonce: str, client_id: str) -> str:
        return _b64(hmac.new(self._key, f"{nonce}|{client_id}".encode(), hashlib.sha256).digest())

    def issue(self, client_id: str) -> str:
        """A new token for `client_id`."""
        nonce = _b64(secrets.token_bytes(18))
        return f"{nonce}.{self._sign(nonce, client_id)}"

    def valid_for(self, token: str | None, client_id: str) -> bool:
        """Whether `token` was issued, under this key, to `client_id`."""
        if not token or token.count(".") != 1 or len(token) > 200:
            return False
        nonce, signature = token.split(".")
        return hmac.compare_digest(signature.encode(), self._sign(nonce, client_id).encode())

    def check(self, form_token: str | None, cookie_token: str | None, client_id: str) -> bool:
        """A POST's tokens: the form's equals the cookie's, and it is this client's."""
        if not form_token or not cookie_token:
            return False
        return hmac.compare_digest(form_token.encode(), cookie_token.encode()) and self.valid_for(form_token, client_id)
