"""The demo policy: one client `demo`/`demo` with every scope when no clients are configured — outside production.

`load_clients` is the one place that picks the API's clients from the settings, and the one that refuses demo
credentials (the demo registry itself, or any client named `demo` or using the password `demo`) in production.
"""

from __future__ import annotations

import logging
from typing import Any

from esi.messages.catalog import Catalog
from esi.security.auth import ClientRegistry
from esi.security.clients import ClientConfig, ClientsConfigError
from esi.security.hashing import hash_secret, verify_secret
from esi.security.quota import UNLIMITED
from esi.security.scopes import SendScope

__all__ = ["DEMO_CLIENT_ID", "DEMO_PASSWORD", "demo_client_ids", "demo_registry", "is_demo_registry", "load_clients"]

log = logging.getLogger(__name__)

DEMO_CLIENT_ID = "demo"
DEMO_PASSWORD = "demo"  # noqa: S105 - the documented demo credential, refused outside demo mode


def demo_registry(**kwargs: Any) -> ClientRegistry:
    """One client `demo`/`demo` with every scope and no quota (it stands for the whole site on one machine, the
    benchmark's load included): for `ESI_ENV=demo` without a clients file, and for tests."""
    client = ClientConfig(
        DEMO_CLIENT_ID,
        password_hash=hash_secret(DEMO_PASSWORD),
        send=(SendScope("*", "*"),),
        read=True,
        operator=True,
        quota=UNLIMITED,
        events=("*",),
        feeds=("*",),
    )
    return ClientRegistry([client], demo=True, **kwargs)


def demo_client_ids(registry: ClientRegistry) -> list[str]:
    """The clients that use demo credentials: the id `demo`, or the password `demo` (one argon2 run per client)."""
    return [
        client.client_id
        for client in registry.clients()
        if client.client_id.lower() == DEMO_CLIENT_ID
        or (client.password_hash and verify_secret(client.password_hash, DEMO_PASSWORD))
    ]


def is_demo_registry(registry: ClientRegistry) -> bool:
    """Whether production must refuse this registry: it is `demo_registry()` or some client uses demo credentials."""
    return registry.demo or bool(demo_client_ids(registry))


def load_clients(
    *,
    clients_file: str | None = None,
    clients_json: str | None = None,
    production: bool,
    catalog: Catalog | None = None,
    **kwargs: Any,
) -> ClientRegistry:
    """The clients from `ESI_CLIENTS_FILE` or `ESI_CLIENTS_JSON`, their scopes checked against `catalog` (the
    registry's); the demo ones when neither is set, except in production, which also refuses demo credentials."""
    if clients_file and clients_json:
        raise ClientsConfigError("set ESI_CLIENTS_FILE or ESI_CLIENTS_JSON, not both")
    if clients_file:
        registry = ClientRegistry.from_file(clients_file, catalog=catalog, **kwargs)
    elif clients_json:
        registry = ClientRegistry.from_json(clients_json, catalog=catalog, **kwargs)
    elif production:
        raise ClientsConfigError("ESI_ENV=production needs the API's clients: set ESI_CLIENTS_FILE or ESI_CLIENTS_JSON")
    else:
        log.warning(
            "no ESI_CLIENTS_FILE/ESI_CLIENTS_JSON: the API accepts the demo client %r with the demo password "
            "and every scope (refused with ESI_ENV=production)",
            DEMO_CLIENT_ID,
        )
        return demo_registry(**kwargs)
    if production:
        demo = demo_client_ids(registry)
        if demo:
            raise ClientsConfigError(f"ESI_ENV=production refuses demo credentials (clients: {', '.join(demo)})")
    return registry
