"""The fake Creatio's OData 4 query engine: entity sets, keys, `$filter`, `$select`, `$orderby`, `$top`, `$skip`,
`$count`, validation of written values, and the OData error envelope.

It works on the tables of `esi.systems.crm.fake.state` and knows nothing of routes or sessions; what it refuses, it
raises as `ODataError`, which the app answers with `odata_error_response`. Its messages are Creatio's own, so that a
client's error handling is exercised by the same texts it meets in production.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
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
    parse_datetime,
)

_LOOKS_LIKE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")

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
    if kind == DATE:
        if not isinstance(value, str):
            raise bad()
        try:
            parse_datetime(value)
        except ValueError:
            raise bad() from None
        return value
    if kind == STR:
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
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
      | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)

#: the comparison operators of `$filter`, and what each asks of the two sides' order
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
#: the operators a lookup (GUID) column takes: Creatio compares keys for equality only
_GUID_OPERATORS = ("eq", "ne")

Clause = tuple[str, str, object]


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


def parse_filter(text: str, entity: str) -> list[Clause]:
    """`Col op literal [and Col op literal]...` → [(column, op, value)] (`op`: eq ne gt ge lt le); anything else
    is a 400. A date column takes a bare `Edm.DateTimeOffset` literal (`ModifiedOn gt 2024-05-14T10:00:00Z`)."""
    schema = SCHEMAS[entity]
    tokens = _tokenize(text)
    clauses: list[Clause] = []
    i = 0

    def syntax(detail: str) -> ODataError:
        return ODataError(400, "The query specified in the URI is not valid. " + detail, detail)

    def incompatible(kind: str, literal_kind: str, op: str) -> ODataError:
        return syntax(
            f"A binary operator with incompatible types was detected. "
            f"Found operand types '{kind}' and '{literal_kind}' for operator kind '{op}'."
        )

    while True:
        if i + 3 > len(tokens):
            raise syntax(f"Expression expected in '$filter={text}'.")
        (k1, column), (k2, op), (k3, literal) = tokens[i], tokens[i + 1], tokens[i + 2]
        if k1 != "word" or column not in schema:
            raise syntax(f"Could not find a property named '{column}' on type '{SCHEMA_NAMESPACE}.{entity}'.")
        if k2 != "word" or op not in _OPERATORS:
            raise syntax(f"The fake supports only the comparisons {' '.join(_OPERATORS)}, not '{op}'.")
        kind = schema[column]
        if k3 == "guidlit":
            raise syntax(f"Unrecognized 'Edm.String' literal '{literal}' (the OData 3 form guid'...' is not OData 4).")
        value: object
        if k3 == "string":
            if kind == DATE:
                try:
                    value = parse_datetime(literal[1:-1])
                except ValueError:
                    raise incompatible(kind, "Edm.String", op) from None
            elif kind != STR:
                raise incompatible(kind, "Edm.String", op)
            else:
                value = literal[1:-1].replace("''", "'")
        elif k3 == "datetime":
            if kind != DATE:
                raise incompatible(kind, DATE, op)
            try:
                value = parse_datetime(literal)
            except ValueError:
                raise syntax(f"Unrecognized '{DATE}' literal '{literal}'.") from None
        elif k3 == "guid":
            if kind != GUID:
                raise incompatible(kind, GUID, op)
            if op not in _GUID_OPERATORS:
                raise syntax(f"The fake compares '{GUID}' columns with eq and ne only, not '{op}'.")
            value = literal.lower()
        elif k3 == "number" and kind in (INT, NUM):
            value = float(literal)
        elif k3 == "word" and literal == "null":
            value = None
        else:
            raise syntax(f"Syntax error at '{literal}' in '$filter={text}'.")
        clauses.append((column, op, value))
        i += 3
        if i == len(tokens):
            return clauses
        if tokens[i] != ("word", "and"):
            raise syntax(f"The fake supports only 'and' between comparisons, not '{tokens[i][1]}'.")
        i += 1


def _comparable(value: object) -> object:
    """A column's value as its literal in `$filter` is parsed: dates as datetimes, numbers as floats."""
    if isinstance(value, str) and _LOOKS_LIKE_DATETIME.match(value):
        try:
            return parse_datetime(value)
        except ValueError:
            return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and is_guid(value):
        return value.lower()
    return value


def _matches(row: dict[str, Any], clauses: list[Clause]) -> bool:
    for column, op, value in clauses:
        actual = _comparable(row.get(column))
        if value is None or actual is None:
            if (op == "eq") != (actual is value):
                return False
            continue
        try:
            if not _OPERATORS[op](actual, value):
                return False
        except TypeError:  # a column of text compared with a date: no match, as SQL would have it
            return False
    return True


# --- answers ---------------------------------------------------------------------------------------------------------


def _order_key(column: str, row: dict[str, Any]) -> tuple[bool, Any]:
    """Nulls last (first in descending order), then by value (dates as dates, whatever their offset)."""
    value = row.get(column)
    return value is None, _comparable(value) if value is not None else None


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
