"""A faithful fake Creatio: cookie-session auth, OData 4 on orders and their statuses, and the two-step file upload.

It reproduces what `shared/reference/external-systems.md` describes of a real Creatio, so that a client working
against it works against the real thing:

- `POST /ServiceModel/AuthService.svc/Login` answers HTTP 200 either way and says `Code: 0` or `Code: 1`; success
  sets the `.ASPXAUTH`, `BPMCSRF`, `BPMLOADER` and `UserName` cookies.
- Every business call needs a live `.ASPXAUTH` session; writes also need the `BPMCSRF` header (else
  `csrf_failure_status`). A dead session is answered the way `expiry_mode` says: `"401"`, `"redirect"` (302 to
  `/Login/NuiLogin.aspx`) or `"html"` (HTTP 200 with a login page).
- OData 4 under `odata_prefix` on `Order`, `OrderStatus` and `OrderFile`: `$filter` with `eq` joined by `and`,
  `$select`, `$top`, `$skip`, `$orderby`, `$count`; bare-GUID keys; `PATCH` → 204; the OData error envelope.
- `POST /0/rest/FileApiService/UploadFile` in `Content-Range` chunks, `GET /0/rest/FileService/Download/OrderFile/<id>`.

Test and operations endpoints, never subject to faults or auth:

- `GET /_fake/state` — orders, statuses, files (with sha256 and completeness), sessions and counters.
  `counters.requests` counts calls per endpoint, keyed `"<METHOD> <EntitySet>"` (`"GET Order"`, `"GET OrderStatus"`,
  `"POST OrderFile"`, …) with `(key)` appended for single-entity calls (`"GET Order(key)"`, `"PATCH Order(key)"`),
  plus `"POST Login"`, `"POST UploadFile"` and `"GET Download"`.
- `POST /_fake/reset` — back to the seed: sessions dropped, counters zeroed, faults cleared, expiry mode restored.
- `POST /_fake/expire-session` — invalidate every session now; body `{"mode": "401"|"redirect"|"html"}` (optional)
  also switches the expiry mode.
- `POST /_fake/orders` — add an order (`{"Number": ..., "Amount"?, "Date"?, "StatusId"?, "Id"?}`), e.g. one whose
  number holds quotes or Cyrillic.
- `POST /_fake/faults` — see `esi.fakes.faults`; faults apply to every business endpoint, `Login` included.

The seeded rows have fixed ids, exported as `ORDER_STATUS_IDS`, `ORDER_IDS` and the `STATUS_*_ID` / `ORDER_*_ID`
constants below.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from esi.api import TELEMETRY_OFF
from esi.fakes import faults as faults_module

#: the value of an empty lookup column
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
#: `OrderFile.TypeId` of an attached file (as opposed to a link)
FILE_TYPE_ID = "529bc2f8-0ee0-df11-971b-001d60e938c6"

STATUS_NEW_ID = "3f0964a2-554a-4a98-a172-aabd11cee30c"
STATUS_CONFIRMED_ID = "f6907647-2fc1-422a-9b17-e3178e753b7b"
STATUS_IN_PROGRESS_ID = "8cdc0a6d-b170-4406-bf56-03464d8fe73f"
STATUS_SHIPPED_ID = "9b69b64f-3e1b-4784-84de-d321115ff018"
STATUS_DELIVERED_ID = "b70c7c4a-8682-43f7-975a-418e7944b69e"
STATUS_COMPLETED_ID = "db814e8f-b8c5-4314-b1fa-7a7caffae62a"
STATUS_CANCELLED_ID = "c51c7748-1935-48a5-a5d6-81ce8e12d731"

#: seeded `OrderStatus` rows: Name → Id
ORDER_STATUS_IDS: dict[str, str] = {
    "New": STATUS_NEW_ID,
    "Confirmed": STATUS_CONFIRMED_ID,
    "In progress": STATUS_IN_PROGRESS_ID,
    "Shipped": STATUS_SHIPPED_ID,
    "Delivered": STATUS_DELIVERED_ID,
    "Completed": STATUS_COMPLETED_ID,
    "Cancelled": STATUS_CANCELLED_ID,
}

ORDER_9876_ID = "3b9f1667-165a-4dbf-b422-4d490c214605"
ORDER_0001_ID = "d5b1e7e0-dd64-406c-8d94-83814fc453af"
ORDER_0002_ID = "a468eff7-2d7d-423d-842b-6cd656382cb5"

#: seeded `Order` rows: Number → Id (every one starts in status "New")
ORDER_IDS: dict[str, str] = {
    "ORD9876": ORDER_9876_ID,
    "ORD0001": ORDER_0001_ID,
    "ORD0002": ORDER_0002_ID,
}

_SEED_ORDERS: tuple[tuple[str, str, float, str], ...] = (
    (ORDER_9876_ID, "ORD9876", 15000.0, "2024-05-14T00:00:00Z"),
    (ORDER_0001_ID, "ORD0001", 1250.5, "2024-06-01T00:00:00Z"),
    (ORDER_0002_ID, "ORD0002", 99.99, "2024-06-02T00:00:00Z"),
)

EXPIRY_MODES = ("401", "redirect", "html")
LOGIN_PAGE_PATH = "/Login/NuiLogin.aspx"
REST_PREFIX = "/0/rest"
_SCHEMA_NAMESPACE = "Terrasoft.Configuration"

# --- entity schemas -------------------------------------------------------------------------------------------------

_GUID, _STR, _NUM, _INT, _DATE = "Edm.Guid", "Edm.String", "Edm.Decimal", "Edm.Int32", "Edm.DateTimeOffset"

_SCHEMAS: dict[str, dict[str, str]] = {
    "Order": {
        "Id": _GUID,
        "Number": _STR,
        "Amount": _NUM,
        "Date": _DATE,
        "StatusId": _GUID,
        "PaymentStatusId": _GUID,
        "DeliveryStatusId": _GUID,
        "AccountId": _GUID,
        "ContactId": _GUID,
    },
    "OrderStatus": {"Id": _GUID, "Name": _STR, "Description": _STR},
    "OrderFile": {
        "Id": _GUID,
        "Name": _STR,
        "OrderId": _GUID,
        "Size": _INT,
        "TotalSize": _INT,
        "TypeId": _GUID,
        "Version": _INT,
        "CreatedOn": _DATE,
    },
}
#: lookups checked against their table (the other lookup columns point at tables the fake does not model)
_FOREIGN_KEYS: dict[tuple[str, str], str] = {("Order", "StatusId"): "OrderStatus", ("OrderFile", "OrderId"): "Order"}

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RESOURCE_RE = re.compile(r"^(?P<set>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<key>[^()]*)\))?$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")

_ODATA_JSON = "application/json; odata.metadata=minimal"
_ODATA_HEADERS = {"odata-version": "4.0"}

_LOGIN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Creatio</title></head>
<body><form id="loginForm" method="post" action="/ServiceModel/AuthService.svc/Login">
<input name="UserName" type="text"><input name="UserPassword" type="password">
<button type="submit">Log in</button></form></body></html>
"""


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
    return JSONResponse(body, status_code=status, media_type=_ODATA_JSON, headers=_ODATA_HEADERS)


