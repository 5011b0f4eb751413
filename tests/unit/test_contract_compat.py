"""The compatibility check (esi.contracts.compat) on small schema pairs: each breaking change is found, at its JSON
path, and each additive one is allowed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from esi.contracts.compat import Contract, Finding, compare, compare_schemas

OBJ: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 64},
        "status": {"type": "string", "enum": ["new", "shipped"]},
        "note": {"anyOf": [{"type": "string", "maxLength": 100}, {"type": "null"}], "default": None},
        "count": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["id", "status"],
}


def changed(**edits: Any) -> dict[str, Any]:
    """OBJ with `edits` applied: `properties__id__maxLength=32` sets it, a value of `DROP` deletes it."""
    schema = copy.deepcopy(OBJ)
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = schema
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return schema


DROP = object()


def findings(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(f.path, f.breaking) for f in compare_schemas(old, new)]


def test_the_same_schema_has_no_findings() -> None:
    assert compare_schemas(OBJ, copy.deepcopy(OBJ)) == []


def test_titles_and_descriptions_are_not_compared() -> None:
    new = changed(properties__id__description="the id", title="Something", properties__id__title="Id")
    assert compare_schemas(OBJ, new) == []


BREAKING = [
    ("a removed field", changed(properties__note=DROP), "$.properties.note"),
    ("a field that became required", changed(required=["id", "status", "note"]), "$.properties.note"),
    (
        "a new required field",
        changed(properties__extra={"type": "string"}, required=["id", "status", "extra"]),
        "$.properties.extra",
    ),
    (
        "a type removed from a union",
        changed(properties__note={"type": "string", "maxLength": 100}),
        "$.properties.note",
    ),
    ("a type changed", changed(properties__count={"type": "string"}), "$.properties.count.type"),
    ("integer changed to boolean", changed(properties__count__type="boolean"), "$.properties.count.type"),
    ("an enum value removed", changed(properties__status__enum=["new"]), "$.properties.status.enum"),
    ("an enum added", changed(properties__id__enum=["a", "b"]), "$.properties.id.enum"),
    ("max length lowered", changed(properties__id__maxLength=32), "$.properties.id.maxLength"),
    ("max length added", changed(properties__status__maxLength=3), "$.properties.status.maxLength"),
    (
        "max length lowered inside a union",
        changed(properties__note__anyOf__0__maxLength=50),
        "$.properties.note.maxLength",
    ),
    ("min length raised", changed(properties__id__minLength=2), "$.properties.id.minLength"),
    ("minimum raised", changed(properties__count__minimum=1), "$.properties.count.minimum"),
    ("maximum lowered", changed(properties__count__maximum=9), "$.properties.count.maximum"),
    ("exclusive maximum added", changed(properties__count__exclusiveMaximum=10), "$.properties.count.exclusiveMaximum"),
    ("max items lowered", changed(properties__tags__maxItems=4), "$.properties.tags.maxItems"),
    ("a pattern added", changed(properties__id__pattern="^[A-Z]+$"), "$.properties.id.pattern"),
    ("a format added", changed(properties__id__format="uuid"), "$.properties.id.format"),
    (
        "items narrowed",
        changed(properties__tags__items={"type": "string", "maxLength": 3}),
        "$.properties.tags.items.maxLength",
    ),
    ("items unique", changed(properties__tags__uniqueItems=True), "$.properties.tags.uniqueItems"),
    ("restricted to a const", changed(properties__status={"const": "new"}), "$.properties.status.type"),
]


@pytest.mark.parametrize(
    ("old", "new", "path"), [(OBJ, new, path) for _, new, path in BREAKING], ids=[name for name, _, _ in BREAKING]
)
def test_a_breaking_change_is_found_at_its_path(old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    found = compare_schemas(old, new)
    assert any(f.breaking and f.path == path for f in found), found


def test_a_changed_pattern_is_breaking() -> None:
    old = changed(properties__id__pattern="^[A-Z]+$")
    assert findings(old, changed(properties__id__pattern="^[A-Z0-9]+$")) == [("$.properties.id.pattern", True)]


def test_a_tuple_of_type_names_narrowed_is_breaking() -> None:
    old = {"type": "object", "properties": {"v": {"type": ["string", "integer"]}}}
    new = {"type": "object", "properties": {"v": {"type": "string"}}}
    assert findings(old, new) == [("$.properties.v", True)]


def test_number_narrowed_to_integer_is_breaking_and_the_reverse_additive() -> None:
    number = {"type": "object", "properties": {"v": {"type": "number"}}}
    integer = {"type": "object", "properties": {"v": {"type": "integer"}}}
    assert findings(number, integer) == [("$.properties.v.type", True)]
    assert findings(integer, number) == [("$.properties.v.type", False)]


def test_a_changed_const_is_breaking() -> None:
    old = {"type": "object", "properties": {"kind": {"const": "a"}}}
    new = {"type": "object", "properties": {"kind": {"const": "b"}}}
    assert findings(old, new) == [("$.properties.kind.type", True)]


def test_a_const_removed_from_a_union_is_breaking() -> None:
    old = {"anyOf": [{"const": "a"}, {"const": "b"}]}
    assert findings(old, {"anyOf": [{"const": "a"}]}) == [("$", True)]
    assert findings({"anyOf": [{"const": "a"}]}, old) == [("$", False)]


def test_closing_additional_properties_is_breaking() -> None:
    old = {"type": "object", "properties": {"a": {"type": "string"}}}
    new = {**old, "additionalProperties": False}
    assert findings(old, new) == [("$.additionalProperties", True)]


ADDITIVE = [
    ("a new optional field", changed(properties__extra={"type": "string"})),
    ("a field no longer required", changed(required=["id"])),
    (
        "a type added to a union",
        changed(properties__id={"anyOf": [{"type": "string", "minLength": 1, "maxLength": 64}, {"type": "null"}]}),
    ),
    ("integer widened to number", changed(properties__count={"type": "number", "minimum": 0, "maximum": 10})),
    ("an enum value added", changed(properties__status__enum=["new", "shipped", "delivered"])),
    ("an enum dropped", changed(properties__status={"type": "string"})),
    ("max length raised", changed(properties__id__maxLength=128)),
    ("max length dropped", changed(properties__id={"type": "string", "minLength": 1})),
    ("min length lowered", changed(properties__id__minLength=0)),
    ("maximum raised", changed(properties__count__maximum=100)),
    ("max items raised", changed(properties__tags__maxItems=50)),
    ("other fields accepted", changed(additionalProperties=True)),
    ("a default changed", changed(properties__note__default="-")),
    ("a const widened to its type", changed(properties__status={"type": "string"})),
]


@pytest.mark.parametrize("new", [new for _, new in ADDITIVE], ids=[name for name, _ in ADDITIVE])
def test_an_additive_change_is_found_and_allowed(new: dict[str, Any]) -> None:
    found = compare_schemas(OBJ, new)
    assert found, "an additive change is still reported (the snapshot is out of date)"
    assert not [f for f in found if f.breaking], found


def test_a_removed_pattern_and_format_are_additive() -> None:
    old = changed(properties__id__pattern="^[A-Z]+$", properties__id__format="uuid")
    assert findings(old, OBJ) == [("$.properties.id.pattern", False), ("$.properties.id.format", False)]


def test_references_are_followed_into_definitions() -> None:
    def schema(max_length: int) -> dict[str, Any]:
        return {
            "$defs": {
                "Info": {"type": "object", "properties": {"holder": {"type": "string", "maxLength": max_length}}}
            },
            "type": "object",
            "properties": {"info": {"anyOf": [{"$ref": "#/$defs/Info"}, {"type": "null"}]}},
        }

    assert findings(schema(10), schema(20)) == [("$.properties.info.properties.holder.maxLength", False)]
    assert findings(schema(20), schema(10)) == [("$.properties.info.properties.holder.maxLength", True)]


def test_a_recursive_schema_is_compared_without_looping() -> None:
    def tree(max_length: int) -> dict[str, Any]:
        return {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": max_length},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                }
            },
            "$ref": "#/$defs/Node",
        }

    assert findings(tree(5), tree(5)) == []
    assert findings(tree(5), tree(4)) == [("$.properties.name.maxLength", True)]


def test_a_finding_reads_as_file_path_and_message() -> None:
    finding = Finding("schemas/create_user.v1.json", "$.properties.email.maxLength", "maxLength lowered", True)
    assert str(finding) == "BREAKING  schemas/create_user.v1.json:$.properties.email.maxLength: maxLength lowered"


# --- whole contracts: messages, versions, channels, operations -----------------------------------------------------


def contract(
    messages: dict[str, tuple[int, dict[str, Any]]],
    channels: tuple[str, ...] = ("1c.request.dms.a",),
    accepted_previous: bool = False,
    delivery_mode: int = 2,
) -> Contract:
    """A small contract: each message `name: (version, schema)` on every channel, one send operation per channel."""
    components = {
        f"{name}.v{v}": {
            "name": name,
            "x-esi-version": v,
            "x-esi-kind": "request",
            "x-esi-accepted-versions": [v - 1, v] if accepted_previous else [v],
        }
        for name, (v, _) in messages.items()
    }
    refs = {key: {"$ref": f"#/components/messages/{key}"} for key in components}
    document = {
        "channels": {
            c: {
                "address": c,
                "messages": refs,
                "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": "main_exchange"}}},
            }
            for c in channels
        },
        "operations": {
            f"send.{c}": {
                "action": "send",
                "channel": {"$ref": f"#/channels/{c}"},
                "messages": [{"$ref": f"#/channels/{c}/messages/{k}"} for k in refs],
                "bindings": {"amqp": {"deliveryMode": delivery_mode}},
            }
            for c in channels
        },
        "components": {"messages": components},
    }
    schemas = {f"{name}.v{v}": schema for name, (v, schema) in messages.items()}
    schemas["envelope"] = {"type": "object", "properties": {"request_id": {"type": "string"}}}
    return Contract(document, schemas)


def paths(old: Contract, new: Contract) -> list[tuple[str, str, bool]]:
    return [(f.file, f.path, f.breaking) for f in compare(old, new).findings]


def test_the_same_contract_is_identical() -> None:
    report = compare(contract({"a": (1, OBJ)}), contract({"a": (1, OBJ)}))
    assert report.findings == []
    assert report.identical


def test_a_removed_message_is_breaking() -> None:
    found = paths(contract({"a": (1, OBJ), "b": (1, OBJ)}), contract({"a": (1, OBJ)}))
    assert ("asyncapi.json", '$.components.messages["b.v1"]', True) in found
    assert ("asyncapi.json", '$.channels["1c.request.dms.a"].messages', True) in found


def test_a_new_message_is_additive() -> None:
    report = compare(contract({"a": (1, OBJ)}), contract({"a": (1, OBJ), "b": (1, OBJ)}))
    assert report.findings
    assert not report.breaking
    assert not report.identical


def test_a_field_change_in_a_message_names_its_schema_file() -> None:
    found = paths(contract({"a": (1, OBJ)}), contract({"a": (1, changed(properties__note=DROP))}))
    assert found == [("schemas/a.v1.json", "$.properties.note", True)]


def test_a_version_going_down_is_breaking() -> None:
    found = paths(contract({"a": (2, OBJ)}), contract({"a": (1, OBJ)}))
    assert found == [("asyncapi.json", '$.components.messages["a.v2"]["x-esi-version"]', True)]


def test_a_breaking_change_under_a_raised_version_with_an_upcaster_is_allowed() -> None:
    old, new = contract({"a": (1, OBJ)}), contract({"a": (2, changed(properties__note=DROP))}, accepted_previous=True)
    report = compare(old, new)
    assert report.findings
    assert not report.breaking
    assert ("schemas/a.v2.json", "$.properties.note", False) in paths(old, new)


def test_a_breaking_change_under_a_raised_version_without_an_upcaster_is_breaking() -> None:
    found = paths(contract({"a": (1, OBJ)}), contract({"a": (2, changed(properties__note=DROP))}))
    assert ("schemas/a.v2.json", "$.properties.note", True) in found


def test_a_raised_version_with_only_additive_changes_needs_no_upcaster() -> None:
    report = compare(contract({"a": (1, OBJ)}), contract({"a": (2, changed(properties__x={"type": "string"}))}))
    assert report.findings
    assert not report.breaking


def test_a_removed_channel_and_its_operation_are_breaking() -> None:
    found = paths(
        contract({"a": (1, OBJ)}, channels=("1c.request.dms.a", "crm.request.dms.a")), contract({"a": (1, OBJ)})
    )
    assert ("asyncapi.json", '$.channels["crm.request.dms.a"]', True) in found
    assert ("asyncapi.json", '$.operations["send.crm.request.dms.a"]', True) in found


def test_a_new_channel_is_additive() -> None:
    report = compare(
        contract({"a": (1, OBJ)}), contract({"a": (1, OBJ)}, channels=("1c.request.dms.a", "crm.request.dms.a"))
    )
    assert len(report.findings) == 2
    assert not report.breaking


def test_a_changed_binding_is_breaking() -> None:
    found = paths(contract({"a": (1, OBJ)}), contract({"a": (1, OBJ)}, delivery_mode=1))
    assert found == [("asyncapi.json", '$.operations["send.1c.request.dms.a"].bindings.amqp.deliveryMode', True)]


def test_a_breaking_change_to_the_envelope_is_found() -> None:
    old, new = contract({"a": (1, OBJ)}), contract({"a": (1, OBJ)})
    new.schemas["envelope"] = {"type": "object", "properties": {"request_id": {"type": "string", "maxLength": 8}}}
    assert paths(old, new) == [("schemas/envelope.json", "$.properties.request_id.maxLength", True)]


def test_a_hand_edited_snapshot_with_a_dangling_reference_is_still_compared() -> None:
    old = contract({"a": (1, OBJ), "b": (1, OBJ)})
    del old.asyncapi["components"]["messages"]["b.v1"]
    found = paths(old, contract({"a": (1, OBJ)}))
    assert ("asyncapi.json", '$.channels["1c.request.dms.a"].messages', True) in found
