"""The Creatio client: cookie-session login, OData 4 on orders and their statuses, files attached to orders.

Every call carries the session cookies, the `BPMCSRF` header and `ForceUseSession: true`. A session that has expired
shows up in one of three ways (HTTP 401; a 3xx to `/Login/`; HTTP 200 with an HTML login page): the client then logs
in again — once, however many calls noticed it at the same time — and retries the call once, without spending one of
the bus's retries. Every other failure is translated into `esi.errors` at this boundary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from esi.errors import BusinessError, NotFound, PermanentError, SessionExpired
from esi.systems.http import error_for_status, http_client, translate_transport_errors

logger = logging.getLogger(__name__)

SYSTEM = "crm"
#: `OrderFile.TypeId` of an attached file (as opposed to a link)
FILE_TYPE_ID = "529bc2f8-0ee0-df11-971b-001d60e938c6"
LOGIN_PATH = "/ServiceModel/AuthService.svc/Login"

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ODATA_CONTENT_TYPE = "application/json; charset=utf-8; IEEE754Compatible=true"
_SESSION_COOKIE = ".ASPXAUTH"
_CSRF_COOKIE = "BPMCSRF"


@dataclass(frozen=True)
class CreatioOrder:
    """An `Order` row, reduced to what the bus needs."""

    id: str
    number: str
    status_id: str


@dataclass(frozen=True)
class AttachedFile:
    """A file attached to an order; `already_attached` says it was there before this call."""

    id: str
    name: str
    size: int
    already_attached: bool


@dataclass(frozen=True)
class _Session:
    generation: int
    cookies: dict[str, str]
    csrf: str | None


def is_guid(value: str) -> bool:
    """Whether `value` is a GUID in the 8-4-4-4-12 form Creatio uses for keys."""
    return bool(_GUID_RE.match(value))


def odata_string(value: str) -> str:
    """`value` as an OData string literal: single-quoted, inner quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