def _is_guid(value: object) -> bool:
    return isinstance(value, str) and bool(_GUID_RE.match(value))


# --- state ----------------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """One logged-in session."""

    token: str
    csrf: str
    user: str
    last_used: float


@dataclass
class StoredFile:
    """An `OrderFile` row and the bytes uploaded into its `Data` column."""

    row: dict[str, Any]
    mime_type: str = "application/octet-stream"
    total: int | None = None
    buffer: bytearray = field(default_factory=bytearray)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    complete: bool = False

    @property
    def received(self) -> int:
        return sum(end - start + 1 for start, end in self.ranges)

    def add_range(self, start: int, end: int, chunk: bytes) -> None:
        self.buffer[start : end + 1] = chunk
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (start, end)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.ranges = merged
        self.complete = self.total is not None and self.received >= self.total

    def data(self) -> bytes:
        return bytes(self.buffer)


class FakeCreatio:
    """The fake's whole state, reachable as `app.state.fake`."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        odata_prefix: str,
        expiry_mode: str,
        csrf_failure_status: int,
        session_ttl_s: float | None,
    ) -> None:
        if expiry_mode not in EXPIRY_MODES:
            raise ValueError(f"expiry_mode must be one of {EXPIRY_MODES}, not {expiry_mode!r}")
        self.username = username
        self.password = password
        self.odata_prefix = "/" + odata_prefix.strip("/")
        self.initial_expiry_mode = expiry_mode
        self.expiry_mode = expiry_mode
        self.csrf_failure_status = csrf_failure_status
        self.session_ttl_s = session_ttl_s
        self.faults = faults_module.Faults()
        self.sessions: dict[str, Session] = {}
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.files: dict[str, StoredFile] = {}
        self.counters: dict[str, Any] = {}
        self.reset()

    # -- lifecycle

    def reset(self) -> None:
        """Back to the seed: rows, sessions, counters, faults and expiry mode."""
        self.expiry_mode = self.initial_expiry_mode
        self.sessions.clear()
        self.files.clear()
        reset_faults = getattr(self.faults, "reset", None)  # newer Faults also forget their call times
        if reset_faults is not None:
            reset_faults()
        else:
            self.faults.clear()
            self.faults.injected = 0
        statuses = {sid: {"Id": sid, "Name": name, "Description": ""} for name, sid in ORDER_STATUS_IDS.items()}
        orders = {oid: self._order_row(oid, number, amount, date, STATUS_NEW_ID)
                  for oid, number, amount, date in _SEED_ORDERS}
        self.tables = {"Order": orders, "OrderStatus": statuses, "OrderFile": {}}
        self.counters = {
            "logins": 0,
            "failed_logins": 0,
            "patches": 0,
            "expired_responses": 0,
            "csrf_failures": 0,
            "upload_chunks": 0,
            "requests": {},
        }

    @staticmethod
    def _order_row(order_id: str, number: str, amount: float, date: str, status_id: str) -> dict[str, Any]:
        return {
            "Id": order_id,
            "Number": number,
            "Amount": amount,
            "Date": date,
            "StatusId": status_id,
            "PaymentStatusId": EMPTY_GUID,
            "DeliveryStatusId": EMPTY_GUID,
            "AccountId": EMPTY_GUID,
            "ContactId": EMPTY_GUID,
        }

    def add_order(self, number: str, *, order_id: str | None = None, amount: float = 0.0, date: str | None = None,
                  status_id: str = STATUS_NEW_ID) -> dict[str, Any]:
        """Add an `Order` row (for tests); returns it."""
        order_id = (order_id or str(uuid.uuid4())).lower()
        if not _is_guid(order_id):
            raise ValueError(f"not a GUID: {order_id!r}")
        if status_id.lower() not in self.tables["OrderStatus"]:
            raise ValueError(f"unknown status id {status_id!r}")
        row = self._order_row(order_id, number, amount, date or "2024-01-01T00:00:00Z", status_id.lower())
        self.tables["Order"][order_id] = row
        return row

    # -- sessions

    def count(self, endpoint: str) -> None:
        requests = self.counters["requests"]
        requests[endpoint] = requests.get(endpoint, 0) + 1

    def login(self, user: object, password: object) -> Session | None:
        if user != self.username or password != self.password:
            self.counters["failed_logins"] += 1
            return None
        self.counters["logins"] += 1
        session = Session(token=secrets.token_hex(32), csrf=secrets.token_urlsafe(16), user=self.username,
                          last_used=time.monotonic())
        self.sessions[session.token] = session
        return session

    def session_for(self, token: str | None) -> Session | None:
        """The live session a `.ASPXAUTH` value names; expiry is sliding, like Creatio's."""
        if not token:
            return None
        session = self.sessions.get(token)
        if session is None:
            return None
        now = time.monotonic()
        if self.session_ttl_s is not None and now - session.last_used > self.session_ttl_s:
            del self.sessions[token]
            return None
        session.last_used = now
        return session

    def expire_sessions(self, mode: str | None = None) -> int:
        if mode is not None:
            if mode not in EXPIRY_MODES:
                raise ValueError(f"mode must be one of {EXPIRY_MODES}")
            self.expiry_mode = mode
        dropped = len(self.sessions)
        self.sessions.clear()
        return dropped

    # -- inspection

    def state(self) -> dict[str, Any]:
        statuses = self.tables["OrderStatus"]
        orders = []
        for row in self.tables["Order"].values():
            status = statuses.get(row["StatusId"])
            orders.append({**row, "StatusName": status["Name"] if status else None})
        files = []
        for stored in self.files.values():
            files.append({
                "id": stored.row["Id"],
                "name": stored.row["Name"],
                "order_id": stored.row["OrderId"],
                "size": stored.row["Size"],
                "total_size": stored.total,
                "received": stored.received,
                "mime_type": stored.mime_type,
                "complete": stored.complete,
                "sha256": hashlib.sha256(stored.data()).hexdigest() if stored.complete else None,
            })
        return {
            "config": {
                "odata_prefix": self.odata_prefix,
                "expiry_mode": self.expiry_mode,
                "csrf_failure_status": self.csrf_failure_status,
                "session_ttl_s": self.session_ttl_s,
            },
            "orders": orders,
            "statuses": list(statuses.values()),
            "files": files,
            "sessions": len(self.sessions),
            "counters": json.loads(json.dumps(self.counters)),
            "faults": self.faults.state(),
        }

    # -- OData

    def entity_set(self, name: str) -> dict[str, dict[str, Any]]:
        if name not in _SCHEMAS:
            raise ODataError(404, f"Resource not found for the segment '{name}'.")
        return self.tables[name]

    def validate_values(self, entity: str, body: object, *, creating: bool) -> dict[str, Any]:
        """Check a POST/PATCH body against the schema and the checked lookups; return it with GUIDs lower-cased."""
        if not isinstance(body, dict) or not body:
            raise ODataError(400, "The request is invalid.", "The request body must be a non-empty JSON object.")
        schema = _SCHEMAS[entity]
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata."):
                continue
            kind = schema.get(name)
            if kind is None:
                raise ODataError(400, "The request is invalid.",
                                 f"The property '{name}' does not exist on type '{_SCHEMA_NAMESPACE}.{entity}'. "
                                 "Make sure to only use property names that are defined by the type.")
            if name == "Id" and not creating:
                raise ODataError(400, "The request is invalid.", "The key property 'Id' cannot be changed.")
            clean[name] = _convert(entity, name, kind, value)
            target = _FOREIGN_KEYS.get((entity, name))
            if target is not None and clean[name] not in self.tables[target]:
                raise ODataError(400, "The request is invalid.",
                                 f"Value '{value}' of column '{name}' does not match any '{target}' record.")
        return clean


