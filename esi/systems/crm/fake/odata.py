"""The fake Creatio's OData 4 query engine: entity sets, keys, `$filter`, `$select`, `$orderby`, `$top`, `$skip`,
`$count`, validation of written values, and the OData error envelope.

It works on the tables of `esi.systems.crm.fake.state` and knows nothing of routes or sessions; what it refuses, it
raises as `ODataError`, which the app answers with `odata_error_response`. Its messages are Creatio's own, so that a
client's error handling is exercised by the same texts it meets in production.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from esi.systems.crm.fake.state import (
    DATE,
    FOREIGN_KEYS,
    GUID,
    INT,
    NUM,
    SCHEMA_NAMESPACE,
    SCHEMAS,
    STR,
    Tables,
    is_guid,
)

#: the media type of every OData answer
ODATA_JSON = "application/json; odata.metadata=minimal"
#: the headers of every OData answer
ODATA_HEADERS = {"odata-version": "4.0"}

_QUERY_OPTIONS = {"$filter", "$select", "$top", "$skip", "$orderby", "$count", "$format"}


class ODataError(Exception):
    """An error the fake answers in the OData 4 envelope."""

    def __init__(self, status: int, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.inner = inner or message


def odata_error_response(status: int, message: str, inner: str | None = None) -> JSONResponse:
    """The OData 4 error envelope, as Creatio sends it."""
    inner_error = {"message": inner or message, "type": "", "stacktrace": ""}
    body = {"error": {"code": "", "message": message, "innererror": inner_error}}
    return JSONResponse(body, status_code=status, media_type=ODATA_JSON, headers=ODATA_HEADERS)


def entity_set(tables: Tables, name: str) -> dict[str, dict[str, Any]]:
    """The rows of the entity set `name`, by Id; a 404 for a set the fake does not model."""
    if name not in SCHEMAS:
        raise ODataError(404, f"Resource not found for the segment '{name}'.")
    return tables[name]


def parse_key(raw: str) -> str:
    """The key of `Set(<key>)`: a bare GUID, lower-cased (OData 3's `guid'...'` is refused, as Creatio does)."""
    if raw.startswith("guid'"):
        raise ODataError(
            400,
            "The request is invalid.",
            f"The key value '{raw}' was not formatted correctly: keys are bare GUIDs in OData 4.",
        )
    if not is_guid(raw):
        raise ODataError(400, "The request is invalid.", f"The key value '{raw}' is not a valid Edm.Guid.")
    return raw.lower()


# --- written values -------------------------------------------------------------------------------------------------


def validate_values(tables: Tables, entity: str, body: object, *, creating: bool) -> dict[str, Any]:
    """Check a POST/PATCH body against the schema and the checked lookups; return it with GUIDs lower-cased."""
    if not isinstance(body, dict) or not body:
        raise ODataError(400, "The request is invalid.", "The request body must be a non-empty JSON object.")
    schema = SCHEMAS[entity]
    clean: dict[str, Any] = {}
    for name, value in body.items():
        if name.startswith("@odata."):
            continue
        kind = schema.get(name)
        if kind is None:
            raise ODataError(
                400,
                "The request is invalid.",
                f"The property '{name}' does not exist on type '{SCHEMA_NAMESPACE}.{entity}'. "
                "Make sure to only use property names that are defined by the type.",
            )
        if name == "Id" and not creating:
            raise ODataError(400, "The request is invalid.", "The key property 'Id' cannot be changed.")
        clean[name] = _convert(entity, name, kind, value)
        target = FOREIGN_KEYS.get((entity, name))
        if target is not None and clean[name] not in tables[target]:
            raise ODataError(
                400,
                "The request is invalid.",
                f"Value '{value}' of column '{name}' does not match any '{target}' record.",
            )
    return clean


def _convert(entity: str, name: str, kind: str, value: object) -> Any:
    def bad() -> ODataError:
        return ODataError(
            400,
            "The request is invalid.",
            f"Cannot convert the literal '{value}' to the expected type '{kind}' of property '{entity}.{name}'.",
        )

    if kind == GUID:
        if not is_guid(value):
            raise bad()
        return str(value).lower()
    if kind in (STR, DATE):
        if not isinstance(value, str):
            raise bad()
        return value
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind == NUM:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):  # IEEE754Compatible=true sends decimals as strings
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    raise AssertionError(kind)  # pragma: no cover


# --- $filter ---------------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<guidlit>guid'[^']*')
      | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:  # pragma: no cover - the pattern matches any non-space
            break
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None  # noqa: S101 - every alternative of the pattern is named; narrows for mypy
        tokens.append((kind, match.group(kind)))
    return tokens


