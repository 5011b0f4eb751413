"""Who may call the HTTP API, and what each caller may do.

Clients authenticate with HTTP Basic (what 1C's `HTTPСоединение` sends natively: user and password arguments) or an
API key in the `X-API-Key` header. An API key has the form `<client_id>.<secret>`: the id in front lets the key be
checked against that one client's hash, instead of against every client's (argon2 is slow on purpose, so a lookup
that tried each hash in turn would hand an attacker an amplifier). `generate_api_key` makes one.

The clients file holds argon2id hashes only — never a password or a key — and each client's scopes::

    {"clients": [
      {"id": "1c-erp", "password_hash": "$argon2id$v=19$...",
       "send": ["dms:create_user", "crm:*"], "read": true, "operator": false},
      {"id": "ops", "api_key_hashes": ["$argon2id$v=19$..."], "send": [], "read": false, "operator": true}
    ]}

(a TOML file with `[[clients]]` tables holds the same; `make_client_entry` writes one entry.) Scopes are least
privilege by default: a client may send only the `target:message_type` pairs it lists (`*` is a wildcard on either
side, a bare `*` means everything), reads outcomes only with `"read": true` — and then only of the requests it sent
itself: `Principal.client_id` is what the store records as a request's sender — and uses `/dlq` and replay only with
`"operator": true`.

Timing: argon2's verify compares in constant time; for an unknown client id, or a client without that kind of
secret, the secret is verified against a dummy hash made with the same parameters (as many times as the client with
the most API keys has keys), so a failure takes the same time whether the client exists or not. Headers that name no
client (none, malformed, another scheme) are refused at once: there is nothing to enumerate.

The verification cache — why it is safe. An argon2id verify costs 0.1-0.3 s of CPU here (64 MiB, 3 passes); a 1C
client posting thousands of requests with the same credentials would spend the service's CPU on hashing. After a
*successful* verify the registry remembers, for `cache_ttl` seconds (60 by default), an HMAC-SHA256 of the secret
under a random key made at start-up and never stored, together with the argon2 hash it was verified against. A later
request with the same secret matches the HMAC and skips argon2. This is safe because:

* only a secret that argon2 accepted is ever cached, and it is matched by a keyed HMAC, so a wrong secret always
  goes to argon2: guessing costs exactly what it costs without the cache;
* what is cached is neither the secret nor a fast unkeyed hash of it: a leaked cache without the process's key
  cannot be brute-forced offline, and nothing is written anywhere;
* an entry is bound to the hash it was verified against: once the clients file is reloaded with a new password or
  key (or the client removed), the old secret misses the cache at once, whatever its TTL;
* the TTL bounds how long a revoked credential could outlive a reload that did not happen, and the size is bounded.

Failures are logged on the logger `esi.security.auth` with the client id (as the caller claimed it, quoted) and the
caller's address — never the secret, nor the header that carries it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.security import APIKeyHeader
from fastapi.security.base import SecurityBase

from esi.api.errors import ApiError
from esi.messages.catalog import Catalog

__all__ = [
    "API_KEY_HEADER",
    "ClientConfig",
    "ClientRegistry",
    "ClientsConfigError",
    "DEMO_CLIENT_ID",
    "DEMO_PASSWORD",
    "Principal",
    "SendScope",
    "demo_client_ids",
    "demo_registry",
    "generate_api_key",
    "hash_secret",
    "is_demo_registry",
    "load_registry",
    "make_client_entry",
    "principal_dependency",
    "require_operator",
    "require_read",
    "require_send",
]

log = logging.getLogger("esi.security.auth")

DEMO_CLIENT_ID = "demo"
DEMO_PASSWORD = "demo"
API_KEY_HEADER = "X-API-Key"
REALM = "esi"
WWW_AUTHENTICATE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
#: no ':' (it ends the user in HTTP Basic) and no '.' (it ends the id in an API key)
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_@\-]{0,63}$"
_CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)
_SCOPE_PART_RE = re.compile(r"^(\*|[a-z0-9][a-z0-9_]{0,63})$")
#: a header longer than this is refused before any hashing
_MAX_CREDENTIAL_CHARS = 4096
#: keys that must never appear in a clients file: they would hold a secret in clear
_PLAINTEXT_KEYS = frozenset({"password", "api_key", "apikey", "api_keys", "secret", "key", "token"})
_ENTRY_KEYS = frozenset({"id", "client_id", "password_hash", "api_key_hash", "api_key_hashes", "send", "read",
                         "operator", "description", "comment"})


class ClientsConfigError(ValueError):
    """The clients file (or JSON) is malformed, names an unknown scope, or holds a secret in clear."""


#: verifies any argon2 hash: the parameters are read from the hash itself
_VERIFIER = argon2.PasswordHasher()


def _default_hasher() -> argon2.PasswordHasher:
    # argon2id with RFC 9106's second recommended profile (64 MiB, 3 passes, 4 lanes): argon2-cffi's default
    return argon2.PasswordHasher()


def hash_secret(secret: str, *, hasher: argon2.PasswordHasher | None = None) -> str:
    """The argon2id hash of a password or an API key, for the clients file."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("a password or an API key cannot be empty")
    return (hasher or _default_hasher()).hash(secret)


