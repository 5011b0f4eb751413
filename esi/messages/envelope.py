"""The JSON envelope every message carries, and the routing-key grammar `<source>.<request|response>.<target>.<type>`.

The envelope keeps the original system's fields (`source_system`, `target_system`, `message_type`, `payload`,
`request_id`, `timestamp`) and adds `message_id` (unique per message), `causation_id` (the message this one answers
or was caused by), `schema_version`, `error` (set on a response that reports a failure) and `context` (opaque state a
requester asks its responder to echo back, so that no adapter has to remember anything between two messages).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from esi.errors import InvalidMessage

#: the version an envelope's payload is written in when nothing says otherwise (see `esi.messages.payload`)
SCHEMA_VERSION = 1
#: a system's code: which systems exist is the registry's business (`esi.systems.registry`), not the envelope's
_SYSTEM_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
#: namespace of the deterministic ids of messages caused by another message
_DERIVED_NS = uuid.UUID("5b0e7c1e-2f64-4c0b-9d7e-6a8f3f1d2c11")
#: namespace of the ids given to the original system's messages, which carry none
_ORIGINAL_NS = uuid.UUID("0d9f3b52-7a41-4e8e-b1f4-3c2a5e6d7f80")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"


class Kind(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    #: something that happened in a system, for every subscriber: `<source>.event.<type>` (no target)
    EVENT = "event"


def event_key(source: str, event_type: str) -> str:
    """The routing key of an event: `<source>.event.<type>` (`crm.event.order_changed`)."""
    return f"{source}.{Kind.EVENT.value}.{event_type}"


def normalise_system(value: str) -> str:
    """System codes are lower-case on the wire ("1C" and "1c" are the same system)."""
    code = value.strip().lower()
    if not _SYSTEM_RE.fullmatch(code):
        raise ValueError(f"{value!r} is not a system code (1-32 letters, digits or '_')")
    return code


@dataclass(frozen=True)
class RoutingKey:
    source: str
    kind: Kind
    target: str
    message_type: str

    @classmethod
    def parse(cls, key: str) -> RoutingKey:
        parts = key.split(".")
        if len(parts) != 4:
            raise ValueError(f"routing key {key!r} is not <source>.<request|response>.<target>.<type>")
        source, kind, target, message_type = parts
        try:
            kind_value = Kind(kind.lower())
            if kind_value is Kind.EVENT:
                raise ValueError(kind)
        except ValueError:
            raise ValueError(f"routing key {key!r}: kind must be request or response") from None
        if not _TYPE_RE.fullmatch(message_type.lower()):
            raise ValueError(f"routing key {key!r}: bad message type")
        return cls(normalise_system(source), kind_value, normalise_system(target), message_type.lower())

    def __str__(self) -> str:
        return f"{self.source}.{self.kind.value}.{self.target}.{self.message_type}"


class ErrorInfo(BaseModel):
    """A failure reported back to the requester in a response envelope."""

    model_config = ConfigDict(extra="ignore")

    code: str
    message: str
    error_class: str | None = None
    system: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """One message on the bus."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: the version of the payload (each message type has its own; see `esi.messages.payload`)
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=1_000_000)
    message_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    request_id: str = Field(pattern=ID_PATTERN)
    causation_id: str | None = Field(default=None, max_length=128)
    source_system: str
    target_system: str
    message_type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    timestamp: datetime = Field(default_factory=_now)
    payload: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    context: dict[str, Any] | None = None

    @field_validator("source_system", "target_system", mode="before")
    @classmethod
    def _system(cls, value: object) -> object:
        return normalise_system(value) if isinstance(value, str) else value

    @field_validator("message_type", mode="before")
    @classmethod
    def _type(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def routing_key(self, kind: Kind) -> str:
        if kind is Kind.EVENT:  # an event has no target: every subscriber's queue is bound to its key
            return event_key(self.source_system, self.message_type)
        return str(RoutingKey(self.source_system, kind, self.target_system, self.message_type))

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    def derived_id(self, message_type: str) -> str:
        """A deterministic id for the message this one causes: handling it twice yields the same outgoing id."""
        return uuid.uuid5(_DERIVED_NS, f"{self.message_id}:{message_type}").hex

    def reply(
        self, message_type: str, payload: dict[str, Any] | None = None, *, error: ErrorInfo | None = None
    ) -> Envelope:
        """The response to this message, going back to its source."""
        return Envelope(
            message_id=self.derived_id(message_type),
            request_id=self.request_id,
            causation_id=self.message_id,
            source_system=self.target_system,
            target_system=self.source_system,
            message_type=message_type,
            payload=payload or {},
            error=error,
            context=self.context,
        )

    def request(
        self, target: str, message_type: str, payload: dict[str, Any], *, context: dict[str, Any] | None = None
    ) -> Envelope:
        """A sub-request this message causes, sent from this message's target system to another system."""
        return Envelope(
            message_id=self.derived_id(message_type),
            request_id=self.request_id,
            causation_id=self.message_id,
            source_system=self.target_system,
            target_system=target,
            message_type=message_type,
            payload=payload,
            context=context,
        )


def decode_envelope(body: bytes) -> Envelope:
    """Parse a message body; anything malformed raises `InvalidMessage` naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8: {exc}", code="not_utf8") from exc
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark, as 1C's JSON writer can put first
        text = text[1:]
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"body is not JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidMessage(f"envelope must be a JSON object, got {type(data).__name__}", code="invalid_envelope")
    if not data.get("message_id") and isinstance(data.get("request_id"), str):
        data["message_id"] = original_message_id(data)
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid envelope: {describe_validation_error(exc)}", code="invalid_envelope") from exc


def original_message_id(data: dict[str, Any]) -> str:
    """The original system's adapters sent no `message_id`: one derived from what identifies the message, so that
    a redelivery of the same message is recognised as such (a random id would make every redelivery a new one)."""
    identity = "|".join(
        str(data.get(k, "")).strip().lower() for k in ("source_system", "target_system", "message_type")
    )
    return uuid.uuid5(_ORIGINAL_NS, f"{identity}|{data['request_id']}").hex


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """A one-line summary of a pydantic error, naming each offending field."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
