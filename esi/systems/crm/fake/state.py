"""What the fake Creatio holds: the seeded rows and their schemas, files being uploaded, sessions and counters.

Nothing here knows HTTP or OData: `esi.systems.crm.fake.odata` queries and validates these tables, and
`esi.systems.crm.fake.app` serves them.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from esi.fakes.faults import Faults

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

CONTACT_IVANOV_ID = "c4ed336c-3e9b-40fe-8b82-5632476472b4"
CONTACT_PETROVA_ID = "410006e1-ca4e-4502-a9ec-e54d922d2c00"
CONTACT_SIDOROV_ID = "98dae6f4-70ae-4f4b-9db5-e4339be11a92"

#: seeded `Contact` rows: Id → (Name, Email, Phone)
CONTACTS: dict[str, tuple[str, str, str]] = {
    CONTACT_IVANOV_ID: ("Иванов Иван", "ivanov@example.com", "+7 495 000-00-01"),
    CONTACT_PETROVA_ID: ("Petrova Anna", "petrova@example.com", ""),
    CONTACT_SIDOROV_ID: ("Sidorov Oleg", "", "+7 812 000-00-03"),
}

#: when the seeded rows were last modified (every seeded row carries it as `ModifiedOn`)
SEED_MODIFIED_ON = "2024-06-02T00:00:00.000Z"

_SEED_ORDERS: tuple[tuple[str, str, float, str], ...] = (
    (ORDER_9876_ID, "ORD9876", 15000.0, "2024-05-14T00:00:00Z"),
    (ORDER_0001_ID, "ORD0001", 1250.5, "2024-06-01T00:00:00Z"),
    (ORDER_0002_ID, "ORD0002", 99.99, "2024-06-02T00:00:00Z"),
)

#: how a dead session is answered: 401, a redirect to the login page, or the login page with HTTP 200
EXPIRY_MODES = ("401", "redirect", "html")

# --- entity schemas -------------------------------------------------------------------------------------------------

#: the namespace Creatio's OData error messages name entity types in
SCHEMA_NAMESPACE = "Terrasoft.Configuration"

GUID, STR, NUM, INT, DATE = "Edm.Guid", "Edm.String", "Edm.Decimal", "Edm.Int32", "Edm.DateTimeOffset"

#: the modelled entity sets: column → EDM type, in the order Creatio lists them
SCHEMAS: dict[str, dict[str, str]] = {
    "Order": {
        "Id": GUID,
        "Number": STR,
        "Amount": NUM,
        "Date": DATE,
        "StatusId": GUID,
        "PaymentStatusId": GUID,
        "DeliveryStatusId": GUID,
        "AccountId": GUID,
        "ContactId": GUID,
        "ModifiedOn": DATE,
    },
    "OrderStatus": {"Id": GUID, "Name": STR, "Description": STR},
    "Contact": {
        "Id": GUID,
        "Name": STR,
        "Email": STR,
        "Phone": STR,
        "MobilePhone": STR,
        "ModifiedOn": DATE,
    },
    # a site's custom object for the DMS's policies (esi writes the policy events there)
    "UsrPolicy": {
        "Id": GUID,
        "UsrNumber": STR,
        "UsrStatus": STR,
        "UsrRevision": INT,
        "UsrHolder": STR,
        "ModifiedOn": DATE,
    },
    "OrderFile": {
        "Id": GUID,
        "Name": STR,
        "OrderId": GUID,
        "Size": INT,
        "TotalSize": INT,
        "TypeId": GUID,
        "Version": INT,
        "CreatedOn": DATE,
    },
}
#: lookups checked against their table (the other lookup columns point at tables the fake does not model)
FOREIGN_KEYS: dict[tuple[str, str], str] = {("Order", "StatusId"): "OrderStatus", ("OrderFile", "OrderId"): "Order"}

_LONG_FRACTION = re.compile(r"(\.\d+)")
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

Tables = dict[str, dict[str, dict[str, Any]]]


def is_guid(value: object) -> bool:
    """Whether `value` is a GUID string (either case)."""
    return isinstance(value, str) and bool(_GUID_RE.match(value))


def now_iso() -> str:
    """The time now as Creatio stamps `CreatedOn` (UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_datetime(value: str) -> datetime:
    """An `Edm.DateTimeOffset` (ISO 8601; `Z` or an offset; none is UTC) as an aware UTC datetime.

    Fractions beyond microseconds (.NET's 100 ns ticks) are cut; raises ValueError for anything else.
    """
    text = _LONG_FRACTION.sub(lambda m: m.group(1)[:7], value.strip())
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """A UTC time as the fake writes `ModifiedOn`: ISO 8601 with milliseconds and `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def stamp() -> str:
    """The time now as Creatio stamps `ModifiedOn` (UTC, milliseconds: two changes may share one)."""
    return format_datetime(datetime.now(UTC))


# --- state ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """Where the site's business process posts a change (`<url>/events/crm/<type>`, HTTP Basic); no url: off."""

    url: str | None = None
    user: str = ""
    password: str = ""
    enabled: bool = True

    @property
    def active(self) -> bool:
        return bool(self.url) and self.enabled

    def public(self) -> dict[str, Any]:
        """The target without its password (for `/_fake/state`)."""
        return {"url": self.url, "user": self.user, "enabled": self.enabled}


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
        """Bytes received so far (overlapping chunks counted once)."""
        return sum(end - start + 1 for start, end in self.ranges)

    def add_range(self, start: int, end: int, chunk: bytes) -> None:
        """Store the bytes `start`..`end` (inclusive); the file is complete once every byte of `total` arrived."""
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
        """The file's bytes as uploaded."""
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
        oauth_clients: dict[str, str] | None = None,
        token_lifetime_s: float = 3600.0,
        webhook: WebhookTarget | None = None,
    ) -> None:
        if expiry_mode not in EXPIRY_MODES:
            raise ValueError(f"expiry_mode must be one of {EXPIRY_MODES}, not {expiry_mode!r}")
        if token_lifetime_s <= 0:
            raise ValueError("token_lifetime_s must be positive")
        self.username = username
        self.password = password
        self.odata_prefix = "/" + odata_prefix.strip("/")
        self.initial_expiry_mode = expiry_mode
        self.expiry_mode = expiry_mode
        self.csrf_failure_status = csrf_failure_status
        self.session_ttl_s = session_ttl_s
        #: the Identity Service's client applications: client_id → client_secret
        self.oauth_clients = dict(oauth_clients or {})
        self.initial_token_lifetime_s = token_lifetime_s
        self.token_lifetime_s = token_lifetime_s
        #: access token → when it expires (monotonic seconds)
        self.tokens: dict[str, float] = {}
        self.initial_webhook = webhook or WebhookTarget()
        self.webhook = self.initial_webhook
        self.faults = Faults()
        self.sessions: dict[str, Session] = {}
        self.tables: Tables = {}
        self.files: dict[str, StoredFile] = {}
        self.counters: dict[str, Any] = {}
        self.webhook_calls: list[dict[str, Any]] = []
        self.reset()

    # -- lifecycle

    def reset(self) -> None:
        """Back to the seed: rows, sessions, counters, faults and expiry mode."""
        self.expiry_mode = self.initial_expiry_mode
        self.token_lifetime_s = self.initial_token_lifetime_s
        self.webhook = self.initial_webhook
        self.webhook_calls.clear()
        self.sessions.clear()
        self.tokens.clear()
        self.files.clear()
        self.faults.reset()
        statuses = {sid: {"Id": sid, "Name": name, "Description": ""} for name, sid in ORDER_STATUS_IDS.items()}
        orders = {
            oid: self._order_row(oid, number, amount, date, STATUS_NEW_ID) for oid, number, amount, date in _SEED_ORDERS
        }
        contacts = {
            cid: {
                "Id": cid,
                "Name": name,
                "Email": email,
                "Phone": phone,
                "MobilePhone": "",
                "ModifiedOn": SEED_MODIFIED_ON,
            }
            for cid, (name, email, phone) in CONTACTS.items()
        }
        self.tables = {
            "Order": orders,
            "OrderStatus": statuses,
            "OrderFile": {},
            "Contact": contacts,
            "UsrPolicy": {},
        }
        self.counters = {
            "token_requests": 0,
            "tokens_issued": 0,
            "bearer_rejections": 0,
            "webhooks_sent": 0,
            "webhooks_failed": 0,
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
            "ModifiedOn": SEED_MODIFIED_ON,
        }

    def add_order(
        self,
        number: str,
        *,
        order_id: str | None = None,
        amount: float = 0.0,
        date: str | None = None,
        status_id: str = STATUS_NEW_ID,
    ) -> dict[str, Any]:
        """Add an `Order` row (for tests); returns it."""
        order_id = (order_id or str(uuid.uuid4())).lower()
        if not is_guid(order_id):
            raise ValueError(f"not a GUID: {order_id!r}")
        if status_id.lower() not in self.tables["OrderStatus"]:
            raise ValueError(f"unknown status id {status_id!r}")
        row = self._order_row(order_id, number, amount, date or "2024-01-01T00:00:00Z", status_id.lower())
        row["ModifiedOn"] = stamp()
        self.tables["Order"][order_id] = row
        return row

    # -- changes a manager makes

    def order_by_number(self, number: str) -> dict[str, Any] | None:
        """The `Order` row with that `Number` (the first, should several share it)."""
        return next((row for row in self.tables["Order"].values() if row["Number"] == number), None)

    def change(self, entity: str, row: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """Change `row` of `entity` as a manager saving a page would: the columns given (already validated), and
        `ModifiedOn` stamped now unless `values` sets it (a test making two changes share one moment)."""
        modified_on = values.pop("ModifiedOn", None)
        row.update(values)
        row["ModifiedOn"] = format_datetime(parse_datetime(modified_on)) if modified_on else stamp()
        return row

    def status_name(self, status_id: str) -> str | None:
        """The `Name` of an `OrderStatus`, None for an unknown id."""
        status = self.tables["OrderStatus"].get(status_id)
        return None if status is None else str(status["Name"])

    def event_body(self, entity: str, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The event type and JSON body the site's business process posts for a change of `row` (docs/creatio.md)."""
        if entity == "Order":
            return "order_changed", {
                "Id": row["Id"],
                "Number": row["Number"],
                "Status": self.status_name(row["StatusId"]),
                "ModifiedOn": row["ModifiedOn"],
                "Amount": row["Amount"],
            }
        return "contact_changed", {
            "Id": row["Id"],
            "Name": row["Name"],
            "Email": row["Email"] or None,
            "Phone": row["Phone"] or row["MobilePhone"] or None,
            "ModifiedOn": row["ModifiedOn"],
        }

    # -- OAuth 2.0 (the Identity Service)

    def issue_token(self, client_id: object, client_secret: object) -> tuple[str, float] | None:
        """A new access token and its lifetime for a known client application, None (not counted) otherwise."""
        self.counters["token_requests"] += 1
        if not isinstance(client_id, str) or self.oauth_clients.get(client_id) != client_secret:
            return None
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.token_lifetime_s
        self.counters["tokens_issued"] += 1
        # tokens long dead are forgotten (a test issuing one every 5 s for minutes keeps few)
        now = time.monotonic()
        for dead in [t for t, until in self.tokens.items() if until < now - 60]:
            del self.tokens[dead]
        return token, self.token_lifetime_s

    def token_valid(self, token: str) -> bool:
        """Whether a bearer token is one the Identity Service issued and it has not expired."""
        until = self.tokens.get(token)
        return until is not None and time.monotonic() < until

    # -- files

    def add_file(self, file_id: str, **columns: Any) -> StoredFile:
        """Create the `OrderFile` row `file_id` (defaults for the columns not given) and its empty `Data`."""
        row = {
            "Id": file_id,
            "Name": "",
            "OrderId": EMPTY_GUID,
            "Size": 0,
            "TotalSize": 0,
            "TypeId": FILE_TYPE_ID,
            "Version": 1,
            "CreatedOn": now_iso(),
            **columns,
        }
        self.tables["OrderFile"][file_id] = row
        stored = self.files[file_id] = StoredFile(row=row)
        return stored

    def delete_file(self, file_id: str) -> bool:
        """Drop the `OrderFile` row `file_id` and its bytes; False if there was none."""
        if self.tables["OrderFile"].pop(file_id, None) is None:
            return False
        self.files.pop(file_id, None)
        return True

    # -- sessions

    def count(self, endpoint: str) -> None:
        """Count one call of `endpoint` (see `counters.requests` in the package's description)."""
        requests = self.counters["requests"]
        requests[endpoint] = requests.get(endpoint, 0) + 1

    def login(self, user: object, password: object) -> Session | None:
        """A new session for the right credentials, None (counted as a failed login) for any others."""
        if user != self.username or password != self.password:
            self.counters["failed_logins"] += 1
            return None
        self.counters["logins"] += 1
        session = Session(
            token=secrets.token_hex(32), csrf=secrets.token_urlsafe(16), user=self.username, last_used=time.monotonic()
        )
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
        """Drop every session and access token (and switch the expiry mode when `mode` is given); returns how many
        were dropped."""
        if mode is not None:
            if mode not in EXPIRY_MODES:
                raise ValueError(f"mode must be one of {EXPIRY_MODES}")
            self.expiry_mode = mode
        dropped = len(self.sessions) + len(self.tokens)
        self.sessions.clear()
        self.tokens.clear()
        return dropped

    # -- inspection

    def state(self) -> dict[str, Any]:
        """Everything the fake holds, as JSON-ready data (`GET /_fake/state`)."""
        statuses = self.tables["OrderStatus"]
        orders = []
        for row in self.tables["Order"].values():
            status = statuses.get(row["StatusId"])
            orders.append({**row, "StatusName": status["Name"] if status else None})
        files = [
            {
                "id": stored.row["Id"],
                "name": stored.row["Name"],
                "order_id": stored.row["OrderId"],
                "size": stored.row["Size"],
                "total_size": stored.total,
                "received": stored.received,
                "mime_type": stored.mime_type,
                "complete": stored.complete,
                "sha256": hashlib.sha256(stored.data()).hexdigest() if stored.complete else None,
            }
            for stored in self.files.values()
        ]
        return {
            "config": {
                "odata_prefix": self.odata_prefix,
                "expiry_mode": self.expiry_mode,
                "csrf_failure_status": self.csrf_failure_status,
                "session_ttl_s": self.session_ttl_s,
                "token_lifetime_s": self.token_lifetime_s,
                "oauth_clients": sorted(self.oauth_clients),
                "webhook": self.webhook.public(),
            },
            "orders": orders,
            "statuses": list(statuses.values()),
            "contacts": list(self.tables["Contact"].values()),
            "files": files,
            "webhook_calls": list(self.webhook_calls),
            "policies": list(self.tables["UsrPolicy"].values()),
            "sessions": len(self.sessions),
            "tokens": len(self.tokens),
            "counters": json.loads(json.dumps(self.counters)),
            "faults": self.faults.state(),
        }
