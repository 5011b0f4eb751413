"""The catalog: every message type esi knows, which system handles it, its payload model and its answer.

It is derived from the systems' declarations (`esi.systems.registry.Registry.catalog`). Anything outside the
catalog is refused before it reaches a routing key.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from esi.errors import InvalidMessage
from esi.messages.envelope import Envelope, Kind, describe_validation_error


@dataclass(frozen=True)
class Upload:
    """A request that carries a file: as base64 in a JSON field, or as a multipart part named `file`."""

    content_field: str
    name_field: str
    #: the bytes every such file starts with (`%PDF-`), checked at the edge
    magic: bytes
    media_type: str
    default_name: str


@dataclass(frozen=True)
class MessageSpec:
    message_type: str
    kind: Kind
    model: type[BaseModel]
    #: for requests: the system that handles it
    handled_by: str | None = None
    #: for requests: the message type of its answer
    response_type: str | None = None
    #: for requests that carry a file: how (multipart uploads, the file's magic bytes)
    upload: Upload | None = None


class Catalog:
    def __init__(self, specs: list[MessageSpec]) -> None:
        self._by_type = {spec.message_type: spec for spec in specs}

    def get(self, message_type: str) -> MessageSpec:
        try:
            return self._by_type[message_type]
        except KeyError:
            raise InvalidMessage(
                f"unknown message type {message_type!r}; known: {', '.join(sorted(self._by_type))}",
                code="unknown_message_type",
            ) from None

    @property
    def specs(self) -> tuple[MessageSpec, ...]:
        return tuple(self._by_type.values())

    def targets(self) -> list[str]:
        """The systems that answer requests, in declaration order."""
        return list(dict.fromkeys(s.handled_by for s in self._by_type.values() if s.handled_by))

    def requests_for(self, target: str) -> list[str]:
        return sorted(s.message_type for s in self._by_type.values() if s.handled_by == target)

    def request_spec(self, target: str, message_type: str) -> MessageSpec:
        """The spec of a request that `target` handles; `InvalidMessage` for anything else."""
        spec = self._by_type.get(message_type)
        if spec is None or spec.kind is not Kind.REQUEST or spec.handled_by != target:
            known = ", ".join(self.requests_for(target)) or "none"
            raise InvalidMessage(
                f"unknown message type {message_type!r} for target {target!r}; known: {known}",
                code="unknown_message_type",
            )
        return spec

    def kind_of(self, envelope: Envelope) -> Kind:
        return self.get(envelope.message_type).kind

    def routing_key(self, envelope: Envelope) -> str:
        return envelope.routing_key(self.kind_of(envelope))

    def validate_payload(self, envelope: Envelope) -> BaseModel | None:
        """The envelope's payload as its model; `None` for a response that reports an error."""
        spec = self.get(envelope.message_type)
        if spec.kind is Kind.RESPONSE and envelope.error is not None:
            return None
        try:
            return spec.model.model_validate(envelope.payload)
        except ValidationError as exc:
            raise InvalidMessage(
                f"invalid {envelope.message_type} payload: {describe_validation_error(exc)}", code="invalid_payload"
            ) from exc
