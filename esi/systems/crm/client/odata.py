"""OData 4 on Creatio's orders and their statuses: find an order, look up status ids (cached), set an order's status.

`OData` is the JSON plumbing (an entity's URL, one object, a `value` list) that `files` uses too; `Orders` is what
the bus does with `Order` and `OrderStatus`; `changed_since` reads what changed in any object after a `Watermark`
(the poller's reader).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from esi.errors import BusinessError, NotFound, PermanentError
from esi.systems.crm.client.session import SYSTEM, CreatioSession

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class CreatioOrder:
    """An `Order` row, reduced to what the bus needs."""

    id: str
    number: str
    status_id: str


def is_guid(value: str) -> bool:
    """Whether `value` is a GUID in the 8-4-4-4-12 form Creatio uses for keys."""
    return bool(_GUID_RE.match(value))


def odata_string(value: str) -> str:
    """`value` as an OData string literal: single-quoted, inner quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def require_guid(value: str, what: str) -> None:
    """Refuse (`PermanentError`, code `invalid_id`) a key that is not a GUID before it reaches a URL."""
    if not is_guid(value):
        raise PermanentError(f"crm: the {what} {value!r} is not a GUID", code="invalid_id", system=SYSTEM)


class OData:
    """Creatio's OData 4 service at `odata_path` (`/0/odata` on .NET Framework builds, `/odata` on .NET Core)."""

    def __init__(self, session: CreatioSession, odata_path: str) -> None:
        self.session = session
        self._root = "/" + odata_path.strip("/")

    def path(self, resource: str) -> str:
        """The URL path of `resource`, e.g. `Order` or `Order(<id>)`."""
        return f"{self._root}/{resource}"

    async def get(self, resource: str, params: dict[str, str] | None, *, operation: str) -> dict[str, Any]:
        """The JSON object at `resource`; `PermanentError` (code `bad_response`) if the answer is not one."""
        response = await self.session.call("GET", self.path(resource), params=params, operation=operation)
        try:
            body = response.json()
        except ValueError:
            raise PermanentError(
                f"crm {operation}: the answer is not JSON", code="bad_response", system=SYSTEM
            ) from None
        if not isinstance(body, dict):
            raise PermanentError(
                f"crm {operation}: the answer is not a JSON object", code="bad_response", system=SYSTEM
            )
        return body

    async def rows(self, entity: str, params: dict[str, str], *, operation: str) -> list[dict[str, Any]]:
        """The rows of a query on `entity` (its `value` list)."""
        body = await self.get(entity, params, operation=operation)
        rows = body.get("value")
        if not isinstance(rows, list):
            raise PermanentError(f"crm {operation}: the answer has no 'value' list", code="bad_response", system=SYSTEM)
        return rows


class Orders:
    """Orders and their statuses; status ids by name are cached for the client's lifetime."""

    def __init__(self, odata: OData) -> None:
        self._odata = odata
        self._status_ids: dict[str, str] = {}
        self._status_lock = asyncio.Lock()

    async def find_order(self, order_ref: str) -> CreatioOrder:
        """The order `order_ref` names: its Id (a GUID) or else its Number.

        Raises:
            NotFound: no such order.
            BusinessError: (code `ambiguous_order`) several orders carry that number.
        """
        select = "Id,Number,StatusId"
        if is_guid(order_ref):
            try:
                row = await self._odata.get(f"Order({order_ref.lower()})", {"$select": select}, operation="find_order")
            except NotFound:
                raise NotFound(f"crm: no order with Id {order_ref}", system=SYSTEM) from None
            return _order(row)
        rows = await self._odata.rows(
            "Order",
            {"$filter": f"Number eq {odata_string(order_ref)}", "$select": select, "$top": "2"},
            operation="find_order",
        )
        if not rows:
            raise NotFound(f"crm: no order with Number {order_ref!r}", system=SYSTEM)
        if len(rows) > 1:
            raise BusinessError(f"crm: several orders with Number {order_ref!r}", code="ambiguous_order", system=SYSTEM)
        return _order(rows[0])

    async def find_status_id(self, name: str) -> str:
        """The Id of the `OrderStatus` called `name`; known ids are cached.

        Raises:
            BusinessError: (code `unknown_status`) no status has that name.
        """
        cached = self._status_ids.get(name)
        if cached is not None:
            return cached
        async with self._status_lock:  # concurrent misses for one name make one request
            cached = self._status_ids.get(name)
            if cached is not None:
                return cached
            rows = await self._odata.rows(
                "OrderStatus",
                {"$filter": f"Name eq {odata_string(name)}", "$select": "Id,Name"},
                operation="find_status_id",
            )
            if not rows:
                raise BusinessError(f"crm: unknown order status {name!r}", code="unknown_status", system=SYSTEM)
            status_id = str(rows[0]["Id"])
            self._status_ids[name] = status_id
            return status_id

    async def set_order_status(self, order_id: str, status_id: str) -> None:
        """Set the order's `StatusId` (Creatio answers 204).

        Raises:
            NotFound: no order with that Id.
            PermanentError: Creatio refused the value (e.g. a status id that does not exist).
        """
        require_guid(order_id, "order id")
        require_guid(status_id, "status id")
        await self._odata.session.call(
            "PATCH",
            self._odata.path(f"Order({order_id.lower()})"),
            json_body={"StatusId": status_id},
            operation="set_order_status",
            expect="empty",
        )

    async def status_name(self, status_id: str) -> str | None:
        """The `Name` of the `OrderStatus` with that Id, None for none; every status is read once, and again when an
        unknown id turns up (a status added since)."""
        status_id = status_id.lower()
        names = {sid.lower(): name for name, sid in self._status_ids.items()}
        if status_id in names:
            return names[status_id]
        async with self._status_lock:
            rows = await self._odata.rows("OrderStatus", {"$select": "Id,Name"}, operation="status_names")
            for row in rows:
                self._status_ids[str(row["Name"])] = str(row["Id"])
        return next((str(row["Name"]) for row in rows if str(row["Id"]).lower() == status_id), None)

    async def check(self) -> None:
        """One cheap authenticated query (the first status id)."""
        await self._odata.rows("OrderStatus", {"$top": "1", "$select": "Id"}, operation="check")