def generate_api_key(client_id: str) -> str:
    """A new random API key for `client_id`: `<client_id>.<43 random URL-safe characters>` (256 bits)."""
    _check_client_id(client_id)
    return f"{client_id}.{secrets.token_urlsafe(32)}"


def _check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not _CLIENT_ID_RE.match(client_id):
        raise ClientsConfigError(
            f"client id {client_id!r} must be 1-64 letters, digits, '_', '-' or '@' (no ':' nor '.')")
    return client_id


# --- scopes and principals ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SendScope:
    """`target:message_type`, either side possibly `*`."""

    target: str
    message_type: str

    @classmethod
    def parse(cls, text: str, catalog: Catalog | None = None) -> "SendScope":
        if not isinstance(text, str):
            raise ClientsConfigError(f"send scope {text!r} must be a string such as 'dms:create_user' or 'crm:*'")
        value = text.strip().lower()
        target, sep, message_type = value.partition(":")
        if not sep:
            if value != "*":
                raise ClientsConfigError(f"send scope {text!r} must be '<target>:<message_type>' (or '*')")
            target, message_type = "*", "*"
        if not _SCOPE_PART_RE.match(target) or not _SCOPE_PART_RE.match(message_type):
            raise ClientsConfigError(f"send scope {text!r} must be '<target>:<message_type>', each a name or '*'")
        if catalog is None:  # the systems this process runs with
            from esi.systems.registry import current

            catalog = current().catalog
        targets = catalog.targets()
        if target != "*" and target not in targets:
            raise ClientsConfigError(f"send scope {text!r}: unknown target {target!r}; known: {', '.join(targets)}")
        if message_type != "*":
            known = sorted({t for tg in (targets if target == "*" else [target]) for t in catalog.requests_for(tg)})
            if message_type not in known:
                raise ClientsConfigError(
                    f"send scope {text!r}: {message_type!r} is not a request of {target!r}; known: {', '.join(known)}")
        return cls(target, message_type)

    def allows(self, target: str, message_type: str) -> bool:
        return self.target in ("*", target) and self.message_type in ("*", message_type)

    def __str__(self) -> str:
        return f"{self.target}:{self.message_type}"


@dataclass(frozen=True)
class Principal:
    """An authenticated client and what it may do."""

    client_id: str
    send_scopes: tuple[SendScope, ...] = ()
    can_read: bool = False
    is_operator: bool = False

    def can_send(self, target: str, message_type: str) -> bool:
        target = target.strip().lower()
        message_type = message_type.strip().lower()
        return any(scope.allows(target, message_type) for scope in self.send_scopes)


