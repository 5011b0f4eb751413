"""What travels on the bus: the envelope, the routing-key grammar, the payload models and the catalog."""

from esi.messages.catalog import CATALOG, Catalog, MessageSpec
from esi.messages.envelope import SCHEMA_VERSION, SYSTEMS, Envelope, ErrorInfo, Kind, RoutingKey, decode_envelope

__all__ = [
    "CATALOG",
    "Catalog",
    "Envelope",
    "ErrorInfo",
    "Kind",
    "MessageSpec",
    "RoutingKey",
    "SCHEMA_VERSION",
    "SYSTEMS",
    "decode_envelope",
]
