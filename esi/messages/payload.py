"""The base of every payload model: its version, and how the previous version becomes the current one.

A message type's payload has one current version (`VERSION`, 1 unless a model says otherwise). The envelope's
`schema_version` says which version a message was written in. A consumer accepts the current version and the one
before it, which the model's `upcast` turns into the current shape; anything newer is refused with a permanent error
that says so (the message waits in the dead-letter queue until this consumer is upgraded and it is replayed), as is
anything older than the previous version. So a rolling upgrade that changes a payload goes producer-last: consumers
of version N first (they still read N−1), then the producers that write N.

Models of a system outside `esi` may be plain pydantic models: they are version 1 and have nothing to upcast.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field


class Payload(BaseModel):
    """A message's payload; subclasses set `VERSION` and, from version 2 on, `upcast`."""

    #: the version this model reads and writes
    VERSION: ClassVar[int] = 1

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Turn a payload of version `VERSION - 1` into one of `VERSION` (before validation)."""
        raise NotImplementedError(f"{cls.__name__} has no version before {cls.VERSION}")


class Request(Payload):
    """A request's payload. The original system's 1C adapter sent the whole 1C body as the payload, `request_id`
    included: it is accepted here (it must be the envelope's) and never written out again."""

    request_id: str | None = Field(
        default=None,
        exclude=True,
        max_length=128,
        description="the original system's copy of the envelope's request_id",
    )


def version_of(model: type[BaseModel]) -> int:
    version = getattr(model, "VERSION", 1)
    return version if isinstance(version, int) and version >= 1 else 1


def has_upcast(model: type[BaseModel]) -> bool:
    """Whether `model` can read its previous version: version 2 or later with an `upcast` of its own."""
    upcast = getattr(model, "upcast", None)
    if version_of(model) < 2 or not callable(upcast):
        return False
    return getattr(upcast, "__func__", upcast) is not Payload.upcast.__func__  # type: ignore[attr-defined]