def require_send(principal: Principal, target: str, message_type: str) -> None:
    """403 unless `principal` may send `message_type` to `target` (call it with the validated, normalised pair)."""
    if not principal.can_send(target, message_type):
        raise ApiError(403, "forbidden",
                       f"client {principal.client_id!r} may not send {message_type!r} requests to {target!r}")


def require_read(principal: Principal, request_id: str, sender_client_id: str | None) -> None:
    """403 for a client without the read scope; 404 — exactly as for an unknown id — for another client's request."""
    if not principal.can_read:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not read the outcome of requests")
    if sender_client_id is None or not hmac.compare_digest(sender_client_id.encode(), principal.client_id.encode()):
        raise ApiError(404, "unknown_request", f"no request with request_id {request_id!r}")


def require_operator(principal: Principal) -> None:
    """403 unless `principal` may use the operator endpoints (/dlq, replay)."""
    if not principal.is_operator:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not use the operator endpoints")


# --- the clients' configuration -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientConfig:
    """One client as configured: its hashes and its scopes."""

    client_id: str
    password_hash: str | None = None
    api_key_hashes: tuple[str, ...] = ()
    send: tuple[SendScope, ...] = ()
    read: bool = False
    operator: bool = False

    @property
    def principal(self) -> Principal:
        return Principal(self.client_id, self.send, self.read, self.operator)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], *, where: str = "entry", catalog: Catalog | None = None) -> "ClientConfig":
        if not isinstance(entry, Mapping):
            raise ClientsConfigError(f"{where}: a client must be an object, not {type(entry).__name__}")
        plaintext = sorted(k for k in entry if str(k).lower() in _PLAINTEXT_KEYS)
        if plaintext:
            raise ClientsConfigError(
                f"{where}: {', '.join(plaintext)} would hold a secret in clear; the clients file holds argon2 hashes "
                "only (password_hash, api_key_hashes): make them with esi.security.auth.make_client_entry")
        unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
        if unknown:
            raise ClientsConfigError(f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_KEYS))}")
        if "id" in entry and "client_id" in entry:
            raise ClientsConfigError(f"{where}: give either id or client_id, not both")
        client_id = _check_client_id(entry.get("id", entry.get("client_id")))
        where = f"{where} ({client_id})"
        password_hash = entry.get("password_hash")
        if password_hash is not None:
            _check_hash(password_hash, f"{where}: password_hash")
        key_hashes = entry.get("api_key_hashes", [])
        if "api_key_hash" in entry:
            if "api_key_hashes" in entry:
                raise ClientsConfigError(f"{where}: give either api_key_hash or api_key_hashes, not both")
            key_hashes = [entry["api_key_hash"]]
        if not isinstance(key_hashes, list):
            raise ClientsConfigError(f"{where}: api_key_hashes must be a list of argon2 hashes")
        for i, h in enumerate(key_hashes):
            _check_hash(h, f"{where}: api_key_hashes[{i}]")
        if password_hash is None and not key_hashes:
            raise ClientsConfigError(f"{where}: a client needs a password_hash or an api_key_hashes entry")
        send = entry.get("send", [])
        if not isinstance(send, list):
            raise ClientsConfigError(f"{where}: send must be a list such as [\"dms:create_user\", \"crm:*\"]")
        try:
            scopes = tuple(SendScope.parse(s, catalog) for s in send)
        except ClientsConfigError as exc:
            raise ClientsConfigError(f"{where}: {exc}") from None
        flags = {}
        for name in ("read", "operator"):
            value = entry.get(name, False)
            if not isinstance(value, bool):
                raise ClientsConfigError(f"{where}: {name} must be true or false")
            flags[name] = value
        return cls(client_id, password_hash, tuple(key_hashes), scopes, flags["read"], flags["operator"])