class CreatioClient:
    """An async client for one Creatio instance, safe for many concurrent calls.

    Use it as an async context manager (or call `aclose()`); it logs in on first use.

    Args:
        base_url: Creatio's root URL, e.g. `https://crm.example.com` (a path prefix is kept).
        username: the Creatio user the bus acts as.
        password: that user's password (never logged).
        odata_path: where OData 4 lives: `/0/odata` on .NET Framework builds, `/odata` on .NET Core builds.
        timeout: seconds allowed for each of connect, read, write and pool acquisition.
        ca_bundle: a CA bundle to trust instead of the system's; verification is always on.
        max_connections: the connection pool's size.
        upload_chunk_size: bytes per `UploadFile` request.
        transport: an httpx transport to use instead of aiohttp's sockets (tests).
        rest_path: where Creatio's REST services live (`/0/rest`; `/rest` on some .NET Core builds).
    """

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        password: str,
        odata_path: str = "/0/odata",
        timeout: float = 10.0,
        ca_bundle: str | None = None,
        max_connections: int = 100,
        upload_chunk_size: int = 1_048_576,
        transport: httpx.AsyncBaseTransport | None = None,
        rest_path: str = "/0/rest",
    ) -> None:
        if upload_chunk_size <= 0:
            raise ValueError("upload_chunk_size must be positive")
        self._username = username
        self._password = password
        self._odata = "/" + odata_path.strip("/")
        self._rest = "/" + rest_path.strip("/")
        self._chunk_size = upload_chunk_size
        self._http = http_client(
            base_url=base_url,
            timeout=timeout,
            ca_bundle=ca_bundle,
            max_connections=max_connections,
            follow_redirects=False,
            transport=transport,
            # the session's cookies are sent explicitly; a shared jar would let a late answer to an old session
            # overwrite the new one
            cookies=CookieJar(policy=_KeepNoCookies()),
        )
        self._session: _Session | None = None
        self._generation = 0
        self._login_lock = asyncio.Lock()
        self._status_ids: dict[str, str] = {}
        self._status_lock = asyncio.Lock()

    async def __aenter__(self) -> CreatioClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- session

    async def login(self) -> None:
        """Log in now, replacing any current session.

        Raises:
            PermanentError: (code `auth_failed`) Creatio refused the credentials.
            TransientError: Creatio could not be reached or answered 5xx/429.
        """
        async with self._login_lock:
            await self._login_locked()

    async def _login_locked(self) -> _Session:
        body = json.dumps({"UserName": self._username, "UserPassword": self._password}).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json",
                   "ForceUseSession": "true"}
        with translate_transport_errors(SYSTEM, "login"):
            response = await self._http.post(LOGIN_PATH, content=body, headers=headers)
        if response.status_code != 200:
            raise error_for_status(response, system=SYSTEM, operation="login", detail=_error_detail(response))
        try:
            result = response.json()
        except ValueError:
            result = None
        if not isinstance(result, dict) or "Code" not in result:
            raise PermanentError(f"crm login: unexpected answer from {LOGIN_PATH} (not Creatio's AuthService?)",
                                 code="auth_failed", system=SYSTEM)
        if result["Code"] not in (0, "0"):
            message = str(result.get("Message") or "no message")
            logger.warning("Creatio login as %s refused: %s", self._username, message)
            raise PermanentError(f"crm login as {self._username!r} refused (Code {result['Code']}): {message}",
                                 code="auth_failed", system=SYSTEM)
        cookies = _set_cookies(response)
        if not cookies.get(_SESSION_COOKIE):
            raise PermanentError("crm login: Creatio answered Code 0 but set no session cookie",
                                 code="auth_failed", system=SYSTEM)
        self._generation += 1
        self._session = _Session(self._generation, cookies, cookies.get(_CSRF_COOKIE))
        logger.info("Logged in to Creatio as %s (session %d)", self._username, self._generation)
        return self._session

    async def _current_session(self) -> _Session:
        session = self._session
        if session is not None and not self._login_lock.locked():
            return session
        async with self._login_lock:  # waits for a login in progress instead of racing it with a stale cookie
            if self._session is None:
                return await self._login_locked()
            return self._session

    async def _renew(self, stale: _Session, why: str) -> _Session:
        """A session newer than `stale`: another caller's if one already logged in again, else a fresh login."""
        async with self._login_lock:
            if self._session is not None and self._session.generation != stale.generation:
                return self._session
            logger.info("Creatio session %d expired (%s); logging in again", stale.generation, why)
            return await self._login_locked()

    # -- one call

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: str = "json",
    ) -> httpx.Response:
        """One business call with session renewal; returns the 2xx response or raises an `esi.errors` error."""
        session = await self._current_session()
        call_headers = {"Accept": "application/json", "ForceUseSession": "true", **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            call_headers["Content-Type"] = _ODATA_CONTENT_TYPE
        for attempt in (1, 2):
            request_headers = dict(call_headers)
            request_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
            if session.csrf:
                request_headers["BPMCSRF"] = session.csrf
            with translate_transport_errors(SYSTEM, operation):
                response = await self._http.request(method, path, params=params, content=content,
                                                    headers=request_headers)
            why = _expiry(response, expect)
            if why is None:
                self._absorb_cookies(session, response)
                if response.is_success:
                    return response
                raise error_for_status(response, system=SYSTEM, operation=operation, detail=_error_detail(response))
            if attempt == 1:
                session = await self._renew(session, why)
            elif response.status_code == 403:
                # a fresh session's CSRF token was refused too: not an expiry but a refusal
                raise error_for_status(response, system=SYSTEM, operation=operation, detail=_error_detail(response))
            else:
                raise SessionExpired(f"crm {operation}: session still refused right after logging in again ({why})",
                                     code="session_expired", system=SYSTEM)
        raise AssertionError("unreachable")  # pragma: no cover

    def _absorb_cookies(self, session: _Session, response: httpx.Response) -> None:
        """Keep a sliding-expiration renewal of the current session's cookies."""
        if "set-cookie" not in response.headers or self._session is not session:
            return
        updates = {name: value for name, value in _set_cookies(response).items() if value}
        if updates:
            cookies = {**session.cookies, **updates}
            self._session = _Session(session.generation, cookies, cookies.get(_CSRF_COOKIE, session.csrf))

    async def _odata_get(self, path: str, params: dict[str, str] | None, *, operation: str) -> dict[str, Any]:
        response = await self._call("GET", f"{self._odata}/{path}", params=params, operation=operation)
        try:
            body = response.json()
        except ValueError:
            raise PermanentError(f"crm {operation}: the answer is not JSON", code="bad_response",
                                 system=SYSTEM) from None
        if not isinstance(body, dict):
            raise PermanentError(f"crm {operation}: the answer is not a JSON object", code="bad_response",
                                 system=SYSTEM)
        return body

    async def _odata_rows(self, entity: str, params: dict[str, str], *, operation: str) -> list[dict[str, Any]]:
        body = await self._odata_get(entity, params, operation=operation)
        rows = body.get("value")
        if not isinstance(rows, list):
            raise PermanentError(f"crm {operation}: the answer has no 'value' list", code="bad_response", system=SYSTEM)
        return rows

    # -- orders and statuses

    async def find_order(self, order_ref: str) -> CreatioOrder:
        """The order `order_ref` names: its Id (a GUID) or else its Number.

        Raises:
            NotFound: no such order.
            BusinessError: (code `ambiguous_order`) several orders carry that number.
        """
        select = "Id,Number,StatusId"
        if is_guid(order_ref):
            try:
                row = await self._odata_get(f"Order({order_ref.lower()})", {"$select": select}, operation="find_order")
            except NotFound:
                raise NotFound(f"crm: no order with Id {order_ref}", system=SYSTEM) from None
            return _order(row)
        rows = await self._odata_rows(
            "Order", {"$filter": f"Number eq {odata_string(order_ref)}", "$select": select, "$top": "2"},
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
            rows = await self._odata_rows(
                "OrderStatus", {"$filter": f"Name eq {odata_string(name)}", "$select": "Id,Name"},
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
        _require_guid(order_id, "order id")
        _require_guid(status_id, "status id")
        await self._call("PATCH", f"{self._odata}/Order({order_id.lower()})", json_body={"StatusId": status_id},
                         operation="set_order_status", expect="empty")

    # -- files

    async def _order_files(self, order_id: str, file_name: str) -> list[tuple[str, int]]:
        _require_guid(order_id, "order id")
        rows = await self._odata_rows(
            "OrderFile",
            {"$filter": f"OrderId eq {order_id.lower()} and Name eq {odata_string(file_name)}",
             "$select": "Id,Name,Size"},
            operation="find_order_file",
        )
        return [(str(row["Id"]), int(row.get("Size") or 0)) for row in rows]

    async def find_order_file(self, order_id: str, file_name: str) -> tuple[str, int] | None:
        """`(id, size)` of a file called `file_name` attached to the order, or None."""
        files = await self._order_files(order_id, file_name)
        return files[0] if files else None

    async def attach_file(
        self, order_id: str, *, file_name: str, content: bytes, mime_type: str = "application/pdf"
    ) -> AttachedFile:
        """Attach `content` to the order as `file_name`, unless a file of that name and size already is.

        Creates the `OrderFile` row (with an Id chosen here), then uploads the bytes in `upload_chunk_size`
        ranges. If either step fails, the row is deleted (best effort) so that a retry does not mistake it for a
        finished attachment.

        Raises:
            PermanentError: the order id is not a GUID, the order does not exist, or Creatio refused the file.
            TransientError: a failure worth retrying; the call is idempotent.
        """
        size = len(content)
        if size == 0:
            raise PermanentError(f"crm: refusing to attach the empty file {file_name!r}", code="empty_file",
                                 system=SYSTEM)
        for file_id, existing_size in await self._order_files(order_id, file_name):
            if existing_size == size:
                logger.debug("File %r of %d bytes is already attached to order %s", file_name, size, order_id)
                return AttachedFile(id=file_id, name=file_name, size=size, already_attached=True)
        order_id = order_id.lower()
        # the row's Id is chosen here so that a row created by a call that then failed can be found and removed
        file_id = str(uuid.uuid4())
        try:
            await self._call(
                "POST", f"{self._odata}/OrderFile", operation="attach_file",
                json_body={"Id": file_id, "Name": file_name, "OrderId": order_id, "Size": size, "TotalSize": size,
                           "TypeId": FILE_TYPE_ID},
            )
            await self._upload(file_id, order_id, file_name, content, mime_type)
        except Exception:
            await self._delete_file_quietly(file_id)
            raise
        logger.debug("Attached %r (%d bytes) to order %s as file %s", file_name, size, order_id, file_id)
        return AttachedFile(id=file_id, name=file_name, size=size, already_attached=False)

    async def _upload(self, file_id: str, order_id: str, file_name: str, content: bytes, mime_type: str) -> None:
        total = len(content)
        params = {
            "fileId": file_id,
            "totalFileLength": str(total),
            "mimeType": mime_type,
            "fileName": file_name,
            "columnName": "Data",
            "entitySchemaName": "OrderFile",
            "parentColumnName": "Order",
            "parentColumnValue": order_id,
        }
        ascii_name = file_name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
        disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name, safe='')}"
        for start in range(0, total, self._chunk_size):
            chunk = content[start : start + self._chunk_size]
            end = start + len(chunk) - 1
            response = await self._call(
                "POST", f"{self._rest}/FileApiService/UploadFile", params=params, content=chunk,
                operation="upload_file",
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/{total}",
                         "Content-Disposition": disposition},
            )
            result = _json_or_none(response)
            if isinstance(result, dict) and result.get("success") is False:
                raise PermanentError(f"crm upload_file: Creatio refused the chunk {start}-{end}/{total}: "
                                     f"{_short(result)}", code="upload_refused", system=SYSTEM)

    async def _delete_file_quietly(self, file_id: str) -> None:
        try:
            await self._call("DELETE", f"{self._odata}/OrderFile({file_id})", operation="delete_file", expect="empty")
        except NotFound:
            pass  # never created
        except Exception as exc:  # the original failure matters more
            logger.warning("Could not delete the half-uploaded file %s: %s", file_id, exc)

    async def download_file(self, file_id: str) -> bytes:
        """The content of an attached file (`FileService/Download`)."""
        _require_guid(file_id, "file id")
        response = await self._call("GET", f"{self._rest}/FileService/Download/OrderFile/{file_id.lower()}",
                                    operation="download_file", expect="bytes",
                                    headers={"Accept": "*/*"})
        return response.content

    # -- health

    async def check(self) -> None:
        """Readiness: log in if needed and make one cheap authenticated call.

        Raises:
            TransientError: Creatio is unreachable or unwell.
            PermanentError: Creatio refuses the credentials.
        """
        await self._odata_rows("OrderStatus", {"$top": "1", "$select": "Id"}, operation="check")


