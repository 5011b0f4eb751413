"""Single sign-on for the console: what an OpenID Connect sign-in becomes in esi — its configuration, the mapping of
the provider's groups to esi's scopes, and the `Principal` a signed-in person acts as.

The sign-in itself (authorization code with PKCE, the provider's discovery document and keys, the session cookie)
is HTTP and lives in esi.console.sso; nothing here knows the web framework or the provider.

Roles. The site maps the groups its provider puts in the token (`ESI_OIDC_GROUPS_CLAIM`, `groups` by default; a
dotted path such as `realm_access.roles` reaches into an object) to esi's console scopes::

    ESI_OIDC_ROLES='{"esi-operators": ["operator"], "esi-viewers": ["read"]}'

The scopes are the console's half of the clients file's: `read` (the pages) and `operator` (the pages, every
request unmasked, and the actions: replay, purge, pause, resume). A person gets the union of the scopes of their
groups; one in no mapped group is refused at sign-in (403), never let in with nothing. The scopes are looked up
again on every request, so a changed mapping applies at the next restart without anyone signing in again.

Who. A signed-in person acts as `sso:<name>` (`ESI_OIDC_USER_CLAIM`, `preferred_username` by default, else `sub`):
the `sso:` prefix cannot be an API client's id (`:` is not allowed there), so a person is never mistaken for a
machine client — not for reading a client's own requests, nor in the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from esi.security.scopes import DLQ_EDIT, OPERATOR_SCOPES, Principal

__all__ = [
    "CONSOLE_SCOPES",
    "SSO_PREFIX",
    "OidcConfig",
    "OidcConfigError",
    "RoleMap",
    "claim_values",
    "principal_id",
    "session_key_problem",
]

#: the scopes a group can grant in the console, and what each means
CONSOLE_SCOPES = {
    "read": "the console's pages (personal data masked)",
    "operator": "every page unmasked, and the actions: replay, purge, pause, resume",
    DLQ_EDIT: "with operator: correct a dead letter's payload and replay it",
}
#: what a signed-in person's id starts with: never a client id of the clients file (no ':' there)
SSO_PREFIX = "sso:"
#: the longest user name kept (the audit log's client id is at most 64 characters with the prefix)
_MAX_NAME = 60
_CLAIM_PATH_RE = re.compile(r"^[A-Za-z0-9_\-:/.]{1,200}$")
#: keys that must never sign sessions in production: the documentation's and the tests' examples
DEMO_SESSION_KEYS = frozenset({"change-me", "changeme", "secret", "demo", "browser-test-console-secret"})
MIN_SESSION_KEY_CHARS = 32


class OidcConfigError(ValueError):
    """The single sign-on settings are incomplete or malformed."""


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The strings a claim holds, by its name or a dotted path into nested objects (`realm_access.roles`): a list of
    strings, or one string (ADFS sends a single group as a string; a space- or comma-separated list is not split).
    A name with a dot that exists as a key of its own (`https://example.com/groups` style) is taken as it is."""
    value: Any = claims.get(path) if path in claims else None
    if value is None and path not in claims:
        value = claims
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return []
            value = value[part]
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, str)]
    return []


@dataclass(frozen=True)
class RoleMap:
    """Groups → console scopes (`ESI_OIDC_ROLES`)."""

    roles: Mapping[str, frozenset[str]]

    @classmethod
    def parse(cls, value: str | Mapping[str, Any], *, source: str = "ESI_OIDC_ROLES") -> RoleMap:
        """The mapping of a JSON object (or an object already parsed): each group a list of scopes of
        `CONSOLE_SCOPES`. An empty mapping, an unknown scope or a group without scopes is an error."""
        data: Any = value
        if isinstance(value, str):
            try:
                data = json.loads(value)
            except json.JSONDecodeError as exc:
                raise OidcConfigError(
                    f'{source} must be a JSON object such as {{"esi-operators": ["operator"]}}: {exc}'
                ) from None
        if not isinstance(data, Mapping) or not data:
            raise OidcConfigError(
                f'{source} must map at least one group to its scopes, such as {{"esi-operators": ["operator"]}}'
            )
        roles: dict[str, frozenset[str]] = {}
        for group, scopes in data.items():
            if not isinstance(group, str) or not group.strip():
                raise OidcConfigError(f"{source}: a group name must be a non-empty string, not {group!r}")
            if isinstance(scopes, str):
                scopes = [scopes]
            if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
                raise OidcConfigError(f'{source}: group {group!r} must list its scopes, such as ["read"]')
            unknown = sorted({s.strip().lower() for s in scopes} - set(CONSOLE_SCOPES))
            if unknown:
                raise OidcConfigError(
                    f"{source}: group {group!r}: unknown scope(s) {', '.join(unknown)}; "
                    f"known: {', '.join(CONSOLE_SCOPES)}"
                )
            roles[group] = frozenset(s.strip().lower() for s in scopes)
        return cls(roles)

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.roles)

    def scopes_of(self, groups: Iterable[str]) -> frozenset[str]:
        """The union of the scopes of the mapped groups among `groups` (groups are compared exactly)."""
        found: set[str] = set()
        for group in groups:
            found |= self.roles.get(group, frozenset())
        return frozenset(found)

    def mapped(self, groups: Iterable[str]) -> list[str]:
        """The groups among `groups` that the mapping names, sorted (what a session needs to remember)."""
        return sorted({g for g in groups if g in self.roles})

    def principal(self, user: str, groups: Iterable[str]) -> Principal | None:
        """Who `user` acts as with these groups: `sso:<user>` with the scopes they grant; None when they grant
        none."""
        scopes = self.scopes_of(groups)
        if not scopes:
            return None
        return Principal(
            principal_id(user),
            can_read="read" in scopes or "operator" in scopes,
            is_operator="operator" in scopes,
            scopes=frozenset(scopes & OPERATOR_SCOPES),
        )