def _check_hash(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.startswith("$argon2"):
        raise ClientsConfigError(f"{where} is not an argon2 hash (it must start with $argon2id$); a clients file "
                                 "never holds a secret in clear: make the hash with esi.security.auth.hash_secret")
    try:
        argon2.extract_parameters(value)
    except InvalidHashError:
        raise ClientsConfigError(f"{where} is not a well-formed argon2 hash") from None


def parse_clients(data: Any, *, source: str = "clients", catalog: Catalog | None = None) -> list[ClientConfig]:
    """Clients from parsed JSON/TOML: `{"clients": [...]}` or a bare list of entries."""
    if isinstance(data, Mapping):
        extra = sorted(str(k) for k in data if k != "clients")
        if extra:
            raise ClientsConfigError(f"{source}: unknown top-level keys {', '.join(extra)}; expected only 'clients'")
        data = data.get("clients")
    if not isinstance(data, list):
        raise ClientsConfigError(f"{source}: expected {{\"clients\": [...]}} or a list of clients")
    clients = [ClientConfig.from_entry(e, where=f"{source}: clients[{i}]", catalog=catalog) for i, e in enumerate(data)]
    seen: set[str] = set()
    for client in clients:
        if client.client_id in seen:
            raise ClientsConfigError(f"{source}: client id {client.client_id!r} appears twice")
        seen.add(client.client_id)
    return clients


def make_client_entry(client_id: str, password: str | None = None, api_key: str | None = None,
                      send: Sequence[str] | None = None, read: bool = True, operator: bool = False, *,
                      hasher: argon2.PasswordHasher | None = None) -> dict[str, Any]:
    """One client's entry for the clients file, with its secrets hashed (for a CLI `esi clients add`).

    `api_key` must be `<client_id>.<secret>` (see `generate_api_key`). `send` lists `target:message_type` scopes;
    none by default.
    """
    _check_client_id(client_id)
    if password is None and api_key is None:
        raise ValueError("give a password, an API key, or both")
    entry: dict[str, Any] = {"id": client_id}
    if password is not None:
        entry["password_hash"] = hash_secret(password, hasher=hasher)
    if api_key is not None:
        if not api_key.startswith(f"{client_id}.") or len(api_key) <= len(client_id) + 1:
            raise ValueError(f"an API key of {client_id!r} must look like '{client_id}.<secret>'; "
                             "make one with generate_api_key")
        entry["api_key_hashes"] = [hash_secret(api_key, hasher=hasher)]
    scopes = [str(SendScope.parse(s)) for s in (send or [])]
    entry.update({"send": scopes, "read": bool(read), "operator": bool(operator)})
    return entry


# --- the registry ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Credentials:
    method: str  # "basic" | "api_key"
    client_id: str
    #: what the clients file holds the hash of: the password, or the whole API key
    secret: str = field(repr=False)


@dataclass
class _CacheEntry:
    client_id: str
    method: str
    verified_hash: str
    expires: float


class ClientRegistry:
    """The configured clients; `authenticate` turns request headers into a `Principal` or a 401."""

    def __init__(self, clients: Iterable[ClientConfig], *, cache_ttl: float = 60.0, cache_size: int = 10_000,
                 max_concurrent_verifications: int = 2, demo: bool = False, source: str | None = None) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, _CacheEntry] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        # argon2 runs on threads of its own, a few at a time: a flood of wrong passwords queues there instead of
        # taking every core (and the event loop's default executor) away from the rest of the service
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent_verifications))
        self._executor = ThreadPoolExecutor(max_workers=max(1, max_concurrent_verifications),
                                            thread_name_prefix="esi-argon2")
        self.demo = demo
        #: the file this registry was read from, for `reload()`
        self.source = source
        self._clients: dict[str, ClientConfig] = {}
        self._dummy_hash = ""
        self._max_key_hashes = 1
        self.set_clients(clients)

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "ESI_CLIENTS_JSON", **kwargs: Any) -> "ClientRegistry":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClientsConfigError(f"{source} is not valid JSON: {exc}") from None
        return cls(parse_clients(data, source=source), **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> "ClientRegistry":
        """A JSON file, or TOML when its name ends in .toml."""
        path = Path(path)
        clients = _read_clients_file(path)
        return cls(clients, source=str(path), **kwargs)

    def reload(self) -> None:
        """Read the file this registry came from again (e.g. on SIGHUP); cached verifications of changed or removed
        credentials stop matching at once."""
        if self.source is None:
            raise ClientsConfigError("this registry was not read from a file")
        self.set_clients(_read_clients_file(Path(self.source)))

    def set_clients(self, clients: Iterable[ClientConfig]) -> None:
        """Replace the clients at once."""
        table: dict[str, ClientConfig] = {}
        for client in clients:
            if client.client_id in table:
                raise ClientsConfigError(f"client id {client.client_id!r} appears twice")
            table[client.client_id] = client
        if not table:
            raise ClientsConfigError("no clients are configured: nobody could use the API")
        hashes = [h for c in table.values() for h in ((c.password_hash,) if c.password_hash else ()) + c.api_key_hashes]
        # the dummy is made with the parameters the clients' hashes use most, so that it costs what they cost
        params = [argon2.extract_parameters(h) for h in hashes]
        common = max(params, key=params.count)
        dummy = argon2.PasswordHasher.from_parameters(common).hash(secrets.token_urlsafe(16))
        with self._lock:
            self._clients = table
            self._dummy_hash = dummy
            self._max_key_hashes = max([len(c.api_key_hashes) for c in table.values()] + [1])
            # cached verifications stay valid only while their hash is still the client's (see _from_cache)

    # --- looking up ---------------------------------------------------------------------------------------------

    @property
    def client_ids(self) -> list[str]:
        return sorted(self._clients)

    def get(self, client_id: str) -> Principal | None:
        client = self._clients.get(client_id)
        return client.principal if client is not None else None

    def clients(self) -> list[ClientConfig]:
        return [self._clients[c] for c in sorted(self._clients)]

    # --- authenticating -----------------------------------------------------------------------------------------

    def authenticate(self, authorization_header: str | None, api_key_header: str | None, *,
                     remote: str | None = None) -> Principal:
        """The client these headers prove; `ApiError(401)` without credentials or with wrong ones.

        An `X-API-Key` header, when present, is used alone; otherwise `Authorization: Basic`. Blocking (argon2 on a
        cache miss): call `authenticate_async` from the event loop.
        """
        credentials = self._parse(authorization_header, api_key_header, remote)
        principal = self._from_cache(credentials)
        if principal is not None:
            return principal
        return self._verify(credentials, remote)

    async def authenticate_async(self, authorization_header: str | None, api_key_header: str | None, *,
                                 remote: str | None = None) -> Principal:
        """`authenticate` for async code: a cache hit answers at once; argon2 runs in a worker thread."""
        credentials = self._parse(authorization_header, api_key_header, remote)
        principal = self._from_cache(credentials)
        if principal is not None:
            return principal
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._verify, credentials, remote)

    def _parse(self, authorization: str | None, api_key: str | None, remote: str | None) -> _Credentials:
        if api_key is not None and api_key.strip():
            value = api_key.strip()
            client_id, sep, rest = value.partition(".")
            if len(value) > _MAX_CREDENTIAL_CHARS or not sep or not rest or not client_id:
                # no client id to look up, so nothing to learn from the time a refusal takes: refused at once
                self._fail("malformed API key", client_id[:64] if sep else None, "api_key", remote)
            return _Credentials("api_key", client_id, value)
        if authorization is None or not authorization.strip():
            log.info("authentication missing (remote %s)", remote or "unknown")
            raise ApiError(401, "unauthorized",
                           f"authentication required: HTTP Basic, or an API key in the {API_KEY_HEADER} header",
                           headers=dict(WWW_AUTHENTICATE))
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            self._fail(f"unsupported scheme {scheme[:20]!r}", None, "basic", remote)
        encoded = encoded.strip()
        try:
            if len(encoded) > _MAX_CREDENTIAL_CHARS:
                raise ValueError("too long")
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._fail("malformed Basic credentials", None, "basic", remote)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # RFC 7617: a client that announces no charset may send ISO-8859-1
        user, sep, password = text.partition(":")
        if not sep:
            self._fail("malformed Basic credentials", None, "basic", remote)
        return _Credentials("basic", user, password)

    def _cache_token(self, credentials: _Credentials) -> bytes:
        message = b"\0".join([credentials.method.encode(), credentials.client_id.encode("utf-8", "surrogatepass"),
                              credentials.secret.encode("utf-8", "surrogatepass")])
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    def _current_hashes(self, client: ClientConfig | None, method: str) -> tuple[str, ...]:
        if client is None:
            return ()
        if method == "basic":
            return (client.password_hash,) if client.password_hash else ()
        return client.api_key_hashes

    def _from_cache(self, credentials: _Credentials) -> Principal | None:
        if self._cache_ttl <= 0:
            return None
        token = self._cache_token(credentials)
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(token)
            if entry is None:
                return None
            client = self._clients.get(entry.client_id)
            if (entry.expires <= now or client is None or entry.client_id != credentials.client_id
                    or entry.verified_hash not in self._current_hashes(client, credentials.method)):
                del self._cache[token]
                return None
            return client.principal

    def _remember(self, credentials: _Credentials, verified_hash: str) -> None:
        if self._cache_ttl <= 0:
            return
        token = self._cache_token(credentials)
        now = time.monotonic()
        with self._lock:
            self._cache[token] = _CacheEntry(credentials.client_id, credentials.method, verified_hash,
                                             now + self._cache_ttl)
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _check(self, encoded_hash: str, secret: str) -> bool:
        with self._slots:
            try:
                return _VERIFIER.verify(encoded_hash, secret)
            except (VerificationError, InvalidHashError):
                return False

    def _burn(self, rounds: int) -> None:
        for _ in range(rounds):
            self._check(self._dummy_hash, "\0not-a-secret")

    def _verify(self, credentials: _Credentials, remote: str | None) -> Principal:
        client = self._clients.get(credentials.client_id)
        hashes = self._current_hashes(client, credentials.method)
        rounds = 1 if credentials.method == "basic" else self._max_key_hashes
        for encoded in hashes:
            if self._check(encoded, credentials.secret):
                self._remember(credentials, encoded)
                assert client is not None
                return client.principal
        # the same number of argon2 runs whether the client exists, has this kind of secret, or not
        self._burn(max(0, rounds - len(hashes)) if hashes else rounds)
        if client is None:
            reason = "unknown client"
        elif not hashes:
            reason = "no password configured" if credentials.method == "basic" else "no API key configured"
        else:
            reason = "wrong password" if credentials.method == "basic" else "wrong API key"
        self._fail(reason, credentials.client_id, credentials.method, remote)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, reason: str, client_id: str | None, method: str, remote: str | None) -> None:
        shown = repr(client_id[:64]) if client_id is not None else "(none)"
        log.warning("authentication failed: %s (client %s, %s, remote %s)", reason, shown,
                    "X-API-Key" if method == "api_key" else "Basic", remote or "unknown")
        raise ApiError(401, "unauthorized", "invalid credentials", headers=dict(WWW_AUTHENTICATE))


