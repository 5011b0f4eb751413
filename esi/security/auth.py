"""Authentication: turning what a caller presents into a `Principal`, against the argon2 hashes of the clients file.

Clients authenticate with HTTP Basic (what 1C's `HTTPСоединение` sends natively: user and password arguments) or an
API key in the `X-API-Key` header. An API key has the form `<client_id>.<secret>`: the id in front lets the key be
checked against that one client's hash, instead of against every client's (argon2 is slow on purpose, so a lookup
that tried each hash in turn would hand an attacker an amplifier). `generate_api_key` makes one.

This module knows header values, not HTTP requests: `esi.api.auth` hands it the headers of each request.

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
* an entry is bound to the hash it was verified against: once the clients are replaced (`set_clients`) with a new
  password or key (or the client removed), the old secret misses the cache at once, whatever its TTL;
* the TTL bounds how long a revoked credential could outlive a reload that did not happen, and the size is bounded.

Under load (`authenticate_async`), one verification runs for all the requests that present the same credentials
while it runs, instead of one each: when an entry expired, every request of the next fraction of a second missed
the cache and queued an argon2 run of its own, two at a time, stalling the API for up to 20 s at 250 requests/s
(docs/performance.md). Concurrent identical guesses of a wrong secret share one run too: a guess still costs one
argon2 run, as each different secret does. And an entry used in the last sixth of its TTL is renewed by a
verification in the background, while it keeps answering: a client in steady use never waits for argon2 after its
first request. The renewal verifies the secret against the client's current hash, as a miss would.

Throttling (`esi.security.throttle`). Each refusal of argon2 counts against the pair (claimed client id, source
address); after `max_failures` within the window every attempt of that pair — a correct secret too — is refused with
429 and `Retry-After` before the cache or argon2 is consulted, until the window has passed. The check is made again
on the worker thread just before hashing, so that guesses queued behind the verifications that crossed the
threshold are refused without hashing as well. Malformed or missing headers name no client: refused at once, as
before.

Failures are logged on this module's logger (`esi.security.auth`) with the client id (as the caller claimed it,
quoted) and the caller's address — never the secret, nor the header that carries it.

One job in one module, though over 400 lines: who is calling — the credentials' parsing, their verification with
its cache and single flight, and the throttle's checks around the hashing, which must stay in one order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esi import metrics
from esi.errors import ApiError
from esi.messages.catalog import Catalog
from esi.security.clients import ClientConfig, ClientsConfigError, check_client_id, parse_clients, read_clients_file
from esi.security.hashing import dummy_hash_like, verify_secret
from esi.security.scopes import Principal
from esi.security.throttle import SignInThrottle, ThrottleEvent

__all__ = ["API_KEY_HEADER", "REALM", "ClientRegistry", "generate_api_key"]

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
REALM = "esi"
WWW_AUTHENTICATE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
#: a header longer than this is refused before any hashing
_MAX_CREDENTIAL_CHARS = 4096
#: a cached verification with less than this part of its TTL left is renewed in the background when used
RENEW_FRACTION = 1 / 6


def generate_api_key(client_id: str) -> str:
    """A new random API key for `client_id`: `<client_id>.<43 random URL-safe characters>` (256 bits)."""
    check_client_id(client_id)
    return f"{client_id}.{secrets.token_urlsafe(32)}"


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

    def __init__(
        self,
        clients: Iterable[ClientConfig],
        *,
        cache_ttl: float = 60.0,
        cache_size: int = 10_000,
        max_concurrent_verifications: int = 2,
        demo: bool = False,
        throttle: SignInThrottle | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, _CacheEntry] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        # argon2 runs on threads of its own, a few at a time: a flood of wrong passwords queues there instead of
        # taking every core (and the event loop's default executor) away from the rest of the service
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent_verifications))
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, max_concurrent_verifications), thread_name_prefix="esi-argon2"
        )
        #: cache token → the verification under way on the event loop (`authenticate_async`)
        self._pending: dict[bytes, asyncio.Future[Principal]] = {}
        #: failed sign-ins per (client id, source address): refused before hashing after too many
        self.throttle = throttle if throttle is not None else SignInThrottle()
        self.demo = demo
        self._clients: dict[str, ClientConfig] = {}
        self._dummy_hash = ""
        self._max_key_hashes = 1
        self.set_clients(clients)

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def from_json(
        cls, text: str | bytes, *, source: str = "ESI_CLIENTS_JSON", catalog: Catalog | None = None, **kwargs: Any
    ) -> ClientRegistry:
        """The clients of a JSON document (`ESI_CLIENTS_JSON`); scopes are checked against `catalog`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClientsConfigError(f"{source} is not valid JSON: {exc}") from None
        return cls(parse_clients(data, source=source, catalog=catalog), **kwargs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, catalog: Catalog | None = None, **kwargs: Any
    ) -> ClientRegistry:
        """A JSON file, or TOML when its name ends in .toml; scopes are checked against `catalog`."""
        path = Path(path)
        return cls(read_clients_file(path, catalog=catalog), **kwargs)

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
        dummy = dummy_hash_like(hashes)
        with self._lock:
            self._clients = table
            self._dummy_hash = dummy
            self._max_key_hashes = max([len(c.api_key_hashes) for c in table.values()] + [1])
            # cached verifications stay valid only while their hash is still the client's (see _from_cache)

    # --- looking up ---------------------------------------------------------------------------------------------

    @property
    def client_ids(self) -> list[str]:
        """The configured clients' ids, sorted."""
        return sorted(self._clients)

    def clients(self) -> list[ClientConfig]:
        """The configured clients, sorted by id."""
        return [self._clients[c] for c in sorted(self._clients)]

    # --- authenticating -----------------------------------------------------------------------------------------

    def authenticate(
        self,
        authorization_header: str | None,
        api_key_header: str | None,
        *,
        remote: str | None = None,
        address: str | None = None,
    ) -> Principal:
        """The client these headers prove; `ApiError(401)` without credentials or with wrong ones, 429 while the
        pair (client id, `address`) is throttled.

        An `X-API-Key` header, when present, is used alone; otherwise `Authorization: Basic`. `remote` is what the
        log shows of the caller, `address` its source address (by default `remote` without its port). Blocking
        (argon2 on a cache miss): call `authenticate_async` from the event loop.
        """
        credentials = self._parse(authorization_header, api_key_header, remote)
        address = _address(address, remote)
        self._check_throttle(credentials, address)
        principal = self._from_cache(credentials)
        if principal is not None:
            return principal
        return self._verify(credentials, remote, address)

    async def authenticate_async(
        self,
        authorization_header: str | None,
        api_key_header: str | None,
        *,
        remote: str | None = None,
        address: str | None = None,
    ) -> Principal:
        """`authenticate` for async code: a cache hit answers at once; argon2 runs in a worker thread, once for all
        the requests that present the same credentials while it runs; a cached verification in the last part of
        its life is renewed in the background while it keeps answering (see the module)."""
        credentials = self._parse(authorization_header, api_key_header, remote)
        address = _address(address, remote)
        self._check_throttle(credentials, address)
        token = self._cache_token(credentials)
        principal, renew = self._cached(credentials, token)
        if principal is not None:
            if renew:
                self._verification(token, credentials, remote, address)
            return principal
        # shielded: a caller that goes away (its client hung up) does not cancel it for the others
        return await asyncio.shield(self._verification(token, credentials, remote, address))

    def throttle_events(self) -> list[ThrottleEvent]:
        """The (client id, address) pairs that started being throttled since the last call (once per window)."""
        return self.throttle.events()

    def _check_throttle(self, credentials: _Credentials, address: str) -> None:
        retry_after = self.throttle.retry_after(credentials.client_id, address)
        if retry_after is not None:
            metrics.AUTH_THROTTLED.inc()
            raise ApiError(
                429,
                "sign_in_throttled",
                f"too many failed sign-ins of this client from this address: every attempt is refused for "
                f"{retry_after} s more",
                headers={"Retry-After": str(retry_after)},
            )

    def _verification(
        self, token: bytes, credentials: _Credentials, remote: str | None, address: str
    ) -> asyncio.Future[Principal]:
        """The argon2 verification of these credentials under way on this loop, or a new one."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(token)
        if pending is None or pending.get_loop() is not loop:
            pending = loop.run_in_executor(self._executor, self._verify, credentials, remote, address)
            self._pending[token] = pending
            pending.add_done_callback(functools.partial(self._verified, token))
        return pending

    def _verified(self, token: bytes, future: asyncio.Future[Principal]) -> None:
        if self._pending.get(token) is future:
            del self._pending[token]
        error = None if future.cancelled() else future.exception()  # retrieved: a renewal may have nobody awaiting
        if error is not None and not isinstance(error, ApiError):  # a refusal was logged by `_fail`; anything else:
            log.warning("argon2 verification failed: %s: %s", type(error).__name__, error)

    def _parse(self, authorization: str | None, api_key: str | None, remote: str | None) -> _Credentials:
        if api_key is not None and api_key.strip():
            value = api_key.strip()
            client_id, sep, rest = value.partition(".")
            if len(value) > _MAX_CREDENTIAL_CHARS or not sep or not rest or not client_id:
                # no client id to look up, so nothing to learn from the time a refusal takes: refused at once
                self._fail("malformed API key", client_id[:64] if sep else None, "api_key", remote, code="malformed")
            return _Credentials("api_key", client_id, value)
        if authorization is None or not authorization.strip():
            log.info("authentication missing (remote %s)", remote or "unknown")
            metrics.child(metrics.AUTH_FAILURES, "missing").inc()
            raise ApiError(
                401,
                "unauthorized",
                f"authentication required: HTTP Basic, or an API key in the {API_KEY_HEADER} header",
                headers=dict(WWW_AUTHENTICATE),
            )
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            self._fail(f"unsupported scheme {scheme[:20]!r}", None, "basic", remote, code="malformed")
        encoded = encoded.strip()
        try:
            if len(encoded) > _MAX_CREDENTIAL_CHARS:
                raise ValueError("too long")
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._fail("malformed Basic credentials", None, "basic", remote, code="malformed")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # RFC 7617: a client that announces no charset may send ISO-8859-1
        user, sep, password = text.partition(":")
        if not sep:
            self._fail("malformed Basic credentials", None, "basic", remote, code="malformed")
        return _Credentials("basic", user, password)

    def _cache_token(self, credentials: _Credentials) -> bytes:
        message = b"\0".join(
            [
                credentials.method.encode(),
                credentials.client_id.encode("utf-8", "surrogatepass"),
                credentials.secret.encode("utf-8", "surrogatepass"),
            ]
        )
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
        return self._cached(credentials, self._cache_token(credentials))[0]

    def _cached(self, credentials: _Credentials, token: bytes) -> tuple[Principal | None, bool]:
        """The principal a cached verification gives (None: none valid), and whether it is due for renewal."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(token)
            if entry is None:
                return None, False
            client = self._clients.get(entry.client_id)
            if (
                entry.expires <= now
                or client is None
                or entry.client_id != credentials.client_id
                or entry.verified_hash not in self._current_hashes(client, credentials.method)
            ):
                del self._cache[token]
                return None, False
            return client.principal, entry.expires - now <= self._cache_ttl * RENEW_FRACTION

    def _remember(self, credentials: _Credentials, verified_hash: str) -> None:
        if self._cache_ttl <= 0:
            return
        token = self._cache_token(credentials)
        now = time.monotonic()
        with self._lock:
            self._cache[token] = _CacheEntry(
                credentials.client_id, credentials.method, verified_hash, now + self._cache_ttl
            )
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _check(self, encoded_hash: str, secret: str) -> bool:
        with self._slots:
            return verify_secret(encoded_hash, secret)

    def _burn(self, rounds: int) -> None:
        for _ in range(rounds):
            self._check(self._dummy_hash, "\0not-a-secret")

    def _verify(self, credentials: _Credentials, remote: str | None, address: str) -> Principal:
        # again, on the worker thread: the verifications queued behind the ones that crossed the threshold
        self._check_throttle(credentials, address)
        client = self._clients.get(credentials.client_id)
        hashes = self._current_hashes(client, credentials.method)
        rounds = 1 if credentials.method == "basic" else self._max_key_hashes
        for encoded in hashes:
            if self._check(encoded, credentials.secret):
                self._remember(credentials, encoded)
                self.throttle.succeeded(credentials.client_id, address)
                assert client is not None  # noqa: S101 - a matching secret implies a client; narrows for mypy
                return client.principal
        # the same number of argon2 runs whether the client exists, has this kind of secret, or not
        self._burn(max(0, rounds - len(hashes)) if hashes else rounds)
        if client is None:
            reason, code = "unknown client", "unknown_client"
        elif not hashes:
            reason = "no password configured" if credentials.method == "basic" else "no API key configured"
            code = "no_secret"
        else:
            reason = "wrong password" if credentials.method == "basic" else "wrong API key"
            code = "wrong_secret"
        self.throttle.failed(credentials.client_id, address)
        self._fail(reason, credentials.client_id, credentials.method, remote, code=code)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, reason: str, client_id: str | None, method: str, remote: str | None, *, code: str) -> None:
        metrics.child(metrics.AUTH_FAILURES, code).inc()
        shown = repr(client_id[:64]) if client_id is not None else "(none)"
        log.warning(
            "authentication failed: %s (client %s, %s, remote %s)",
            reason,
            shown,
            "X-API-Key" if method == "api_key" else "Basic",
            remote or "unknown",
        )
        raise ApiError(401, "unauthorized", "invalid credentials", headers=dict(WWW_AUTHENTICATE))


def _address(address: str | None, remote: str | None) -> str:
    """The source address a throttle counts under: `address`, else `remote` without its port."""
    if address:
        return address
    if not remote:
        return "unknown"
    host, sep, port = remote.rpartition(":")
    return host if sep and port.isdigit() else remote
