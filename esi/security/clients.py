"""The clients file: its format, its validation, and making its entries.

The clients file holds argon2id hashes only — never a password or a key — and each client's scopes::

    {"clients": [
      {"id": "1c-erp", "password_hash": "$argon2id$v=19$...",
       "send": ["dms:create_user", "crm:*"], "read": true, "operator": false,
       "rate": {"per_second": 200, "burst": 400}, "in_flight": 256},
      {"id": "ops", "api_key_hashes": ["$argon2id$v=19$..."], "send": [], "read": false, "operator": true,
       "rate": "unlimited", "in_flight": "unlimited"}
    ]}

(a TOML file with `[[clients]]` tables holds the same; `make_client_entry` writes one entry). What the scopes allow
is `esi.security.scopes`'s business, the quota (`rate`, `in_flight`; defaults when absent) `esi.security.quota`'s;
checking a caller's secret against the hashes is `esi.security.auth`'s.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2

from esi.messages.catalog import Catalog
from esi.security.hashing import hash_secret, is_argon2_hash
from esi.security.quota import DEFAULT_QUOTA, Quota, parse_quota, quota_entry
from esi.security.scopes import OPERATOR_SCOPES, Principal, ScopeError, SendScope

__all__ = [
    "CLIENT_ID_PATTERN",
    "ClientConfig",
    "ClientsConfigError",
    "check_client_id",
    "make_client_entry",
    "parse_clients",
    "read_clients_file",
]

#: no ':' (it ends the user in HTTP Basic) and no '.' (it ends the id in an API key)
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_@\-]{0,63}$"
_CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)
#: keys that must never appear in a clients file: they would hold a secret in clear
_PLAINTEXT_KEYS = frozenset({"password", "api_key", "apikey", "api_keys", "secret", "key", "token"})
_ENTRY_KEYS = frozenset(
    {
        "id",
        "client_id",
        "password_hash",
        "api_key_hash",
        "api_key_hashes",
        "send",
        "events",
        "feeds",
        "read",
        "operator",
        "scopes",
        "description",
        "comment",
        "rate",
        "in_flight",
    }
)


class ClientsConfigError(ValueError):
    """The clients file (or JSON) is malformed, names an unknown scope, or holds a secret in clear."""


def check_client_id(client_id: object) -> str:
    """`client_id` if it is a valid client id; `ClientsConfigError` otherwise."""
    if not isinstance(client_id, str) or not _CLIENT_ID_RE.match(client_id):
        raise ClientsConfigError(
            f"client id {client_id!r} must be 1-64 letters, digits, '_', '-' or '@' (no ':' nor '.')"
        )
    return client_id


@dataclass(frozen=True)
class ClientConfig:
    """One client as configured: its hashes and its scopes."""

    client_id: str
    password_hash: str | None = None
    api_key_hashes: tuple[str, ...] = ()
    send: tuple[SendScope, ...] = ()
    read: bool = False
    operator: bool = False
    quota: Quota = DEFAULT_QUOTA
    #: the sources whose events it may hand over (`POST /events/<source>/...`): the scope `events:<source>`
    events: tuple[str, ...] = ()
    #: the pull feeds it may read and acknowledge (`GET /feed/<subscriber>`): the scope `feed:<subscriber>`
    feeds: tuple[str, ...] = ()
    #: operator scopes beyond `operator` (`dlq:edit`)
    scopes: frozenset[str] = frozenset()

    @property
    def principal(self) -> Principal:
        """What this client may do, once it has proved who it is."""
        return Principal(
            self.client_id,
            self.send,
            self.read,
            self.operator,
            self.quota,
            event_sources=self.events,
            feeds=self.feeds,
            scopes=self.scopes,
        )

    @classmethod
    def from_entry(
        cls, entry: Mapping[str, Any], *, where: str = "entry", catalog: Catalog | None = None
    ) -> ClientConfig:
        """One entry of the clients file, validated (`where` names it in errors; scopes are checked against
        `catalog`)."""
        if not isinstance(entry, Mapping):
            raise ClientsConfigError(f"{where}: a client must be an object, not {type(entry).__name__}")
        plaintext = sorted(k for k in entry if str(k).lower() in _PLAINTEXT_KEYS)
        if plaintext:
            raise ClientsConfigError(
                f"{where}: {', '.join(plaintext)} would hold a secret in clear; the clients file holds argon2 hashes "
                "only (password_hash, api_key_hashes): make them with esi.security.make_client_entry"
            )
        unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
        if unknown:
            raise ClientsConfigError(
                f"{where}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_KEYS))}"
            )
        if "id" in entry and "client_id" in entry:
            raise ClientsConfigError(f"{where}: give either id or client_id, not both")
        client_id = check_client_id(entry.get("id", entry.get("client_id")))
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
            raise ClientsConfigError(f'{where}: send must be a list such as ["dms:create_user", "crm:*"]')
        try:
            scopes = tuple(SendScope.parse(s, catalog) for s in send)
        except ScopeError as exc:
            raise ClientsConfigError(f"{where}: {exc}") from None
        names: dict[str, tuple[str, ...]] = {}
        for name in ("events", "feeds"):
            value = entry.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ClientsConfigError(f'{where}: {name} must be a list of system codes such as ["crm"] (or ["*"])')
            names[name] = tuple(v.strip().lower() for v in value)
        flags = {}
        for name in ("read", "operator"):
            value = entry.get(name, False)
            if not isinstance(value, bool):
                raise ClientsConfigError(f"{where}: {name} must be true or false")
            flags[name] = value
        try:
            quota = parse_quota(entry, where)
        except ValueError as exc:
            raise ClientsConfigError(str(exc)) from None
        extra = entry.get("scopes", [])
        if not isinstance(extra, list) or any(s not in OPERATOR_SCOPES for s in extra):
            raise ClientsConfigError(f"{where}: scopes must be a list of {', '.join(sorted(OPERATOR_SCOPES))}")
        return cls(
            client_id,
            password_hash,
            tuple(key_hashes),
            scopes,
            flags["read"],
            flags["operator"],
            quota,
            events=names["events"],
            feeds=names["feeds"],
            scopes=frozenset(extra),
        )


def _check_hash(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.startswith("$argon2"):
        raise ClientsConfigError(
            f"{where} is not an argon2 hash (it must start with $argon2id$); a clients file "
            "never holds a secret in clear: make the hash with esi.security.hash_secret"
        )
    if not is_argon2_hash(value):
        raise ClientsConfigError(f"{where} is not a well-formed argon2 hash")


def parse_clients(data: Any, *, source: str = "clients", catalog: Catalog | None = None) -> list[ClientConfig]:
    """Clients from parsed JSON/TOML: `{"clients": [...]}` or a bare list of entries; scopes are checked against
    `catalog` (the default is the built-in one)."""
    if isinstance(data, Mapping):
        extra = sorted(str(k) for k in data if k != "clients")
        if extra:
            raise ClientsConfigError(f"{source}: unknown top-level keys {', '.join(extra)}; expected only 'clients'")
        data = data.get("clients")
    if not isinstance(data, list):
        raise ClientsConfigError(f'{source}: expected {{"clients": [...]}} or a list of clients')
    clients = [ClientConfig.from_entry(e, where=f"{source}: clients[{i}]", catalog=catalog) for i, e in enumerate(data)]
    seen: set[str] = set()
    for client in clients:
        if client.client_id in seen:
            raise ClientsConfigError(f"{source}: client id {client.client_id!r} appears twice")
        seen.add(client.client_id)
    return clients


def read_clients_file(path: Path, *, catalog: Catalog | None = None) -> list[ClientConfig]:
    """The clients of a JSON file, or of a TOML one when its name ends in .toml."""
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
    return parse_clients(data, source=str(path), catalog=catalog)


def make_client_entry(
    client_id: str,
    password: str | None = None,
    api_key: str | None = None,
    send: Sequence[str] | None = None,
    read: bool = True,
    operator: bool = False,
    *,
    rate: float | str | None = None,
    burst: int | None = None,
    in_flight: int | str | None = None,
    hasher: argon2.PasswordHasher | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """One client's entry for the clients file, with its secrets hashed (for a CLI `esi clients add`).

    `api_key` must be `<client_id>.<secret>` (see `esi.security.generate_api_key`). `send` lists
    `target:message_type` scopes, checked against `catalog` when given (the deployment's systems); none by default.
    `rate` (requests per second; `burst` defaults to twice it) and `in_flight` are the client's quota, written out
    with the defaults when not given; "unlimited" for trusted clients.
    """
    check_client_id(client_id)
    if password is None and api_key is None:
        raise ValueError("give a password, an API key, or both")
    entry: dict[str, Any] = {"id": client_id}
    if password is not None:
        entry["password_hash"] = hash_secret(password, hasher=hasher)
    if api_key is not None:
        if not api_key.startswith(f"{client_id}.") or len(api_key) <= len(client_id) + 1:
            raise ValueError(
                f"an API key of {client_id!r} must look like '{client_id}.<secret>'; make one with generate_api_key"
            )
        entry["api_key_hashes"] = [hash_secret(api_key, hasher=hasher)]
    try:
        scopes = [str(SendScope.parse(s, catalog)) for s in (send or [])]
    except ScopeError as exc:
        raise ClientsConfigError(str(exc)) from None
    entry.update({"send": scopes, "read": bool(read), "operator": bool(operator)})
    try:
        entry.update(quota_entry(rate, burst, in_flight))
    except ValueError as exc:
        raise ClientsConfigError(str(exc)) from None
    return entry
