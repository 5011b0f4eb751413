"""The fake Creatio's routes: login, OData 4, the two-step file upload and download, and `/_fake/*`.

The state they act on is `esi.systems.crm.fake.state`; OData queries and validation are `esi.systems.crm.fake.odata`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from esi.fakes.controls import TELEMETRY_OFF, install_controls
from esi.systems.crm.fake.odata import (
    ODATA_HEADERS,
    ODATA_JSON,
    ODataError,
    entity_set,
    odata_error_response,
    parse_key,
    project,
    query_collection,
    select_columns,
    validate_values,
)
from esi.systems.crm.fake.state import (
    SCHEMAS,
    STATUS_NEW_ID,
    FakeCreatio,
    WebhookTarget,
    is_guid,
    stamp,
)

logger = logging.getLogger(__name__)

#: the Identity Service's token endpoint (the fake serves it at its own root)
TOKEN_PATH = "/connect/token"  # noqa: S105 - a path, not a secret
#: the time the business process's "Call web service" element waits for an answer
WEBHOOK_TIMEOUT_S = 10.0

#: where an expired session is redirected to (`expiry_mode="redirect"`)
LOGIN_PAGE_PATH = "/Login/NuiLogin.aspx"
#: Creatio's REST services (file upload and download)
REST_PREFIX = "/0/rest"

_RESOURCE_RE = re.compile(r"^(?P<set>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<key>[^()]*)\))?$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")

_LOGIN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Creatio</title></head>
<body><form id="loginForm" method="post" action="/ServiceModel/AuthService.svc/Login">
<input name="UserName" type="text"><input name="UserPassword" type="password">
<button type="submit">Log in</button></form></body></html>
"""