def _convert(entity: str, name: str, kind: str, value: object) -> Any:
    def bad() -> ODataError:
        return ODataError(400, "The request is invalid.",
                          f"Cannot convert the literal '{value}' to the expected type '{kind}' "
                          f"of property '{entity}.{name}'.")

    if kind == _GUID:
        if not _is_guid(value):
            raise bad()
        return str(value).lower()
    if kind in (_STR, _DATE):
        if not isinstance(value, str):
            raise bad()
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind == _NUM:
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
        assert kind is not None
        tokens.append((kind, match.group(kind)))
    return tokens


def parse_filter(text: str, entity: str) -> list[tuple[str, object]]:
    """`Col eq literal [and Col eq literal]...` → [(column, value)]; anything else is a 400."""
    schema = _SCHEMAS[entity]
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
            raise syntax(f"Could not find a property named '{column}' on type '{_SCHEMA_NAMESPACE}.{entity}'.")
        if k2 != "word" or op != "eq":
            raise syntax(f"The fake supports only 'eq' comparisons, not '{op}'.")
        kind = schema[column]
        if k3 == "guidlit":
            raise syntax(f"Unrecognized 'Edm.String' literal '{literal}' (the OData 3 form guid'...' is not OData 4).")
        if k3 == "string":
            if kind != _STR and kind != _DATE:
                raise syntax(f"A binary operator with incompatible types was detected. "
                             f"Found operand types '{kind}' and 'Edm.String' for operator kind 'Equal'.")
            value: object = literal[1:-1].replace("''", "'")
        elif k3 == "guid":
            if kind != _GUID:
                raise syntax(f"A binary operator with incompatible types was detected. "
                             f"Found operand types '{kind}' and 'Edm.Guid' for operator kind 'Equal'.")
            value = literal.lower()
        elif k3 == "number" and kind in (_INT, _NUM):
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
        elif isinstance(value, str) and _is_guid(value) and _is_guid(actual):
            if str(actual).lower() != value:
                return False
        elif actual != value:
            return False
    return True