def principal_id(user: str) -> str:
    """`sso:<user>`, the user name cut to what the audit log keeps."""
    return f"{SSO_PREFIX}{user[:_MAX_NAME]}"


def session_key_problem(key: bytes | None) -> str | None:
    """Why `key` may not sign the console's sessions in production (None: it may)."""
    if key is None:
        return "set ESI_CONSOLE_SECRET (at least 32 random characters, the same on every API replica)"
    text = key.decode("utf-8", "replace").strip()
    if len(text) < MIN_SESSION_KEY_CHARS:
        return f"ESI_CONSOLE_SECRET must have at least {MIN_SESSION_KEY_CHARS} characters (it signs the sessions)"
    if text.lower() in DEMO_SESSION_KEYS or len(set(text)) < 8:
        return "ESI_CONSOLE_SECRET is a demo or example value: draw a random one (openssl rand -base64 32)"
    return None


def _check_url(name: str, url: str, *, production: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise OidcConfigError(f"{name} must be an http(s) URL, not {url!r}")
    if production and parts.scheme != "https":
        raise OidcConfigError(f"ESI_ENV=production: {name} must be https, not {url!r}")
    return url


@dataclass(frozen=True)
class OidcConfig:
    """The single sign-on settings, validated (`from_settings` of the composition root builds it)."""

    issuer: str
    client_id: str
    redirect_url: str
    roles: RoleMap
    client_secret: str | None = field(default=None, repr=False)
    scopes: str = "openid profile email"
    groups_claim: str = "groups"
    user_claim: str = "preferred_username"
    #: a CA bundle to verify the provider's certificate with (None: the system's)
    ca_file: str | None = None

    @classmethod
    def build(
        cls,
        *,
        issuer: str | None,
        client_id: str | None,
        redirect_url: str | None,
        roles: str | Mapping[str, Any] | None,
        client_secret: str | None = None,
        scopes: str = "openid profile email",
        groups_claim: str = "groups",
        user_claim: str = "preferred_username",
        ca_file: str | None = None,
        production: bool = False,
    ) -> OidcConfig:
        """The settings checked together: every missing one named at once."""
        missing = [
            name
            for name, value in (
                ("ESI_OIDC_ISSUER", issuer),
                ("ESI_OIDC_CLIENT_ID", client_id),
                ("ESI_OIDC_REDIRECT_URL", redirect_url),
                ("ESI_OIDC_ROLES", roles),
            )
            if not value
        ]
        if missing:
            raise OidcConfigError(f"single sign-on needs {', '.join(missing)}")
        if not (issuer and client_id and redirect_url and roles):  # pragma: no cover - checked just above (mypy)
            raise OidcConfigError("single sign-on is incomplete")
        issuer = _check_url("ESI_OIDC_ISSUER", issuer.strip().rstrip("/"), production=production)
        redirect_url = _check_url("ESI_OIDC_REDIRECT_URL", redirect_url.strip(), production=production)
        if not urlsplit(redirect_url).path.endswith("/console/auth/callback"):
            raise OidcConfigError(
                f"ESI_OIDC_REDIRECT_URL must be the console's callback, https://<esi's address>/console/auth/callback, "
                f"not {redirect_url!r}"
            )
        words = scopes.split()
        if "openid" not in words:
            raise OidcConfigError(f"ESI_OIDC_SCOPES must include openid: {scopes!r}")
        for name, path in (("ESI_OIDC_GROUPS_CLAIM", groups_claim), ("ESI_OIDC_USER_CLAIM", user_claim)):
            if not _CLAIM_PATH_RE.match(path):
                raise OidcConfigError(f"{name} must be a claim's name or a dotted path to it, not {path!r}")
        return cls(
            issuer=issuer,
            client_id=client_id.strip(),
            redirect_url=redirect_url,
            roles=RoleMap.parse(roles),
            client_secret=client_secret or None,
            scopes=" ".join(words),
            groups_claim=groups_claim,
            user_claim=user_claim,
            ca_file=ca_file,
        )

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def user_of(self, claims: Mapping[str, Any]) -> str | None:
        """The person's name: the user claim, else the subject."""
        for path in (self.user_claim, "sub"):
            values = claim_values(claims, path)
            if values and values[0].strip():
                return values[0].strip()
        return None

    def groups_of(self, claims: Mapping[str, Any]) -> list[str]:
        """The person's groups, as the groups claim holds them."""
        return claim_values(claims, self.groups_claim)
