"""Is the live contract compatible with a committed snapshot? Breaking changes, additive ones, each at its JSON path.

A payload schema is compared as a validator: a change is **breaking** when something valid before may be refused
now, or something a reader relied on is gone —

    a removed message, channel or operation; a message's version going down; a removed field; a field that became
    required, or a new required field; a narrowed type: a type removed from a union, an enum value removed, a
    maximum (maxLength, maxItems, maximum, ...) lowered or added, a minimum raised or added, a pattern or format
    added or changed, `additionalProperties` closed; a changed AMQP binding (exchange, queue, delivery mode)

and **additive** when everything valid before stays valid: a new optional field, a new message, channel or
operation, a widened type (a type added to a union, an enum value added, a bound relaxed or dropped, a pattern
dropped), a field no longer required. Descriptions and titles are not compared.

A message whose version went up may change its payload in any way: its consumers upcast the previous version —
unless they no longer accept it (`x-esi-accepted-versions`), which is breaking when the change is.

One job in one module, though over 400 lines: the JSON Schema diff (the bulk: keywords, references, unions) and
the contract-level comparison built on it read the same findings and must agree on what "breaking" means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esi.systems.registry import Registry

__all__ = [
    "ASYNCAPI_FILE",
    "SCHEMAS_DIR",
    "Contract",
    "Finding",
    "Report",
    "compare",
    "compare_schemas",
    "dump",
    "live_contract",
    "load_contract",
    "write_contract",
]

ASYNCAPI_FILE = "asyncapi.json"
SCHEMAS_DIR = "schemas"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: keywords whose value is an upper bound: lowering (or adding) one narrows the schema
_UPPER = ("maxLength", "maxItems", "maxProperties", "maxContains", "maximum", "exclusiveMaximum")
#: keywords whose value is a lower bound: raising (or adding) one narrows the schema
_LOWER = ("minLength", "minItems", "minProperties", "minContains", "minimum", "exclusiveMinimum")
#: keywords any change of which (or adding which) narrows the schema; dropping one widens it
_EXACT = ("pattern", "format", "multipleOf", "contentEncoding", "contentMediaType")


@dataclass(frozen=True)
class Finding:
    """One difference: where (`file` and the JSON path inside it), what, and whether it breaks compatibility."""

    file: str
    path: str
    message: str
    breaking: bool

    def __str__(self) -> str:
        return f"{'BREAKING' if self.breaking else 'additive'}  {self.file}:{self.path}: {self.message}"


@dataclass(frozen=True)
class Contract:
    """The contract as documents: the AsyncAPI document and the JSON Schemas by name (`create_user.v1`)."""

    asyncapi: dict[str, Any]
    schemas: dict[str, dict[str, Any]]

    def files(self) -> dict[str, str]:
        """Every file of the contract, by path relative to its directory, as written (`write_contract`)."""
        out = {ASYNCAPI_FILE: dump(self.asyncapi)}
        out.update({f"{SCHEMAS_DIR}/{name}.json": dump(schema) for name, schema in sorted(self.schemas.items())})
        return out


@dataclass(frozen=True)
class Report:
    findings: list[Finding] = field(default_factory=list)
    #: the snapshot's files are byte for byte what the live contract writes
    identical: bool = True

    @property
    def breaking(self) -> list[Finding]:
        return [f for f in self.findings if f.breaking]

    @property
    def additive(self) -> list[Finding]:
        return [f for f in self.findings if not f.breaking]


def dump(document: Any) -> str:
    """Stable text for a committed document: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def live_contract(registry: Registry) -> Contract:
    """The contract of the systems in `registry`."""
    from esi.contracts.asyncapi import build_asyncapi
    from esi.contracts.schemas import ENVELOPE, envelope_schema, message_schemas

    schemas = {ENVELOPE: envelope_schema()}
    schemas.update({m.name: m.schema for m in message_schemas(registry.catalog)})
    return Contract(build_asyncapi(registry), schemas)