def _parse_key(raw: str) -> str:
    if raw.startswith("guid'"):
        raise ODataError(400, "The request is invalid.",
                         f"The key value '{raw}' was not formatted correctly: keys are bare GUIDs in OData 4.")
    if not _is_guid(raw):
        raise ODataError(400, "The request is invalid.", f"The key value '{raw}' is not a valid Edm.Guid.")
    return raw.lower()


def _query_collection(fake: FakeCreatio, entity: str, request: Request) -> dict[str, Any]:
    rows = list(fake.entity_set(entity).values())
    schema = _SCHEMAS[entity]
    params = request.query_params
    known = {"$filter", "$select", "$top", "$skip", "$orderby", "$count", "$format"}
    for name in params:
        if name.startswith("$") and name not in known:
            raise ODataError(400, f"The query parameter '{name}' is not supported.")
    if "$filter" in params:
        clauses = parse_filter(params["$filter"], entity)
        rows = [row for row in rows if _matches(row, clauses)]
    if "$orderby" in params:
        for part in reversed([p.strip() for p in params["$orderby"].split(",") if p.strip()]):
            column, _, direction = part.partition(" ")
            if column not in schema or direction.strip() not in ("", "asc", "desc"):
                raise ODataError(400, f"Could not find a property named '{column}' on type "
                                      f"'{_SCHEMA_NAMESPACE}.{entity}'.")
            rows.sort(key=lambda r, c=column: (r.get(c) is None, r.get(c)), reverse=direction.strip() == "desc")
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
    columns = _select(params.get("$select"), entity)
    context = f"{str(request.base_url).rstrip('/')}{fake.odata_prefix}/$metadata#{entity}"
    if columns is not None:
        context += f"({','.join(columns)})"
    body: dict[str, Any] = {"@odata.context": context}
    if params.get("$count") == "true":
        body["@odata.count"] = total
    body["value"] = [_project(row, columns, entity) for row in rows]
    return body


