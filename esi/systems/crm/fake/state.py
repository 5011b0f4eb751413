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
    },
    "OrderStatus": {"Id": GUID, "Name": STR, "Description": STR},
    # a site's custom object for the DMS's policies (esi writes the policy events there)
    "UsrPolicy": {"Id": GUID, "UsrNumber": STR, "UsrStatus": STR, "UsrRevision": INT, "UsrHolder": STR},
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

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

Tables = dict[str, dict[str, dict[str, Any]]]


def is_guid(value: object) -> bool:
    """Whether `value` is a GUID string (either case)."""
    return isinstance(value, str) and bool(_GUID_RE.match(value))


def now_iso() -> str:
    """The time now as Creatio stamps `CreatedOn` (UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
        self.faults = Faults()
        self.sessions: dict[str, Session] = {}
        self.tables: Tables = {}
        self.files: dict[str, StoredFile] = {}
        self.counters: dict[str, Any] = {}
        self.reset()

    # -- lifecycle

    def reset(self) -> None:
        """Back to the seed: rows, sessions, counters, faults and expiry mode."""
        self.expiry_mode = self.initial_expiry_mode
        self.sessions.clear()
        self.files.clear()
        self.faults.reset()
        statuses = {sid: {"Id": sid, "Name": name, "Description": ""} for name, sid in ORDER_STATUS_IDS.items()}
        orders = {
            oid: self._order_row(oid, number, amount, date, STATUS_NEW_ID) for oid, number, amount, date in _SEED_ORDERS
        }
        self.tables = {"Order": orders, "OrderStatus": statuses, "OrderFile": {}, "UsrPolicy": {}}
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
        self.tables["Order"][order_id] = row
        return row

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
        """Drop every session (and switch the expiry mode when `mode` is given); returns how many were dropped."""
        if mode is not None:
            if mode not in EXPIRY_MODES:
                raise ValueError(f"mode must be one of {EXPIRY_MODES}")
            self.expiry_mode = mode
        dropped = len(self.sessions)
        self.sessions.clear()
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
            },
            "orders": orders,
            "statuses": list(statuses.values()),
            "files": files,
            "policies": list(self.tables["UsrPolicy"].values()),
            "sessions": len(self.sessions),
            "counters": json.loads(json.dumps(self.counters)),
            "faults": self.faults.state(),
        }
