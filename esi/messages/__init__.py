"""What travels on the bus: the envelope, the routing-key grammar, the payload models, the catalog, the handler type."""

from esi.messages.catalog import CATALOG, Catalog, MessageSpec
from esi.messages.envelope import SCHEMA_VERSION, SYSTEMS, Envelope, ErrorInfo, Kind, RoutingKey, decode_envelope
from esi.messages.handler import Handler

__all__ = [
    "CATALOG",
    "Catalog",
    "Envelope",
    "ErrorInfo",
    "Handler",
    "Kind",
    "MessageSpec",
    "RoutingKey",
    "SCHEMA_VERSION",
    "SYSTEMS",
    "decode_envelope",
]