def create_app(
    *,
    username: str = "Supervisor",
    password: str = "Supervisor",  # noqa: S107 - the fake Creatio's documented demo login
    odata_prefix: str = "/0/odata",
    expiry_mode: str = "401",
    csrf_failure_status: int = 401,
    session_ttl_s: float | None = None,
    oauth_clients: dict[str, str] | None = None,
    token_lifetime_s: float = 3600.0,
    webhook: WebhookTarget | None = None,
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
        oauth_clients: the client applications of the Identity Service (`client_id` → `client_secret`) that
            `POST /connect/token` issues bearer tokens to; none: OAuth refused.
        token_lifetime_s: the lifetime of an access token (`expires_in`); `POST /_fake/oauth` changes it.
        webhook: where a change made through `/_fake/orders/{number}` or `/_fake/contacts/{id}` is posted, as the
            site's business process would; `POST /_fake/webhook` changes or switches it off.
    """
    fake = FakeCreatio(
        username=username,
        password=password,
        odata_prefix=odata_prefix,
        expiry_mode=expiry_mode,
        csrf_failure_status=csrf_failure_status,
        session_ttl_s=session_ttl_s,
        oauth_clients=oauth_clients,
        token_lifetime_s=token_lifetime_s,
        webhook=webhook,
    )
    app = FastAPI(title="Fake Creatio", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF)
    app.state.fake = fake
    prefix = fake.odata_prefix

    def expired_response(request: Request) -> Response:
        """The answer to a call without a live session, the way `expiry_mode` says."""
        fake.counters["expired_responses"] += 1
        mode = fake.expiry_mode
        if mode == "redirect":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{LOGIN_PAGE_PATH}?ReturnUrl={quote(target, safe='')}", status_code=302)
        if mode == "html":
            return HTMLResponse(_LOGIN_PAGE, status_code=200)
        return JSONResponse(
            {"Message": "Authentication failed."},
            status_code=401,
            headers={"WWW-Authenticate": 'Forms realm="Creatio"'},
        )

    def authenticate(request: Request) -> Response | None:
        """None if the call may go on, else the response refusing it: a bearer token (OAuth; no CSRF token then)
        or the forms-login session's cookies."""
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            if fake.token_valid(authorization[7:].strip()):
                return None
            fake.counters["bearer_rejections"] += 1
            return JSONResponse(
                {"Message": "The access token is invalid or has expired."},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        session = fake.session_for(request.cookies.get(".ASPXAUTH"))
        if session is None:
            return expired_response(request)
        if (
            request.method in ("POST", "PATCH", "PUT", "DELETE", "MERGE")
            and request.headers.get("BPMCSRF") != session.csrf
        ):
            fake.counters["csrf_failures"] += 1
            return JSONResponse(
                {"Message": "The CSRF token is missing or invalid."}, status_code=fake.csrf_failure_status
            )
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
            return JSONResponse(
                {
                    "Code": 1,
                    "Message": "The request body is not a valid login request.",
                    "Exception": None,
                    "PasswordChangeUrl": None,
                    "RedirectUrl": None,
                }
            )
        session = fake.login(body.get("UserName"), body.get("UserPassword"))
        if session is None:
            return JSONResponse(
                {
                    "Code": 1,
                    "Message": "Either username or password is incorrect.",
                    "Exception": None,
                    "PasswordChangeUrl": None,
                    "RedirectUrl": None,
                }
            )
        response = JSONResponse(
            {"Code": 0, "Message": "", "Exception": None, "PasswordChangeUrl": None, "RedirectUrl": None}
        )
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
        if not is_guid(file_id):
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
            if not is_guid(parent) or parent.lower() not in fake.tables["Order"]:
                return fail(f"parentColumnValue {parent!r} is not an existing Order")
            stored = fake.add_file(
                file_id, Name=params.get("fileName", ""), OrderId=parent.lower(), Size=total, TotalSize=total
            )
        elif is_guid(parent) and parent.lower() != stored.row["OrderId"]:
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
            table = entity_set(fake.tables, entity)
            key = parse_key(raw_key) if raw_key is not None else None
            return await _dispatch(fake, request, entity, table, key)
        except ODataError as exc:
            return odata_error_response(exc.status, exc.message, exc.inner)

    # -- test and operations endpoints

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
            row = fake.add_order(
                body["Number"],
                order_id=body.get("Id"),
                amount=body.get("Amount", 0.0),
                date=body.get("Date"),
                status_id=body.get("StatusId", STATUS_NEW_ID),
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(row, status_code=201)

    # -- OAuth 2.0: the Identity Service

    @app.post(TOKEN_PATH)
    async def token(request: Request) -> Response:
        """The client-credentials grant (client authentication in the form body or HTTP Basic)."""
        fake.count("POST token")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:], validate=True).decode().partition(":")
            except ValueError:
                client_id = client_secret = None
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        issued = fake.issue_token(client_id, client_secret)
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        access_token, lifetime = issued
        return JSONResponse(
            {"access_token": access_token, "token_type": "Bearer", "expires_in": int(lifetime) or 1, "scope": ""},
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/_fake/oauth")
    async def configure_oauth(request: Request) -> Response:
        """`{"token_lifetime_s": N}`: the lifetime of the tokens issued from now on."""
        body = await _control_body(request)
        lifetime = body.get("token_lifetime_s") if isinstance(body, dict) else None
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            return JSONResponse({"error": "token_lifetime_s must be a positive number"}, status_code=422)
        fake.token_lifetime_s = float(lifetime)
        return JSONResponse({"token_lifetime_s": fake.token_lifetime_s})

    # -- changes made by a manager, and the business process that reports them

    webhook_tasks: set[asyncio.Task[None]] = set()

    async def post_webhook(event_type: str, body: dict[str, Any], target: WebhookTarget) -> None:
        """What the business process's "Call web service" element does: one POST; a failure is logged and dropped."""
        url = f"{str(target.url).rstrip('/')}/events/crm/{event_type}"
        record: dict[str, Any] = {"type": event_type, "id": body["Id"], "modified_on": body["ModifiedOn"]}
        try:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as http:
                response = await http.post(url, json=body, auth=(target.user, target.password))
            record["status"] = response.status_code
            ok = response.is_success
        except httpx.HTTPError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            ok = False
        fake.counters["webhooks_sent" if ok else "webhooks_failed"] += 1
        if not ok:
            logger.warning("fake Creatio: the business process could not post %s to %s: %s", event_type, url, record)
        fake.webhook_calls.append(record)
        del fake.webhook_calls[:-1000]  # the newest thousand are enough to look at

    def changed(entity: str, row: dict[str, Any]) -> dict[str, Any]:
        """After a manager's change: the object signal starts the business process (when a target is set)."""
        target = fake.webhook
        event_type, body = fake.event_body(entity, row)
        if target.active:
            task = asyncio.get_running_loop().create_task(post_webhook(event_type, body, target))
            webhook_tasks.add(task)
            task.add_done_callback(webhook_tasks.discard)
        return {**row, "event": {"type": event_type, "body": body, "webhook": target.active}}

    @app.post("/_fake/orders/{number}")
    async def change_order(number: str, request: Request) -> Response:
        """Change an order as a manager would: `{"Status": "<OrderStatus Name>", "Amount"?, ...Order columns,
        "ModifiedOn"?}`; `ModifiedOn` is stamped now unless given."""
        row = fake.order_by_number(number)
        if row is None:
            return JSONResponse({"error": f"no order with Number {number!r}"}, status_code=404)
        body = await _control_body(request)
        if not isinstance(body, dict) or not body:
            return JSONResponse({"error": "body must be a non-empty JSON object of Order columns"}, status_code=422)
        values = dict(body)
        status = values.pop("Status", None)
        if status is not None:
            status_id = next((sid for sid, s in fake.tables["OrderStatus"].items() if s["Name"] == status), None)
            if status_id is None:
                return JSONResponse({"error": f"unknown order status {status!r}"}, status_code=422)
            values["StatusId"] = status_id
        try:
            clean = validate_values(fake.tables, "Order", values, creating=False) if values else {}
        except ODataError as exc:
            return JSONResponse({"error": exc.inner}, status_code=422)
        return JSONResponse(changed("Order", fake.change("Order", row, clean)))

    @app.post("/_fake/contacts/{contact_id}")
    async def change_contact(contact_id: str, request: Request) -> Response:
        """Change (or, for a new Id, add) a contact as a manager would: `{"Name"?, "Email"?, "Phone"?, ...,
        "ModifiedOn"?}`."""
        if not is_guid(contact_id):
            return JSONResponse({"error": f"not a GUID: {contact_id!r}"}, status_code=422)
        body = await _control_body(request)
        if not isinstance(body, dict) or not body:
            return JSONResponse({"error": "body must be a non-empty JSON object of Contact columns"}, status_code=422)
        try:
            clean = validate_values(fake.tables, "Contact", body, creating=False)
        except ODataError as exc:
            return JSONResponse({"error": exc.inner}, status_code=422)
        contacts = fake.tables["Contact"]
        key = contact_id.lower()
        row = contacts.get(key)
        if row is None:
            row = contacts[key] = {"Id": key, "Name": "", "Email": "", "Phone": "", "MobilePhone": ""}
        return JSONResponse(changed("Contact", fake.change("Contact", row, clean)))

    @app.post("/_fake/webhook")
    async def configure_webhook(request: Request) -> Response:
        """Set or switch the business process's target: `{"url"?, "user"?, "password"?, "enabled"?}`."""
        body = await _control_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=422)
        current = fake.webhook
        try:
            fake.webhook = WebhookTarget(
                url=_optional_str(body, "url", current.url),
                user=str(_optional_str(body, "user", current.user) or ""),
                password=str(_optional_str(body, "password", current.password) or ""),
                enabled=bool(body.get("enabled", current.enabled)),
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(fake.webhook.public())

    install_controls(app, fake)  # /_fake/state, /_fake/reset, /_fake/faults and the faults on every other path
    return app


async def _control_body(request: Request) -> object:
    """The JSON body of a `/_fake/*` control (None when it is not JSON)."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None


def _optional_str(body: dict[str, Any], key: str, default: str | None) -> str | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


async def _json_body(request: Request) -> object:
    """The body of an OData write; invalid JSON is a 400 in the OData envelope."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise ODataError(400, "The request is invalid.", "The request body is not valid JSON.") from None


async def _dispatch(
    fake: FakeCreatio, request: Request, entity: str, table: dict[str, dict[str, Any]], key: str | None
) -> Response:
    """One OData call on `entity` (`table` its rows), with `key` for `Set(<key>)`."""
    method = request.method
    service_root = f"{str(request.base_url).rstrip('/')}{fake.odata_prefix}"
    if method == "GET" and key is None:
        body = query_collection(fake.tables, entity, request.query_params, service_root)
        return JSONResponse(body, media_type=ODATA_JSON, headers=ODATA_HEADERS)
    if method == "GET":
        row = table.get(key)  # type: ignore[arg-type]
        if row is None:
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        columns = select_columns(request.query_params.get("$select"), entity)
        body = {"@odata.context": f"{service_root}/$metadata#{entity}/$entity", **project(row, columns, entity)}
        return JSONResponse(body, media_type=ODATA_JSON, headers=ODATA_HEADERS)
    if method == "PATCH" and key is not None:
        row = table.get(key)
        if row is None:
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        values = validate_values(fake.tables, entity, await _json_body(request), creating=False)
        values.pop("ModifiedOn", None)  # a system column: Creatio stamps it on every save
        row.update(values)
        if "ModifiedOn" in SCHEMAS[entity]:
            row["ModifiedOn"] = stamp()
        fake.counters["patches"] += 1
        if entity == "UsrPolicy":
            fake.counters["policy_writes"] = fake.counters.get("policy_writes", 0) + 1
        return Response(status_code=204, headers=ODATA_HEADERS)
    if method == "POST" and key is None and entity == "OrderFile":
        values = validate_values(fake.tables, entity, await _json_body(request), creating=True)
        for required in ("Name", "OrderId"):
            if not values.get(required):
                raise ODataError(400, "The request is invalid.", f"The column '{required}' is required.")
        file_id = values.pop("Id", None) or str(uuid.uuid4())
        if file_id in table:
            raise ODataError(400, "The request is invalid.", f"An OrderFile with Id '{file_id}' already exists.")
        row = fake.add_file(file_id, **values).row
        context = f"{service_root}/$metadata#{entity}/$entity"
        location = f"{service_root}/{entity}({file_id})"
        return JSONResponse(
            {"@odata.context": context, **row},
            status_code=201,
            media_type=ODATA_JSON,
            headers={**ODATA_HEADERS, "Location": location},
        )
    if method == "POST" and key is None and entity == "UsrPolicy":
        values = validate_values(fake.tables, entity, await _json_body(request), creating=True)
        row_id = str(values.get("Id") or uuid.uuid4()).lower()
        if row_id in table:
            raise ODataError(400, "The request is invalid.", f"A UsrPolicy with Id '{row_id}' already exists.")
        table[row_id] = {**dict.fromkeys(SCHEMAS[entity]), **values, "Id": row_id}
        fake.counters["policy_writes"] = fake.counters.get("policy_writes", 0) + 1
        return JSONResponse(table[row_id], status_code=201, media_type=ODATA_JSON, headers=ODATA_HEADERS)
    if method == "DELETE" and key is not None and entity == "OrderFile":
        if not fake.delete_file(key):
            raise ODataError(404, f"No {entity} with Id '{key}' was found.")
        return Response(status_code=204, headers=ODATA_HEADERS)
    raise ODataError(405, f"The fake does not support {method} on '{entity}'" + (" with a key." if key else "."))