def load_contract(directory: Path) -> Contract:
    """The snapshot in `directory`; `FileNotFoundError` if it has no `asyncapi.json`."""
    asyncapi = json.loads((directory / ASYNCAPI_FILE).read_text(encoding="utf-8"))
    schemas = {
        p.name[: -len(".json")]: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((directory / SCHEMAS_DIR).glob("*.json"))
    }
    return Contract(asyncapi, schemas)


def write_contract(contract: Contract, directory: Path) -> list[Path]:
    """Write the contract's files into `directory` (schemas no longer in it are removed); the paths written."""
    (directory / SCHEMAS_DIR).mkdir(parents=True, exist_ok=True)
    files = contract.files()
    for stale in (directory / SCHEMAS_DIR).glob("*.json"):
        if f"{SCHEMAS_DIR}/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --- paths ----------------------------------------------------------------------------------------------------------


def _key(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if _IDENT.match(name) else f"{path}[{json.dumps(name, ensure_ascii=False)}]"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- schemas --------------------------------------------------------------------------------------------------------


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    """A local reference (`#/$defs/X`, `#/components/schemas/X`) inside `root`."""
    if not ref.startswith("#"):
        raise ValueError(f"only local references are compared, not {ref!r}")
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


class _SchemaDiff:
    def __init__(self, file: str, old_root: Mapping[str, Any], new_root: Mapping[str, Any]) -> None:
        self.file = file
        self.old_root, self.new_root = old_root, new_root
        self.findings: list[Finding] = []
        #: the pairs of references being compared, outermost first: a recursive schema is walked once
        self._stack: list[tuple[str, str]] = []

    def report(self, path: str, message: str, *, breaking: bool) -> None:
        self.findings.append(Finding(self.file, path, message, breaking))

    def deref(self, node: Any, root: Mapping[str, Any]) -> Any:
        hops = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            target = _resolve(root, node["$ref"])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **rest} if rest else target
            hops += 1
            if hops > 64:
                raise ValueError("a $ref cycle without a schema")
        return node

    # a schema as the alternatives it accepts: each with a single type
    def branches(self, node: Any, root: Mapping[str, Any]) -> list[dict[str, Any]]:
        node = self.deref(node, root)
        if node is True or node == {}:
            return [{}]
        if node is False:
            return []
        if not isinstance(node, dict):
            return [{}]
        for union in ("anyOf", "oneOf"):
            if union in node:
                rest = {k: v for k, v in node.items() if k not in (union, "default", "title", "description")}
                out: list[dict[str, Any]] = []
                for option in node[union]:
                    for branch in self.branches(option, root):
                        out.append({**rest, **branch})  # noqa: PERF401 - a loop reads clearer here
                return out
        types = node.get("type")
        if isinstance(types, list):
            return [{**node, "type": t} for t in types]
        return [node]

    @staticmethod
    def kind(branch: Mapping[str, Any]) -> str:
        if "const" in branch:
            return f"const {_show(branch['const'])}"
        if isinstance(branch.get("type"), str):
            return str(branch["type"])
        if "enum" in branch:
            kinds = {type(v).__name__ for v in branch["enum"]}
            return (
                {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "NoneType": "null"}.get(
                    kinds.pop(), "any"
                )
                if len(kinds) == 1
                else "any"
            )
        if "properties" in branch or "additionalProperties" in branch or "required" in branch:
            return "object"
        if "items" in branch or "prefixItems" in branch:
            return "array"
        return "any"

    def diff(self, old: Any, new: Any, path: str) -> None:
        refs = (_ref(old), _ref(new))
        if refs != ("", "") and refs in self._stack:
            return
        self._stack.append(refs)
        try:
            self._diff(old, new, path)
        finally:
            self._stack.pop()

    def _diff(self, old: Any, new: Any, path: str) -> None:
        old_node, new_node = self.deref(old, self.old_root), self.deref(new, self.new_root)
        if (
            isinstance(old_node, dict)
            and isinstance(new_node, dict)
            and "default" in old_node
            and old_node.get("default") != new_node.get("default")
        ):
            self.report(
                _key(path, "default"),
                f"default changed from {_show(old_node['default'])} to {_show(new_node.get('default'))}",
                breaking=False,
            )
        old_branches = self.branches(old, self.old_root)
        new_branches = self.branches(new, self.new_root)
        if len(old_branches) == 1 and len(new_branches) == 1:
            self.constraints(old_branches[0], new_branches[0], path)
            return
        new_by_kind: dict[str, dict[str, Any]] = {}
        for branch in new_branches:
            new_by_kind.setdefault(self.kind(branch), branch)
        old_kinds = {self.kind(b) for b in old_branches}
        for branch in old_branches:
            kind = self.kind(branch)
            # an unchanged branch is its own match (several branches of one kind: `anyOf` of required names)
            match = next((b for b in new_branches if b == branch), None) or new_by_kind.get(kind)
            if match is None and kind == "integer":
                match = new_by_kind.get("number")
            if match is None and kind.startswith("const "):
                match = next(
                    (
                        b
                        for b in new_branches
                        if "const" not in b and self.kind(b) in ("any", _const_type(branch["const"]))
                    ),
                    None,
                )
            if match is None:
                match = new_by_kind.get("any")
            if match is None:
                self.report(path, f"type {kind} removed (the union was narrowed)", breaking=True)
                continue
            self.constraints(branch, match, path)
        for kind in new_by_kind:
            if kind not in old_kinds and "any" not in old_kinds:
                self.report(path, f"type {kind} added (the union was widened)", breaking=False)

    def constraints(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_kind, new_kind = self.kind(old), self.kind(new)
        if old_kind != new_kind:
            widened = (
                new_kind == "any"
                or (old_kind, new_kind) == ("integer", "number")
                or (old_kind.startswith("const ") and new_kind == _const_type(old["const"]))
            )
            self.report(_key(path, "type"), f"type changed from {old_kind} to {new_kind}", breaking=not widened)
            if not widened:
                return
        if "const" in old and "const" in new and old["const"] != new["const"]:
            self.report(
                _key(path, "const"), f"const changed from {_show(old['const'])} to {_show(new['const'])}", breaking=True
            )
        elif "const" in old and "const" not in new:
            self.report(_key(path, "const"), f"const {_show(old['const'])} dropped", breaking=False)
        elif "const" in new and "const" not in old:
            self.report(_key(path, "const"), f"restricted to const {_show(new['const'])}", breaking=True)
        self.enum(old, new, path)
        for keyword in _UPPER:
            self.bound(old, new, path, keyword, narrower=lambda o, n: n < o)
        for keyword in _LOWER:
            self.bound(old, new, path, keyword, narrower=lambda o, n: n > o)
        for keyword in _EXACT:
            if keyword in new and keyword not in old:
                self.report(_key(path, keyword), f"{keyword} {_show(new[keyword])} added", breaking=True)
            elif keyword in old and keyword not in new:
                self.report(_key(path, keyword), f"{keyword} {_show(old[keyword])} dropped", breaking=False)
            elif keyword in old and old[keyword] != new[keyword]:
                self.report(
                    _key(path, keyword),
                    f"{keyword} changed from {_show(old[keyword])} to {_show(new[keyword])}",
                    breaking=True,
                )
        if new.get("uniqueItems") and not old.get("uniqueItems"):
            self.report(_key(path, "uniqueItems"), "items must now be unique", breaking=True)
        elif old.get("uniqueItems") and not new.get("uniqueItems"):
            self.report(_key(path, "uniqueItems"), "items no longer need be unique", breaking=False)
        self.objects(old, new, path)
        if "items" in old or "items" in new:
            self.diff(old.get("items", {}), new.get("items", {}), _key(path, "items"))
        old_all, new_all = old.get("allOf", []), new.get("allOf", [])
        for i, (o, n) in enumerate(zip(old_all, new_all)):
            self.diff(o, n, _key(_key(path, "allOf"), i))
        for i in range(len(old_all), len(new_all)):
            self.report(_key(_key(path, "allOf"), i), "a constraint added (allOf)", breaking=True)
        for i in range(len(new_all), len(old_all)):
            self.report(_key(_key(path, "allOf"), i), "a constraint dropped (allOf)", breaking=False)

    def enum(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        here = _key(path, "enum")
        if "enum" in new and "enum" not in old:
            self.report(here, f"restricted to the values {_show(new['enum'])}", breaking=True)
        elif "enum" in old and "enum" not in new:
            self.report(here, "no longer restricted to a list of values", breaking=False)
        elif "enum" in old:
            for value in old["enum"]:
                if value not in new["enum"]:
                    self.report(here, f"value {_show(value)} removed", breaking=True)
            for value in new["enum"]:
                if value not in old["enum"]:
                    self.report(here, f"value {_show(value)} added", breaking=False)

    def bound(self, old: dict[str, Any], new: dict[str, Any], path: str, keyword: str, narrower: Any) -> None:
        here = _key(path, keyword)
        if keyword in new and keyword not in old:
            self.report(here, f"{keyword} {_show(new[keyword])} added", breaking=True)
        elif keyword in old and keyword not in new:
            self.report(here, f"{keyword} {_show(old[keyword])} dropped", breaking=False)
        elif keyword in old and old[keyword] != new[keyword]:
            breaking = bool(narrower(old[keyword], new[keyword]))
            verb = "lowered" if new[keyword] < old[keyword] else "raised"
            self.report(
                here, f"{keyword} {verb} from {_show(old[keyword])} to {_show(new[keyword])}", breaking=breaking
            )

    def objects(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_props: dict[str, Any] = old.get("properties", {})
        new_props: dict[str, Any] = new.get("properties", {})
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        props = _key(path, "properties")
        for name, schema in old_props.items():
            here = _key(props, name)
            if name not in new_props:
                self.report(here, f"field {name!r} removed", breaking=True)
                continue
            if name in new_required and name not in old_required:
                self.report(here, f"field {name!r} became required", breaking=True)
            elif name in old_required and name not in new_required:
                self.report(here, f"field {name!r} is no longer required", breaking=False)
            self.diff(schema, new_props[name], here)
        for name in new_props:
            if name not in old_props:
                required = name in new_required
                self.report(
                    _key(props, name), f"new {'required' if required else 'optional'} field {name!r}", breaking=required
                )
        for name in sorted(new_required - old_required - set(new_props)):
            self.report(_key(path, "required"), f"{name!r} became required", breaking=True)
        old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
        here = _key(path, "additionalProperties")
        if old_extra is not False and new_extra is False:
            self.report(here, "other fields are now refused", breaking=True)
        elif old_extra is False and new_extra is not False:
            self.report(here, "other fields are now accepted", breaking=False)
        elif isinstance(old_extra, dict) or isinstance(new_extra, dict):
            self.diff({} if old_extra is True else old_extra, {} if new_extra is True else new_extra, here)


def _ref(node: Any) -> str:
    return node["$ref"] if isinstance(node, dict) and isinstance(node.get("$ref"), str) else ""


def _const_type(value: Any) -> str:
    return _SchemaDiff.kind({"enum": [value]})


def compare_schemas(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    file: str = "schema",
    old_root: Mapping[str, Any] | None = None,
    new_root: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """The differences between two JSON Schemas of one payload, judged as validators (see the module)."""
    differ = _SchemaDiff(file, old_root if old_root is not None else old, new_root if new_root is not None else new)
    differ.diff(old, new, "$")
    return differ.findings


# --- the AsyncAPI document ------------------------------------------------------------------------------------------


def _leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key in sorted(node):
            yield from _leaves(node[key], _key(path, key))
    else:
        yield path, node


def _diff_exact(file: str, old: Any, new: Any, path: str, what: str) -> list[Finding]:
    """Any change to a value that the wire depends on (a binding) is breaking."""
    old_leaves, new_leaves = dict(_leaves(old, path)), dict(_leaves(new, path))
    findings = []
    for leaf in sorted(set(old_leaves) | set(new_leaves)):
        if leaf not in new_leaves:
            findings.append(Finding(file, leaf, f"{what} {_show(old_leaves[leaf])} removed", True))
        elif leaf not in old_leaves:
            findings.append(Finding(file, leaf, f"{what} {_show(new_leaves[leaf])} added", True))
        elif old_leaves[leaf] != new_leaves[leaf]:
            findings.append(
                Finding(file, leaf, f"{what} changed from {_show(old_leaves[leaf])} to {_show(new_leaves[leaf])}", True)
            )
    return findings


def _message_types(document: Mapping[str, Any], refs: Any) -> set[str]:
    """The message types a channel's `messages` (a map) or an operation's `messages` (a list) refer to."""
    values = refs.values() if isinstance(refs, dict) else (refs or [])
    types = set()
    for ref in values:
        message = dict(ref)
        for _ in range(8):  # an operation's message refers to the channel's, which refers to the component
            if "$ref" not in message:
                break
            try:
                message = _resolve(document, message["$ref"])
            except (KeyError, IndexError, TypeError):  # a dangling reference (a hand-edited snapshot): its key
                message = {"name": message["$ref"].rsplit("/", 1)[-1].rsplit(".v", 1)[0]}
        types.add(str(message.get("name", "?")))
    return types


def _address(document: Mapping[str, Any], operation: Mapping[str, Any]) -> Any:
    """The address of an operation's channel (its reference when it dangles)."""
    ref = operation.get("channel", {}).get("$ref", "")
    try:
        return _resolve(document, ref).get("address")
    except (KeyError, IndexError, TypeError, ValueError):
        return ref


def _messages(document: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Message type → (its component key, the message)."""
    components = document.get("components", {}).get("messages", {})
    return {str(m.get("name", key)): (key, m) for key, m in components.items()}


def _compare_members(file: str, old: Contract, new: Contract, section: str, what: str) -> list[Finding]:
    findings: list[Finding] = []
    old_items, new_items = old.asyncapi.get(section, {}), new.asyncapi.get(section, {})
    for name, old_item in old_items.items():
        here = _key(f"$.{section}", name)
        new_item = new_items.get(name)
        if new_item is None:
            findings.append(Finding(file, here, f"{what} {name!r} removed", True))
            continue
        for attribute in ("action", "address"):
            if old_item.get(attribute) != new_item.get(attribute):
                findings.append(  # noqa: PERF401 - a loop reads clearer here
                    Finding(
                        file,
                        _key(here, attribute),
                        f"{attribute} changed from "
                        f"{_show(old_item.get(attribute))} to {_show(new_item.get(attribute))}",
                        True,
                    )
                )
        if "channel" in old_item:
            old_channel, new_channel = _address(old.asyncapi, old_item), _address(new.asyncapi, new_item)
            if old_channel != new_channel:
                findings.append(
                    Finding(
                        file, _key(here, "channel"), f"channel changed from {old_channel!r} to {new_channel!r}", True
                    )
                )
        findings += _diff_exact(
            file, old_item.get("bindings", {}), new_item.get("bindings", {}), _key(here, "bindings"), "binding"
        )
        old_types = _message_types(old.asyncapi, old_item.get("messages"))
        new_types = _message_types(new.asyncapi, new_item.get("messages"))
        for message_type in sorted(old_types - new_types):
            findings.append(Finding(file, _key(here, "messages"), f"message {message_type!r} removed", True))
        for message_type in sorted(new_types - old_types):
            findings.append(Finding(file, _key(here, "messages"), f"message {message_type!r} added", False))
    for name in new_items:
        if name not in old_items:
            findings.append(Finding(file, _key(f"$.{section}", name), f"new {what} {name!r}", False))
    return findings


def _schema_file(name: str) -> str:
    return f"{SCHEMAS_DIR}/{name}.json"


def _compare_messages(old: Contract, new: Contract) -> list[Finding]:
    findings: list[Finding] = []
    old_messages, new_messages = _messages(old.asyncapi), _messages(new.asyncapi)
    for message_type, (old_key, old_message) in old_messages.items():
        here = _key("$.components.messages", old_key)
        if message_type not in new_messages:
            findings.append(Finding(ASYNCAPI_FILE, here, f"message {message_type!r} removed", True))
            continue
        new_key, new_message = new_messages[message_type]
        old_version, new_version = int(old_message.get("x-esi-version", 1)), int(new_message.get("x-esi-version", 1))
        if new_version < old_version:
            findings.append(
                Finding(
                    ASYNCAPI_FILE,
                    _key(here, "x-esi-version"),
                    f"version of {message_type!r} decreased from {old_version} to {new_version}",
                    True,
                )
            )
            continue
        if old_message.get("x-esi-kind") != new_message.get("x-esi-kind"):
            findings.append(
                Finding(
                    ASYNCAPI_FILE,
                    _key(here, "x-esi-kind"),
                    f"{message_type!r} changed from a "
                    f"{old_message.get('x-esi-kind')} to a {new_message.get('x-esi-kind')}",
                    True,
                )
            )
        if old_key not in old.schemas or new_key not in new.schemas:
            missing = _schema_file(old_key if old_key not in old.schemas else new_key)
            findings.append(Finding(missing, "$", "schema file missing", True))
            continue
        changes = compare_schemas(old.schemas[old_key], new.schemas[new_key], file=_schema_file(new_key))
        if new_version == old_version:
            findings += changes
            continue
        accepted = new_message.get("x-esi-accepted-versions", [new_version])
        findings.append(
            Finding(
                ASYNCAPI_FILE,
                _key(here, "x-esi-version"),
                f"version of {message_type!r} raised from {old_version} to {new_version}",
                False,
            )
        )
        upcast = old_version in accepted
        for change in changes:
            if change.breaking and not upcast:
                findings.append(
                    Finding(
                        change.file,
                        change.path,
                        f"{change.message} — and v{old_version} is no longer accepted (no upcaster from it)",
                        True,
                    )
                )
            else:
                findings.append(
                    Finding(
                        change.file,
                        change.path,
                        f"{change.message} (in v{new_version}; consumers upcast v{old_version})",
                        False,
                    )
                )
    for message_type, (new_key, _) in new_messages.items():
        if message_type not in old_messages:
            findings.append(
                Finding(ASYNCAPI_FILE, _key("$.components.messages", new_key), f"new message {message_type!r}", False)
            )
    return findings


def compare(old: Contract, new: Contract) -> Report:
    """The findings between a snapshot (`old`) and the live contract (`new`)."""
    from esi.contracts.schemas import ENVELOPE

    findings = _compare_messages(old, new)
    if ENVELOPE in old.schemas:
        if ENVELOPE not in new.schemas:
            findings.append(Finding(_schema_file(ENVELOPE), "$", "the envelope's schema is gone", True))
        else:
            findings += compare_schemas(old.schemas[ENVELOPE], new.schemas[ENVELOPE], file=_schema_file(ENVELOPE))
    findings += _compare_members(ASYNCAPI_FILE, old, new, "channels", "channel")
    findings += _compare_members(ASYNCAPI_FILE, old, new, "operations", "operation")
    return Report(findings, identical=old.files() == new.files())
