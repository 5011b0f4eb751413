"""Security at esi's edges: who may call the HTTP API, and TLS everywhere. Nothing here knows the web framework.

- `esi.security.scopes`: principals and their scopes (`Principal`, `SendScope`, `require_send/read/operator`);
- `esi.security.clients`: the clients file (`ClientConfig`, `parse_clients`, `make_client_entry`);
- `esi.security.hashing`: argon2id hashes of passwords and API keys;
- `esi.security.auth`: the registry that authenticates callers, with its verification cache (`ClientRegistry`);
- `esi.security.demo`: the demo credentials and the policy that picks the clients (`load_clients`);
- `esi.security.tls`: TLS to RabbitMQ, to Creatio and the DMS, and for the API itself.

The HTTP glue (from a request to its `Principal`) is `esi.api.auth`.
"""

from esi.security.auth import ClientRegistry, generate_api_key
from esi.security.clients import ClientConfig, ClientsConfigError, make_client_entry
from esi.security.demo import DEMO_CLIENT_ID, DEMO_PASSWORD, demo_registry, is_demo_registry, load_clients
from esi.security.hashing import hash_secret
from esi.security.scopes import Principal, SendScope, require_operator, require_read, require_send

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_PASSWORD",
    "ClientConfig",
    "ClientRegistry",
    "ClientsConfigError",
    "Principal",
    "SendScope",
    "demo_registry",
    "generate_api_key",
    "hash_secret",
    "is_demo_registry",
    "load_clients",
    "make_client_entry",
    "require_operator",
    "require_read",
    "require_send",
]
