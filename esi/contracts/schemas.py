"""JSON Schema (draft 2020-12) of every payload in the catalog and of the envelope, from the pydantic models.

Each schema is pydantic's `model_json_schema(mode="validation")` (field names as a producer may send them, aliases
included) with `$schema` added. A message's schema is named `<message_type>.v<version>` (`create_user.v1`), the
envelope's `envelope`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel

from esi.messages.catalog import Catalog, MessageSpec
from esi.messages.envelope import Envelope, Kind
from esi.messages.payload import has_upcast

__all__ = [
    "DIALECT",
    "ENVELOPE",
    "MessageSchema",
    "envelope_schema",
    "message_schemas",
    "model_schema",
    "schema_name",
    "version_of",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: the envelope schema's name
ENVELOPE = "envelope"


def version_of(spec: MessageSpec) -> int:
    """The payload's current version (1 for a spec that does not declare one)."""
    return int(getattr(spec, "version", 1))


def accepts_previous(spec: MessageSpec) -> bool:
    """Whether consumers also accept the previous version (the spec has an upcaster from it)."""
    return has_upcast(spec.model)


def schema_name(spec: MessageSpec) -> str:
    return f"{spec.message_type}.v{version_of(spec)}"


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as a standalone 2020-12 document, the original system's field names included."""
    schema = copy.deepcopy(model.model_json_schema(mode="validation"))
    return _with_other_names(model, {"$schema": DIALECT, **schema})


def _with_other_names(model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic writes only the first name of a field's `AliasChoices`; the others (the original system's
    `filename`, `file_data_base64`) are accepted too, so the schema lists them, marked deprecated, and a required
    field is satisfied by any of its names."""
    properties, required = schema.get("properties", {}), schema.get("required", [])
    any_of_names: list[dict[str, Any]] = []
    for info in model.model_fields.values():
        alias = info.validation_alias
        if not isinstance(alias, AliasChoices):
            continue
        names = [choice for choice in alias.choices if isinstance(choice, str)]
        if len(names) < 2 or names[0] not in properties:
            continue
        for other in names[1:]:
            properties[other] = {
                **properties[names[0]],
                "deprecated": True,
                "description": f"the original system's name for `{names[0]}`",
            }
        if names[0] in required:
            required.remove(names[0])
            any_of_names.append({"anyOf": [{"required": [name]} for name in names]})
    if any_of_names:
        schema["allOf"] = any_of_names
    return schema


def envelope_schema() -> dict[str, Any]:
    return model_schema(Envelope)


@dataclass(frozen=True)
class MessageSchema:
    """One message of the catalog and its payload's schema."""

    name: str
    message_type: str
    kind: Kind
    version: int
    spec: MessageSpec
    schema: dict[str, Any]


def message_schemas(catalog: Catalog | Iterable[MessageSpec]) -> list[MessageSchema]:
    """Every message's schema, sorted by message type."""
    specs = catalog.specs if isinstance(catalog, Catalog) else tuple(catalog)
    return [
        MessageSchema(schema_name(s), s.message_type, s.kind, version_of(s), s, model_schema(s.model))
        for s in sorted(specs, key=lambda s: s.message_type)
    ]
