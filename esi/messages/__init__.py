"""What travels on the bus: the envelope, the routing-key grammar, the payload models, the catalog, the handler type."""

from esi.messages.catalog import Catalog, MessageSpec
from esi.messages.envelope import SCHEMA_VERSION, Envelope, ErrorInfo, Kind, RoutingKey, decode_envelope
from esi.messages.handler import Handler

__all__ = [
    "SCHEMA_VERSION",
    "Catalog",
    "Envelope",
    "ErrorInfo",
    "Handler",
    "Kind",
    "MessageSpec",
    "RoutingKey",
    "decode_envelope",
]
