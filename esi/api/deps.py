"""What the HTTP API needs from the service that runs it, passed explicitly (`ApiDeps`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esi.bus.dead_letters import DeadLetters
from esi.bus.topology import Topology
from esi.events.sink import EventSink
from esi.security.auth import ClientRegistry
from esi.security.quota import QuotaLimiter
from esi.store import Store
from esi.store.events import EventRecorder
from esi.store.records import OutboxRow
from esi.systems.registry import Registry
from esi.systems.spec import SendRoute, SystemSettings

__all__ = ["ApiDeps", "ReadyCheck"]

#: the readiness of a service: whether it is ready, and one entry per dependency
ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


@dataclass
class ApiDeps:
    """The API's dependencies and settings, handed over by the composition root (`esi.runtime`)."""

    #: the systems the API sends to (catalog, targets, business keys, send routes)
    registry: Registry
    store: Store
    #: called with each request's message once committed (the outbox relay publishes it at once)
    on_accepted: Callable[[OutboxRow], None]
    max_pdf_bytes: int
    readiness: ReadyCheck | None = None
    dead_letters: DeadLetters | None = None
    #: above this many unpublished messages (the broker is away), new requests get 503 with Retry-After
    max_backlog: int = 100_000
    events: EventRecorder | None = None
    #: the API's clients; None turns authentication off (refused with ESI_ENV=production)
    clients: ClientRegistry | None = None
    #: the longest a `GET /requests/{id}?wait=` holds on, and how often settlements made elsewhere are looked up
    max_wait: float = 30.0
    wait_recheck: float = 1.0
    #: answer the hot routes without FastAPI's routing and dependencies (esi.api.hot); off only to compare the two
    hot_path: bool = True
    #: the routes that send one target's requests (`POST /send_to_dms`, ...); None: the registry's
    send_routes: Sequence[SendRoute] | None = None
    #: the broker topology, for the AsyncAPI document (None: built from the registry with the default settings)
    topology: Topology | None = None
    #: the key of the operator console's CSRF tokens, shared by the API replicas (ESI_CONSOLE_SECRET); None: drawn
    #: per process
    console_secret: bytes | None = None
    #: the proxies whose X-Forwarded-For names the caller's address (ESI_TRUSTED_PROXIES: addresses or CIDRs)
    trusted_proxies: Sequence[str] = ()
    #: the clients' quotas in this process (their share: ÷ ESI_API_REPLICAS); None: one replica, the real clock
    quotas: QuotaLimiter | None = None
    #: takes the events of the webhooks (`POST /events/{source}/{type}`); None: the webhooks answer 503
    sink: EventSink | None = None
    #: the systems' settings (the signed webhooks' secrets and tolerance), by system code
    system_settings: Mapping[str, SystemSettings | None] | None = None