# --- helpers ---------------------------------------------------------------------------------------------------------


class _KeepNoCookies(DefaultCookiePolicy):
    """A cookie policy that keeps nothing: the client sends each session's cookies itself."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    """name → value of every `Set-Cookie` in the response (attributes ignored)."""
    cookies: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        pair = header.split(";", 1)[0]
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            cookies[name.strip()] = value.strip().strip('"')
    return cookies


def _expiry(response: httpx.Response, expect: str) -> str | None:
    """Why the response says the session is gone, or None if it does not."""
    status = response.status_code
    if status == 401:
        return "HTTP 401"
    if status == 403:
        return "HTTP 403 (CSRF token refused?)"
    if 300 <= status < 400 and "/login/" in response.headers.get("location", "").lower():
        return f"HTTP {status} to the login page"
    if 200 <= status < 300:
        content_type = response.headers.get("content-type", "").lower()
        if "text/html" in content_type:
            return "an HTML login page instead of data"
        if expect == "json" and response.content.lstrip()[:1] == b"<":
            return "an HTML login page instead of JSON"
        if expect == "empty" and status == 200 and response.content.lstrip()[:1] == b"<":
            return "an HTML login page instead of 204"
    return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_detail(response: httpx.Response) -> str | None:
    """The message of an OData error envelope (or of a Creatio JSON error), if the body is one."""
    body = _json_or_none(response)
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        inner = error.get("innererror")
        inner_message = str(inner.get("message") or "") if isinstance(inner, dict) else ""
        if inner_message and inner_message != message:
            return f"{message} {inner_message}".strip()
        return message or None
    if isinstance(error, str):
        return error
    for key in ("Message", "message"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _short(value: object, limit: int = 300) -> str:
    return json.dumps(value, ensure_ascii=False)[:limit]


def _order(row: dict[str, Any]) -> CreatioOrder:
    try:
        return CreatioOrder(id=str(row["Id"]), number=str(row["Number"]), status_id=str(row["StatusId"]))
    except KeyError as exc:
        raise PermanentError(f"crm: an Order row lacks {exc}", code="bad_response", system=SYSTEM) from None


def _require_guid(value: str, what: str) -> None:
    if not is_guid(value):
        raise PermanentError(f"crm: the {what} {value!r} is not a GUID", code="invalid_id", system=SYSTEM)
