"""A faithful fake Creatio: cookie-session auth, OData 4 on orders and their statuses, and the two-step file upload.

It reproduces what Creatio's documentation describes of a real Creatio, so that a client working against it works
against the real thing:

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
constants.

Layout: `state` (what the fake holds: seeded rows and their schemas, files, sessions, counters), `odata` (the OData
query engine and error envelope, over those tables), `app` (the routes). `/_fake/state`, `/_fake/reset` and
`/_fake/faults` are the ones every fake has (`esi.fakes.controls`).
"""

from esi.systems.crm.fake.app import create_app
from esi.systems.crm.fake.state import (
    CONTACT_IVANOV_ID,
    CONTACT_PETROVA_ID,
    CONTACT_SIDOROV_ID,
    EMPTY_GUID,
    FILE_TYPE_ID,
    ORDER_0001_ID,
    ORDER_0002_ID,
    ORDER_9876_ID,
    ORDER_IDS,
    ORDER_STATUS_IDS,
    STATUS_CANCELLED_ID,
    STATUS_COMPLETED_ID,
    STATUS_CONFIRMED_ID,
    STATUS_DELIVERED_ID,
    STATUS_IN_PROGRESS_ID,
    STATUS_NEW_ID,
    STATUS_SHIPPED_ID,
)

__all__ = [
    "CONTACT_IVANOV_ID",
    "CONTACT_PETROVA_ID",
    "CONTACT_SIDOROV_ID",
    "EMPTY_GUID",
    "FILE_TYPE_ID",
    "ORDER_0001_ID",
    "ORDER_0002_ID",
    "ORDER_9876_ID",
    "ORDER_IDS",
    "ORDER_STATUS_IDS",
    "STATUS_CANCELLED_ID",
    "STATUS_COMPLETED_ID",
    "STATUS_CONFIRMED_ID",
    "STATUS_DELIVERED_ID",
    "STATUS_IN_PROGRESS_ID",
    "STATUS_NEW_ID",
    "STATUS_SHIPPED_ID",
    "create_app",
]
