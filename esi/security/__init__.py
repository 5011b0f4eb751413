"""Security at esi's edges: who may call the HTTP API, and TLS everywhere. Nothing here knows the web framework.

- `esi.security.scopes`: principals and their scopes (`Principal`, `SendScope`, `require_send/read/operator`);
- `esi.security.clients`: the clients file (`ClientConfig`, `parse_clients`, `make_client_entry`);
- `esi.security.hashing`: argon2id hashes of passwords and API keys;
- `esi.security.auth`: the registry that authenticates callers, with its verification cache (`ClientRegistry`);
- `esi.security.demo`: the demo credentials and the policy that picks the registry (`load_registry`);
- `esi.security.tls`: TLS to RabbitMQ, to Creatio and the DMS, and for the API itself.

The HTTP glue (from a request to its `Principal`) is `esi.api.auth`.
"""

from esi.security.auth import API_KEY_HEADER, ClientRegistry, generate_api_key
from esi.security.clients import ClientConfig, ClientsConfigError, make_client_entry, parse_clients
from esi.security.demo import (
    DEMO_CLIENT_ID,
    DEMO_PASSWORD,
    demo_client_ids,
    demo_registry,
    is_demo_registry,
    load_registry,
)
from esi.security.hashing import hash_secret
from esi.security.scopes import Principal, ScopeError, SendScope, require_operator, require_read, require_send
from esi.security.tls import amqp_ssl_context, amqp_ssl_context_for_url, http_verify, uvicorn_ssl_kwargs

__all__ = [
    "API_KEY_HEADER",
    "DEMO_CLIENT_ID",
    "DEMO_PASSWORD",
    "ClientConfig",
    "ClientRegistry",
    "ClientsConfigError",
    "Principal",
    "ScopeError",
    "SendScope",
    "amqp_ssl_context",
    "amqp_ssl_context_for_url",
    "demo_client_ids",
    "demo_registry",
    "generate_api_key",
    "hash_secret",
    "http_verify",
    "is_demo_registry",
    "load_registry",
    "make_client_entry",
    "parse_clients",
    "require_operator",
    "require_read",
    "require_send",
    "uvicorn_ssl_kwargs",
]