def _order(row: dict[str, Any]) -> CreatioOrder:
    try:
        return CreatioOrder(id=str(row["Id"]), number=str(row["Number"]), status_id=str(row["StatusId"]))
    except KeyError as exc:
        raise PermanentError(f"crm: an Order row lacks {exc}", code="bad_response", system=SYSTEM) from None


# --- reading what changed -------------------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d+)")


def parse_modified_on(value: object) -> datetime:
    """A `ModifiedOn` as OData 4 writes it (ISO 8601, `Z` or an offset; .NET's 7-digit fractions cut to
    microseconds) as an aware UTC datetime; `PermanentError` (code `bad_response`) for anything else."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(_FRACTION.sub(lambda m: m.group(1)[:7], value.strip()))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    raise PermanentError(f"crm: a ModifiedOn that is not a date: {value!r}", code="bad_response", system=SYSTEM)


def odata_datetime(value: datetime) -> str:
    """An `Edm.DateTimeOffset` literal for `$filter` (UTC, microseconds, `Z`; written bare, not quoted)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Watermark:
    """Where a reader of changes stands: the newest `ModifiedOn` it took, and the Ids it took at exactly that time.

    Rows are read with `ModifiedOn ge <modified_on>` and the ones in `seen` skipped, so that two rows sharing a
    `ModifiedOn` are both read even when a page ends between them, and a row read once is not read again until it
    changes again (then its `ModifiedOn` is later).
    """

    modified_on: datetime
    seen: frozenset[str] = frozenset()

    def after(self, rows: list[dict[str, Any]]) -> Watermark:
        """The watermark once `rows` (in `ModifiedOn` order, each with `Id`) are taken too."""
        mark = self
        for row in rows:
            when = parse_modified_on(row.get("ModifiedOn"))
            row_id = str(row["Id"]).lower()
            if when > mark.modified_on:
                mark = Watermark(when, frozenset({row_id}))
            elif when == mark.modified_on:
                mark = Watermark(when, mark.seen | {row_id})
        return mark


@dataclass(frozen=True)
class ChangedPage:
    """One page of changed rows not taken before, and the watermark once they are."""

    rows: list[dict[str, Any]]
    watermark: Watermark


async def changed_since(
    odata: OData, entity: str, watermark: Watermark, *, page_size: int = 100, select: tuple[str, ...] = ()
) -> AsyncIterator[ChangedPage]:
    """The rows of `entity` changed since `watermark`, oldest first, a page at a time until none is left.

    Each query is `$filter=ModifiedOn ge <mark>&$orderby=ModifiedOn,Id&$top=<page_size>` (with `$skip` while a
    run of rows sharing the mark's time fills whole pages); rows the watermark already holds are left out. A page is
    yielded with the watermark that takes it (pages left empty by that are not yielded); the caller stores it once
    it has handled the rows, and the next page is read from it. Every row carries `Id` and `ModifiedOn`.
    """
    if page_size < 1:
        raise ValueError("page_size must be positive")
    columns = ",".join(dict.fromkeys(("Id", "ModifiedOn", *select)))
    mark, skip = watermark, 0
    while True:
        params = {
            "$filter": f"ModifiedOn ge {odata_datetime(mark.modified_on)}",
            "$orderby": "ModifiedOn,Id",
            "$top": str(page_size),
            "$select": columns,
        }
        if skip:
            params["$skip"] = str(skip)
        rows = await odata.rows(entity, params, operation="changed_since")
        fresh = [
            row
            for row in rows
            if not (
                parse_modified_on(row.get("ModifiedOn")) == mark.modified_on and str(row.get("Id")).lower() in mark.seen
            )
        ]
        after = mark.after(fresh)
        if fresh:
            yield ChangedPage(fresh, after)
        if len(rows) < page_size:
            return
        if after.modified_on == mark.modified_on:
            # the whole page shares the mark's time (taken or seen): read on past it within that time
            skip += len(rows)
        else:
            skip = 0
        mark = after


async def newest_change(odata: OData, entity: str) -> datetime | None:
    """The newest `ModifiedOn` of `entity` (None when it has no rows)."""
    rows = await odata.rows(
        entity, {"$orderby": "ModifiedOn desc", "$top": "1", "$select": "Id,ModifiedOn"}, operation="newest_change"
    )
    return parse_modified_on(rows[0].get("ModifiedOn")) if rows else None