def _select(raw: str | None, entity: str) -> list[str] | None:
    if raw is None:
        return None
    columns = [c.strip() for c in raw.split(",") if c.strip()]
    for column in columns:
        if column not in _SCHEMAS[entity]:
            raise ODataError(400, f"Could not find a property named '{column}' on type '{_SCHEMA_NAMESPACE}.{entity}'.")
    return columns


def _project(row: dict[str, Any], columns: list[str] | None, entity: str) -> dict[str, Any]:
    names = columns if columns is not None else list(_SCHEMAS[entity])
    return {name: row.get(name) for name in names}


# --- the app ---------------------------------------------------------------------------------------------------------


def create_app(
    *,
    username: str = "Supervisor",
    password: str = "Supervisor",
    odata_prefix: str = "/0/odata",
    expiry_mode: str = "401",
    csrf_failure_status: int = 401,
    session_ttl_s: float | None = None,
) -> FastAPI:
    """Build a fake Creatio.

    Args:
        username: the one user that may log in.
        password: that user's password.
        odata_prefix: where OData 4 lives: `/0/odata` (.NET Framework builds) or `/odata` (.NET Core builds).
        expiry_mode: how a dead session is answered: `"401"`, `"redirect"` (302 to the login page) or `"html"`
            (HTTP 200 with the login page).
        csrf_failure_status: the status for a write with a live session but a missing or wrong `BPMCSRF` header.
        session_ttl_s: idle seconds after which a session expires by itself (sliding); `None` = never.
    """
    fake = FakeCreatio(username=username, password=password, odata_prefix=odata_prefix, expiry_mode=expiry_mode,
                       csrf_failure_status=csrf_failure_status, session_ttl_s=session_ttl_s)
    app = FastAPI(title="Fake Creatio", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF)
    app.state.fake = fake
    prefix = fake.odata_prefix

    def expired_response(request: Request) -> Response:
        fake.counters["expired_responses"] += 1
        mode = fake.expiry_mode
        if mode == "redirect":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{LOGIN_PAGE_PATH}?ReturnUrl={quote(target, safe='')}", status_code=302)
        if mode == "html":
            return HTMLResponse(_LOGIN_PAGE, status_code=200)
        return JSONResponse({"Message": "Authentication failed."}, status_code=401,
                            headers={"WWW-Authenticate": 'Forms realm="Creatio"'})

    def authenticate(request: Request) -> Response | None:
        """None if the call may go on, else the response refusing it."""
        session = fake.session_for(request.cookies.get(".ASPXAUTH"))
        if session is None:
            return expired_response(request)
        if request.method in ("POST", "PATCH", "PUT", "DELETE", "MERGE"):
            if request.headers.get("BPMCSRF") != session.csrf:
                fake.counters["csrf_failures"] += 1
                return JSONResponse({"Message": "The CSRF token is missing or invalid."},
                                    status_code=fake.csrf_failure_status)
        return None

    # -- auth

    @app.post("/ServiceModel/AuthService.svc/Login")
    async def login(request: Request) -> Response:
        """Creatio's cookie login: always HTTP 200, `Code` says whether it worked."""
        fake.count("POST Login")
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"Code": 1, "Message": "The request body is not a valid login request.",
                                 "Exception": None, "PasswordChangeUrl": None, "RedirectUrl": None})
        session = fake.login(body.get("UserName"), body.get("UserPassword"))
        if session is None:
            return JSONResponse({"Code": 1, "Message": "Either username or password is incorrect.",
                                 "Exception": None, "PasswordChangeUrl": None, "RedirectUrl": None})
        response = JSONResponse({"Code": 0, "Message": "", "Exception": None, "PasswordChangeUrl": None,
                                 "RedirectUrl": None})
        response.set_cookie(".ASPXAUTH", session.token, path="/", httponly=True)
        response.set_cookie("BPMCSRF", session.csrf, path="/")
        response.set_cookie("BPMLOADER", secrets.token_hex(12), path="/", httponly=True)
        response.set_cookie("UserName", quote(session.user, safe=""), path="/")
        return response

    @app.get(LOGIN_PAGE_PATH)
    async def login_page() -> HTMLResponse:
        """The page an expired session is redirected to."""
        return HTMLResponse(_LOGIN_PAGE)

    # -- files

    @app.post(REST_PREFIX + "/FileApiService/UploadFile")
    async def upload_file(request: Request) -> Response:
        """One `Content-Range` chunk of a file's `Data`; the file is complete once every byte has arrived."""
        fake.count("POST UploadFile")
        refused = authenticate(request)
        if refused is not None:
            return refused
        params = request.query_params

        def fail(message: str, status: int = 400) -> JSONResponse:
            return JSONResponse({"success": False, "errorInfo": {"message": message}}, status_code=status)

        file_id = params.get("fileId", "")
        parent = params.get("parentColumnValue", "")
        if not _is_guid(file_id):
            return fail("fileId must be a GUID")
        file_id = file_id.lower()
        if params.get("entitySchemaName", "OrderFile") != "OrderFile" or params.get("columnName", "Data") != "Data":
            return fail("the fake stores only OrderFile.Data")
        try:
            total = int(params.get("totalFileLength", ""))
        except ValueError:
            return fail("totalFileLength must be an integer")
        chunk = await request.body()
        content_range = request.headers.get("Content-Range")
        if content_range is None:
            start, end, range_total = 0, len(chunk) - 1, len(chunk)
        else:
            match = _CONTENT_RANGE_RE.match(content_range)
            if match is None:
                return fail(f"bad Content-Range {content_range!r}")
            start, end, range_total = (int(g) for g in match.groups())
        if range_total != total or not (0 <= start <= end < total) or len(chunk) != end - start + 1:
            return fail(f"Content-Range {start}-{end}/{range_total} does not fit {len(chunk)} bytes of {total}")
        stored = fake.files.get(file_id)
        if stored is None:
            # FileApiService creates the row from its parent columns when step 1 was skipped
            if not _is_guid(parent) or parent.lower() not in fake.tables["Order"]:
                return fail(f"parentColumnValue {parent!r} is not an existing Order")
            row = {"Id": file_id, "Name": params.get("fileName", ""), "OrderId": parent.lower(), "Size": total,
                   "TotalSize": total, "TypeId": FILE_TYPE_ID, "Version": 1, "CreatedOn": _now_iso()}
            fake.tables["OrderFile"][file_id] = row
            stored = fake.files[file_id] = StoredFile(row=row)
        elif _is_guid(parent) and parent.lower() != stored.row["OrderId"]:
            return fail("parentColumnValue does not match the file's order")
        if stored.total != total or (stored.complete and start == 0):
            stored.total, stored.buffer, stored.ranges, stored.complete = total, bytearray(total), [], False
        stored.mime_type = params.get("mimeType") or stored.mime_type
        stored.add_range(start, end, chunk)
        if stored.complete:
            stored.row["Size"] = total
        fake.counters["upload_chunks"] += 1
        return JSONResponse({"success": True})

    @app.get(REST_PREFIX + "/FileService/Download/OrderFile/{file_id}")
    async def download_file(file_id: str, request: Request) -> Response:
        """The bytes of an uploaded file."""
        fake.count("GET Download")
        refused = authenticate(request)
        if refused is not None:
            return refused
        stored = fake.files.get(file_id.lower())
        if stored is None or not stored.complete:
            return JSONResponse({"Message": f"File {file_id} not found."}, status_code=404)
        disposition = f"attachment; filename*=UTF-8''{quote(stored.row['Name'], safe='')}"
        return Response(stored.data(), media_type=stored.mime_type, headers={"Content-Disposition": disposition})

    # -- OData

    @app.api_route(prefix + "/{resource:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def odata(resource: str, request: Request) -> Response:
        """OData 4 on Order, OrderStatus and OrderFile."""
        match = _RESOURCE_RE.match(resource)
        entity = match.group("set") if match else resource
        raw_key = match.group("key") if match else None
        fake.count(f"{request.method} {entity}" + ("(key)" if raw_key is not None else ""))
        refused = authenticate(request)
        if refused is not None:
            return refused
        accept = request.headers.get("accept", "")
        if accept and "json" not in accept and "*/*" not in accept:
            return odata_error_response(406, f"The fake answers JSON only, not {accept!r}.")
        try:
            if match is None:
                raise ODataError(404, f"Resource not found for the segment '{resource}'.")
            table = fake.entity_set(entity)
            key = _parse_key(raw_key) if raw_key is not None else None
            return await _dispatch(fake, request, entity, table, key)
        except ODataError as exc:
            return odata_error_response(exc.status, exc.message, exc.inner)

    # -- test and operations endpoints

    @app.get("/_fake/state")
    async def state() -> dict[str, Any]:
        """Everything the fake holds."""
        return fake.state()

    @app.post("/_fake/reset")
    async def reset() -> dict[str, Any]:
        """Back to the seed."""
        fake.reset()
        return fake.state()

    @app.post("/_fake/expire-session")
    async def expire_session(request: Request) -> Response:
        """Invalidate every session now; `{"mode": ...}` also switches the expiry mode."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=422)
        mode = body.get("mode") if isinstance(body, dict) else None
        try:
            dropped = fake.expire_sessions(mode)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"expired": dropped, "mode": fake.expiry_mode})

    @app.post("/_fake/orders", status_code=201)
    async def add_order(request: Request) -> Response:
        """Add an order (tests): `{"Number": ..., "Amount"?, "Date"?, "StatusId"?, "Id"?}`."""
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("Number"), str):
                raise ValueError("body must be an object with a string Number")
            row = fake.add_order(body["Number"], order_id=body.get("Id"), amount=body.get("Amount", 0.0),
                                 date=body.get("Date"), status_id=body.get("StatusId", STATUS_NEW_ID))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(row, status_code=201)

    faults_module.install(app, fake.faults)
    return app


async def _json_body(request: Request) -> object:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise ODataError(400, "The request is invalid.", "The request body is not valid JSON.") from None


async def _dispatch(fake: FakeCreatio, request: Request, entity: str, table: dict[str, dict[str, Any]],
                    key: str | None) -> Response:
    method = request.method
    if method == "GET" and key is None:
        return JSONResponse(_query_collection(fake, entity, request), media_type=_ODATA_JSON, headers=_ODATA_HEADERS)
    if method == "GET":
        row = table.get(key)  # type: ignore[arg-type]
        if row is None:
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        columns = _select(request.query_params.get("$select"), entity)
        context = f"{str(request.base_url).rstrip('/')}{fake.odata_prefix}/$metadata#{entity}/$entity"
        body = {"@odata.context": context, **_project(row, columns, entity)}
        return JSONResponse(body, media_type=_ODATA_JSON, headers=_ODATA_HEADERS)
    if method == "PATCH" and key is not None:
        row = table.get(key)
        if row is None:
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        values = fake.validate_values(entity, await _json_body(request), creating=False)
        row.update(values)
        fake.counters["patches"] += 1
        return Response(status_code=204, headers=_ODATA_HEADERS)
    if method == "POST" and key is None and entity == "OrderFile":
        values = fake.validate_values(entity, await _json_body(request), creating=True)
        for required in ("Name", "OrderId"):
            if not values.get(required):
                raise ODataError(400, "The request is invalid.", f"The column '{required}' is required.")
        file_id = values.pop("Id", None) or str(uuid.uuid4())
        if file_id in table:
            raise ODataError(400, "The request is invalid.", f"An OrderFile with Id '{file_id}' already exists.")
        row = {"Id": file_id, "Name": "", "OrderId": EMPTY_GUID, "Size": 0, "TotalSize": 0, "TypeId": FILE_TYPE_ID,
               "Version": 1, "CreatedOn": _now_iso(), **values}
        table[file_id] = row
        fake.files[file_id] = StoredFile(row=row)
        context = f"{str(request.base_url).rstrip('/')}{fake.odata_prefix}/$metadata#{entity}/$entity"
        location = f"{str(request.base_url).rstrip('/')}{fake.odata_prefix}/{entity}({file_id})"
        return JSONResponse({"@odata.context": context, **row}, status_code=201, media_type=_ODATA_JSON,
                            headers={**_ODATA_HEADERS, "Location": location})
    if method == "DELETE" and key is not None and entity == "OrderFile":
        if table.pop(key, None) is None:
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        fake.files.pop(key, None)
        return Response(status_code=204, headers=_ODATA_HEADERS)
    raise ODataError(405, f"The fake does not support {method} on '{entity}'" + (" with a key." if key else "."))


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