def parse_filter(text: str, entity: str) -> list[tuple[str, object]]:
    """`Col eq literal [and Col eq literal]...` → [(column, value)]; anything else is a 400."""
    schema = SCHEMAS[entity]
    tokens = _tokenize(text)
    clauses: list[tuple[str, object]] = []
    i = 0

    def syntax(detail: str) -> ODataError:
        return ODataError(400, "The query specified in the URI is not valid. " + detail, detail)

    while True:
        if i + 3 > len(tokens):
            raise syntax(f"Expression expected in '$filter={text}'.")
        (k1, column), (k2, op), (k3, literal) = tokens[i], tokens[i + 1], tokens[i + 2]
        if k1 != "word" or column not in schema:
            raise syntax(f"Could not find a property named '{column}' on type '{SCHEMA_NAMESPACE}.{entity}'.")
        if k2 != "word" or op != "eq":
            raise syntax(f"The fake supports only 'eq' comparisons, not '{op}'.")
        kind = schema[column]
        if k3 == "guidlit":
            raise syntax(f"Unrecognized 'Edm.String' literal '{literal}' (the OData 3 form guid'...' is not OData 4).")
        if k3 == "string":
            if kind != STR and kind != DATE:
                raise syntax(
                    f"A binary operator with incompatible types was detected. "
                    f"Found operand types '{kind}' and 'Edm.String' for operator kind 'Equal'."
                )
            value: object = literal[1:-1].replace("''", "'")
        elif k3 == "guid":
            if kind != GUID:
                raise syntax(
                    f"A binary operator with incompatible types was detected. "
                    f"Found operand types '{kind}' and 'Edm.Guid' for operator kind 'Equal'."
                )
            value = literal.lower()
        elif k3 == "number" and kind in (INT, NUM):
            value = float(literal)
        elif k3 == "word" and literal == "null":
            value = None
        else:
            raise syntax(f"Syntax error at '{literal}' in '$filter={text}'.")
        clauses.append((column, value))
        i += 3
        if i == len(tokens):
            return clauses
        if tokens[i] != ("word", "and"):
            raise syntax(f"The fake supports only 'and' between comparisons, not '{tokens[i][1]}'.")
        i += 1


def _matches(row: dict[str, Any], clauses: list[tuple[str, object]]) -> bool:
    for column, value in clauses:
        actual = row.get(column)
        if isinstance(value, float):
            if actual is None or float(actual) != value:
                return False
        elif isinstance(value, str) and is_guid(value) and is_guid(actual):
            if str(actual).lower() != value:
                return False
        elif actual != value:
            return False
    return True


# --- answers ---------------------------------------------------------------------------------------------------------


def _order_key(column: str, row: dict[str, Any]) -> tuple[bool, Any]:
    """Nulls last (first in descending order), then by value."""
    return row.get(column) is None, row.get(column)


def query_collection(tables: Tables, entity: str, params: Mapping[str, str], service_root: str) -> dict[str, Any]:
    """`GET <Set>` with its query options: the OData 4 body, `@odata.context` under `service_root`."""
    rows = list(entity_set(tables, entity).values())
    schema = SCHEMAS[entity]
    for name in params:
        if name.startswith("$") and name not in _QUERY_OPTIONS:
            raise ODataError(400, f"The query parameter '{name}' is not supported.")
    if "$filter" in params:
        clauses = parse_filter(params["$filter"], entity)
        rows = [row for row in rows if _matches(row, clauses)]
    if "$orderby" in params:
        for part in reversed([p.strip() for p in params["$orderby"].split(",") if p.strip()]):
            column, _, direction = part.partition(" ")
            if column not in schema or direction.strip() not in ("", "asc", "desc"):
                raise ODataError(
                    400, f"Could not find a property named '{column}' on type '{SCHEMA_NAMESPACE}.{entity}'."
                )
            rows.sort(key=functools.partial(_order_key, column), reverse=direction.strip() == "desc")
    total = len(rows)
    for option in ("$skip", "$top"):
        if option in params:
            try:
                n = int(params[option])
                if n < 0:
                    raise ValueError
            except ValueError:
                raise ODataError(400, f"Invalid value '{params[option]}' for {option} query option found.") from None
            rows = rows[n:] if option == "$skip" else rows[:n]
    columns = select_columns(params.get("$select"), entity)
    context = f"{service_root}/$metadata#{entity}"
    if columns is not None:
        context += f"({','.join(columns)})"
    body: dict[str, Any] = {"@odata.context": context}
    if params.get("$count") == "true":
        body["@odata.count"] = total
    body["value"] = [project(row, columns, entity) for row in rows]
    return body


def select_columns(raw: str | None, entity: str) -> list[str] | None:
    """The columns a `$select` names (None without one: every column); a 400 for a column the set lacks."""
    if raw is None:
        return None
    columns = [c.strip() for c in raw.split(",") if c.strip()]
    for column in columns:
        if column not in SCHEMAS[entity]:
            raise ODataError(400, f"Could not find a property named '{column}' on type '{SCHEMA_NAMESPACE}.{entity}'.")
    return columns


def project(row: dict[str, Any], columns: list[str] | None, entity: str) -> dict[str, Any]:
    """`row` cut down to `columns` (every column of the set when None), in that order."""
    names = columns if columns is not None else list(SCHEMAS[entity])
    return {name: row.get(name) for name in names}
