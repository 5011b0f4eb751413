"""What travels on the bus: the envelope, the routing-key grammar, the payload models, the catalog, the handler type."""

from esi.messages.catalog import Catalog, MessageSpec
from esi.messages.envelope import Envelope, ErrorInfo, Kind, RoutingKey, decode_envelope
from esi.messages.handler import Handler

__all__ = [
    "Catalog",
    "Envelope",
    "ErrorInfo",
    "Handler",
    "Kind",
    "MessageSpec",
    "RoutingKey",
    "decode_envelope",
]