def _read_clients_file(path: Path) -> list[ClientConfig]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ClientsConfigError(f"cannot read the clients file {str(path)!r}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".toml":
        try:
            data: Any = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ClientsConfigError(f"the clients file {str(path)!r} is not valid TOML: {exc}") from None
    else:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ClientsConfigError(f"the clients file {str(path)!r} is not valid JSON: {exc}") from None
    return parse_clients(data, source=str(path))


# --- demo credentials -----------------------------------------------------------------------------------------------

def demo_registry(**kwargs: Any) -> ClientRegistry:
    """One client `demo`/`demo` with every scope: for `ESI_ENV=demo` without a clients file, and for tests."""
    client = ClientConfig(DEMO_CLIENT_ID, password_hash=hash_secret(DEMO_PASSWORD), send=(SendScope("*", "*"),),
                          read=True, operator=True)
    return ClientRegistry([client], demo=True, **kwargs)


def demo_client_ids(registry: ClientRegistry) -> list[str]:
    """The clients that use demo credentials: the id `demo`, or the password `demo` (one argon2 run per client)."""
    found = []
    for client in registry.clients():
        if client.client_id.lower() == DEMO_CLIENT_ID:
            found.append(client.client_id)
            continue
        for encoded in filter(None, (client.password_hash,)):
            try:
                _VERIFIER.verify(encoded, DEMO_PASSWORD)
            except (VerificationError, InvalidHashError):
                continue
            found.append(client.client_id)
    return found


def is_demo_registry(registry: ClientRegistry) -> bool:
    """Whether production must refuse this registry: it is `demo_registry()` or some client uses demo credentials."""
    return registry.demo or bool(demo_client_ids(registry))


def load_registry(*, clients_file: str | None = None, clients_json: str | None = None,
                  production: bool, **kwargs: Any) -> ClientRegistry:
    """The registry from `ESI_CLIENTS_FILE` or `ESI_CLIENTS_JSON`; the demo one when neither is set, except in
    production, which also refuses demo credentials."""
    if clients_file and clients_json:
        raise ClientsConfigError("set ESI_CLIENTS_FILE or ESI_CLIENTS_JSON, not both")
    if clients_file:
        registry = ClientRegistry.from_file(clients_file, **kwargs)
    elif clients_json:
        registry = ClientRegistry.from_json(clients_json, **kwargs)
    elif production:
        raise ClientsConfigError("ESI_ENV=production needs the API's clients: set ESI_CLIENTS_FILE or ESI_CLIENTS_JSON")
    else:
        log.warning("no ESI_CLIENTS_FILE/ESI_CLIENTS_JSON: the API accepts the demo client %r with the demo password "
                    "and every scope (refused with ESI_ENV=production)", DEMO_CLIENT_ID)
        return demo_registry(**kwargs)
    if production:
        demo = demo_client_ids(registry)
        if demo:
            raise ClientsConfigError(f"ESI_ENV=production refuses demo credentials (clients: {', '.join(demo)})")
    return registry


# --- FastAPI --------------------------------------------------------------------------------------------------------

def principal_dependency(registry: ClientRegistry) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency returning the caller's `Principal` (401 otherwise); both schemes show in the OpenAPI.

        current = principal_dependency(registry)
        async def endpoint(principal: Principal = Depends(current)): ...
    """
    class _BasicHeader(SecurityBase):
        """Declares HTTP Basic in the OpenAPI and hands over the raw header (FastAPI's HTTPBasic answers a
        malformed header with its own 401, which would bypass the error shape and the failure log)."""

        def __init__(self) -> None:
            self.model = HTTPBaseModel(scheme="basic", description="the client id and its password")
            self.scheme_name = "basic"

        async def __call__(self, request: Request) -> str | None:
            return request.headers.get("authorization")

    basic = _BasicHeader()
    api_key = APIKeyHeader(name=API_KEY_HEADER, scheme_name="apiKey", auto_error=False,
                           description="<client_id>.<secret>")

    async def current_principal(request: Request, authorization: str | None = Depends(basic),
                                key: str | None = Depends(api_key)) -> Principal:
        return await registry.authenticate_async(authorization, key, remote=remote_of(request))

    return current_principal


def remote_of(request: Request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else None


async def authenticate_request(registry: ClientRegistry, request: Request) -> Principal:
    """What `principal_dependency` gives, for code outside FastAPI's dependencies (esi.api.hot)."""
    headers = request.headers
    return await registry.authenticate_async(headers.get("authorization"), headers.get(API_KEY_HEADER),
                                             remote=remote_of(request))
