"""The catalog: every message type esi knows, which system handles it, its payload model and its answer.

It is derived from the systems' declarations (`esi.systems.registry.Registry.catalog`). Anything outside the
catalog is refused before it reaches a routing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import AliasChoices, BaseModel, ValidationError

from esi.errors import InvalidMessage
from esi.messages.envelope import Envelope, Kind, describe_validation_error
from esi.messages.payload import Payload, Request, has_upcast, version_of


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
    #: for events: the system that emits it (its routing key is `<emitted_by>.event.<type>`)
    emitted_by: str | None = None
    #: the payload's current version (the model's `VERSION`); set from the model
    version: int = field(default=0)

    def __post_init__(self) -> None:
        if self.version == 0:
            object.__setattr__(self, "version", version_of(self.model))


def input_value(model: type[BaseModel], name: str, data: dict[str, Any]) -> Any:
    """What `data` gives for the model's field `name`, under its own name or any of its aliases (the original
    system's field names), or None."""
    info = model.model_fields[name]
    alias = info.validation_alias
    names: list[Any] = list(alias.choices) if isinstance(alias, AliasChoices) else [alias or info.alias or name]
    for key in names:
        if isinstance(key, str) and key in data:
            return data[key]
    return data.get(name)


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

    def outgoing(self, envelope: Envelope) -> tuple[Envelope, str]:
        """A message to publish, stamped with its payload's current version, and its routing key."""
        spec = self.get(envelope.message_type)
        if envelope.schema_version != spec.version:
            envelope = envelope.model_copy(update={"schema_version": spec.version})
        return envelope, envelope.routing_key(spec.kind)

    def validate_payload(self, envelope: Envelope) -> BaseModel | None:
        """The envelope's payload as its model (upcast from the previous version); `None` for a response that
        reports an error."""
        spec = self.get(envelope.message_type)
        if spec.kind is Kind.RESPONSE and envelope.error is not None:
            return None
        data = self.current_version(spec, envelope.schema_version, envelope.payload)
        try:
            payload = spec.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidMessage(
                f"invalid {envelope.message_type} payload: {describe_validation_error(exc)}", code="invalid_payload"
            ) from exc
        # the original system's adapters put the whole 1C body, request_id included, into the payload
        copied = payload.request_id if isinstance(payload, Request) else None  # (getattr on a model: slow miss)
        if copied is not None and copied != envelope.request_id:
            raise InvalidMessage(
                f"the payload's request_id {copied!r} is not the envelope's {envelope.request_id!r}",
                code="request_id_mismatch",
            )
        return payload

    @staticmethod
    def current_version(spec: MessageSpec, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """`data` written in `version`, in the spec's current version: as it is, or upcast from the one before."""
        if version == spec.version:
            return data
        if version == spec.version - 1 and has_upcast(spec.model):
            try:
                return cast(type[Payload], spec.model).upcast(dict(data))  # has_upcast: a Payload with its own
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidMessage(
                    f"{spec.message_type} version {version} could not be upcast to {spec.version}: {exc}",
                    code="invalid_payload",
                ) from exc
        if version > spec.version:
            raise InvalidMessage(
                f"{spec.message_type} version {version} is newer than this consumer's {spec.version}: upgrade the "
                f"consumer (it reads {spec.version} and {max(spec.version - 1, 1)}), then replay this message",
                code="unsupported_version",
            )
        readable = f"{spec.version - 1} and {spec.version}" if has_upcast(spec.model) else f"{spec.version}"
        raise InvalidMessage(
            f"{spec.message_type} version {version} is too old: this consumer reads {readable}",
            code="unsupported_version",
        )
