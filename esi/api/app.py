"""The HTTP API for 1C (FastAPI). OpenAPI at /docs."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from esi.api import TELEMETRY_OFF
from esi.api.errors import ApiError, install_error_handlers
from esi.api.hot import HotPath, HotRoutes
from esi.api.ingress import Accepted, build_request, check_pdf_bytes, parse_json_object, prefer_wait
from esi.api.ops import ReadyCheck, install_http_metrics, ops_router
from esi.bus.dead_letters import DeadLetters, Filters, parse_duration
from esi.messages.crm import UpdateOrderStatus
from esi.messages.dms import CreateUser
from esi.security.auth import (
    ClientRegistry,
    Principal,
    SendScope,
    authenticate_request,
    principal_dependency,
    require_operator,
    require_read,
    require_send,
)
from esi.store import RequestRecord, Store
from esi.store.records import OutboxRow
from esi.store.events import EventRecorder, NullRecorder
from esi.store.settled import SETTLED
from esi.systems.onec.handlers import business_keys

log = logging.getLogger(__name__)



@dataclass
class ApiDeps:
    store: Store
    #: called with each request's message once committed (the outbox relay publishes it at once)
    on_accepted: Callable[[OutboxRow], None]
    max_pdf_bytes: int
    readiness: ReadyCheck | None = None
    dead_letters: DeadLetters | None = None
    #: above this many unpublished messages (the broker is away), new requests get 503 with Retry-After
    max_backlog: int = 100_000
    events: EventRecorder | None = None
    #: the API's clients; None turns authentication off (refused with ESI_ENV=production)
    clients: ClientRegistry | None = None
    #: the longest a `GET /requests/{id}?wait=` holds on, and how often settlements made elsewhere are looked up
    max_wait: float = 30.0
    wait_recheck: float = 1.0
    #: answer the hot routes without FastAPI's routing and dependencies (esi.api.hot); off only to compare the two
    hot_path: bool = True


class ReplayRequest(BaseModel):
    """Which dead letters to replay: named ids, or `all` that match the filters."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=10_000)
    all: bool = False
    queue: str | None = None
    reason: str | None = None
    since: str | None = Field(default=None, description="90s, 15m, 2h, 7d")
    rate: float | None = Field(default=None, gt=0, le=10_000)
    dry_run: bool = False


class _BacklogGauge:
    """The outbox backlog, counted at most every `ttl` seconds (a count per request would cost more than it tells)."""

    def __init__(self, store: Store, *, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._value = 0
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def value(self) -> int:
        if time.monotonic() - self._at < self._ttl:
            return self._value
        async with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                self._value = await self._store.outbox_backlog()
                self._at = time.monotonic()
        return self._value


def _json_schema(model: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.setdefault("properties", {})["request_id"] = {
        "type": "string", "description": "your id of this request; generated when missing", "maxLength": 128}
    if extra:
        schema["properties"].update(extra)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


#: what the POSTs that send a request answer besides 202: the outcome, when `Prefer: wait=N` asked to wait for it
SETTLED_WITHIN_WAIT = {200: {"model": RequestRecord, "description": (
    "With the header `Prefer: wait=N` (RFC 7240; N seconds, capped by ESI_MAX_WAIT): the request was completed, "
    "failed or dead-lettered within the wait, and this is its state, as `GET /requests/{request_id}` gives it. "
    "When the wait ends first, the answer is the 202.")}}

#: the bounds of `GET /requests/{request_id}?wait=`
MAX_REQUEST_ID = 128
MAX_WAIT_PARAM = 300


#: the caller when authentication is off (demo only): everything is allowed
OPEN = Principal("anonymous", send_scopes=(SendScope("*", "*"),), can_read=True, is_operator=True)


async def _open_principal() -> Principal:
    return OPEN


def create_app(deps: ApiDeps) -> FastAPI:
    app = FastAPI(
        title="esi — Enterprise System Integration",
        description="Send requests from 1C to the DMS and the CRM, and read their outcome.",
        version="0.1.0",
        telemetry=TELEMETRY_OFF,
    )
    install_error_handlers(app)
    install_http_metrics(app)
    app.include_router(ops_router(deps.readiness))
    events = deps.events or NullRecorder()
    auth_on = deps.clients is not None
    current = principal_dependency(deps.clients) if deps.clients is not None else _open_principal
    registry = deps.clients

    async def authenticate(request: Request) -> Principal:
        return OPEN if registry is None else await authenticate_request(registry, request)

    def check_read(principal: Principal, record: RequestRecord | None, request_id: str) -> RequestRecord:
        if record is None:
            raise ApiError(404, "unknown_request", f"no request with request_id {request_id!r}")
        if auth_on:
            require_read(principal, request_id, record.client_id)
        return record
    max_body = deps.max_pdf_bytes * 4 // 3 + 1024 * 1024
    backlog = _BacklogGauge(deps.store, ttl=0.5)

    async def read_json(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise ApiError(413, "body_too_large", f"the request body exceeds {max_body} bytes")
        # read at most max_body bytes even when no Content-Length was sent (chunked bodies)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise ApiError(413, "body_too_large", f"the request body exceeds {max_body} bytes")
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks))

    async def accept(accepted: Accepted, principal: Principal, wait: float = 0) -> Response:
        """Store the request and its outgoing message; 202. With `wait` (from `Prefer: wait=N`), the answer waits
        up to that long for the request's outcome, and is then its state, 200, as `GET /requests/{id}` gives it."""
        require_send(principal, accepted.target, accepted.message_type)
        body = accepted.envelope.encode()
        if await backlog.value() >= deps.max_backlog:
            raise ApiError(503, "backlog_full",
                           f"{deps.max_backlog} or more requests are waiting for the broker; try again later",
                           headers={"Retry-After": "5"})
        record, created, first_hash = await deps.store.accept(
            request_id=accepted.request_id, source="1c", target=accepted.target,
            message_type=accepted.message_type, payload_hash=accepted.payload_hash,
            message_id=accepted.envelope.message_id, routing_key=accepted.routing_key,
            body=body, keys=business_keys(accepted.envelope.payload),
            client_id=principal.client_id if auth_on else None,
        )
        if created:
            deps.on_accepted(OutboxRow(message_id=accepted.envelope.message_id, request_id=accepted.request_id,
                                       routing_key=accepted.routing_key, body=body))
            events.record(accepted.request_id, "accepted", service="api", message_id=accepted.envelope.message_id,
                          message_type=accepted.message_type, routing_key=accepted.routing_key)
            log.info("accepted %s %s", accepted.routing_key, accepted.request_id,
                     extra={"request_id": accepted.request_id, "message_id": accepted.envelope.message_id,
                            "routing_key": accepted.routing_key})
        elif first_hash != accepted.payload_hash or (auth_on and record.client_id != principal.client_id):
            # another client's request is not described: its existence is all that leaks, as it must for ids
            own = not auth_on or record.client_id == principal.client_id
            what = f" ({record.target}/{record.message_type})" if own else ""
            raise ApiError(409, "request_id_conflict",
                           f"request_id {accepted.request_id!r} was already used for a different request{what}; "
                           "use a new request_id")
        headers = None if created else {"X-Esi-Duplicate": "true"}
        wait = min(wait, deps.max_wait)
        # the outcome is only for a client that may read it (the request is its own: a conflict was refused above);
        # for another, the preference is ignored, as RFC 7240 lets a server do
        if wait > 0 and (not auth_on or principal.can_read):
            # `record` was read or written without an await since: the watch cannot miss the settlement
            settled = await deps.store.wait_settled(record.request_id, wait, recheck=deps.wait_recheck, known=record)
            if settled is not None and settled.status in SETTLED:
                return Response(settled.model_dump_json(), media_type="application/json", headers=headers)
        return JSONResponse({"status": "accepted", "request_id": record.request_id}, status_code=202,
                            headers=headers)

    async def send_to(target: str, default_type: str, request: Request, principal: Principal) -> Response:
        """The original system's endpoints; `message_type` in the body picks another request of the target."""
        body = await read_json(request)
        message_type = body.pop("message_type", None) or default_type
        return await accept(build_request(target, str(message_type), body, max_pdf_bytes=deps.max_pdf_bytes,
                                          status_for_unknown_type=422), principal,
                            prefer_wait(request.headers.get("prefer")))

    @app.post("/send_to_dms", status_code=202, responses=SETTLED_WITHIN_WAIT,
              openapi_extra=_json_schema(CreateUser),
              summary="Send a request to the DMS (default message type: create_user)")
    async def send_to_dms(request: Request, principal: Principal = Depends(current)) -> Response:
        """The original system's endpoint; `message_type` in the body picks another DMS request."""
        return await send_to("dms", "create_user", request, principal)

    @app.post("/send_to_crm", status_code=202, responses=SETTLED_WITHIN_WAIT,
              openapi_extra=_json_schema(UpdateOrderStatus),
              summary="Send a request to the CRM (default message type: update_order_status)")
    async def send_to_crm(request: Request, principal: Principal = Depends(current)) -> Response:
        """The original system's endpoint; `message_type` in the body picks another CRM request."""
        return await send_to("crm", "update_order_status", request, principal)

    @app.post("/requests/{target}/{message_type}", status_code=202, responses=SETTLED_WITHIN_WAIT,
              summary="Send any request of the catalog (JSON, or multipart/form-data for send_pdf_file)")
    async def send_request(request: Request, principal: Principal = Depends(current), target: str = Path(max_length=16),
                           message_type: str = Path(max_length=64)) -> Response:
        """Targets: `dms` (create_user, get_policy_info) and `crm` (update_order_status, send_pdf_file).

        `send_pdf_file` also takes a multipart upload with the fields `order_id`, `request_id` and `file`.
        """
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            body = await read_multipart(request, message_type)
        else:
            body = await read_json(request)
        return await accept(build_request(target, message_type, body, max_pdf_bytes=deps.max_pdf_bytes), principal,
                            prefer_wait(request.headers.get("prefer")))

    async def read_multipart(request: Request, message_type: str) -> dict[str, Any]:
        if message_type != "send_pdf_file":
            raise ApiError(415, "unsupported_media_type", "multipart/form-data is accepted for send_pdf_file only")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > deps.max_pdf_bytes + 1024 * 1024:
            raise ApiError(413, "file_too_large", f"the upload exceeds the limit of {deps.max_pdf_bytes} bytes")
        form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "validation_error", "file: a PDF file part named 'file' is required")
        content = await upload.read(deps.max_pdf_bytes + 1)
        check_pdf_bytes(content, max_pdf_bytes=deps.max_pdf_bytes)
        body: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        body["file_name"] = body.get("file_name") or upload.filename or "document.pdf"
        body["file_content"] = base64.b64encode(content).decode("ascii")
        return body

    @app.get("/requests/{request_id}", response_model=RequestRecord, summary="The state of a request")
    async def get_request(principal: Principal = Depends(current), request_id: str = Path(max_length=MAX_REQUEST_ID),
                          wait: float = Query(0, ge=0, le=MAX_WAIT_PARAM, description=(
                              "seconds to hold the answer until the request is completed, failed or dead-lettered "
                              "(long poll; capped by ESI_MAX_WAIT); 0 answers at once"))) -> Response:
        """accepted → in_progress → completed | failed | dead_lettered, with the answer or the reason.

        With `wait`, the answer comes as soon as the request settles, or with its current state when the wait ends:
        one request instead of a polling loop.
        """
        return await read_request(principal, request_id, wait)

    async def read_request(principal: Principal, request_id: str, wait: float) -> Response:
        wait = min(wait, deps.max_wait)
        if wait <= 0:
            record = check_read(principal, await deps.store.get(request_id), request_id)
        else:
            # the first read is checked (404, 403) before any waiting: nobody waits on what they may not see
            record = check_read(principal, await deps.store.wait_settled(
                request_id, wait, recheck=deps.wait_recheck,
                check=lambda first: check_read(principal, first, request_id)), request_id)
        # serialised by the model itself: the record is already valid, FastAPI's response validation would redo it
        return Response(record.model_dump_json(), media_type="application/json")

    @app.get("/requests", summary="Find requests by a business key (order, user, policy)")
    async def find_requests(principal: Principal = Depends(current), key: str = Query(min_length=1, max_length=255,
                                             description="an order id or number, user id, DMS user id, policy number"),
                            limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        if auth_on and not principal.can_read:
            raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not read the outcome of requests")
        records = await deps.store.find_by_key(key, limit=limit, client_id=principal.client_id if auth_on else None)
        return {"key": key, "count": len(records), "requests": [r.model_dump() for r in records]}

    @app.get("/requests/{request_id}/timeline", summary="Every hop of a request, with times")
    async def request_timeline(principal: Principal = Depends(current), request_id: str = Path(max_length=128)) -> dict[str, Any]:
        """Accepted, published, consumed by which adapter, external calls, retries, answers, the end."""
        record = check_read(principal, await deps.store.get(request_id), request_id)
        return {"request_id": request_id, "status": record.status, "events": await deps.store.timeline(request_id)}

    def dead_letters(principal: Principal) -> DeadLetters:
        require_operator(principal)
        if deps.dead_letters is None:
            raise ApiError(503, "unavailable", "dead-letter access is not configured on this service")
        return deps.dead_letters

    def filters(queue: str | None, reason: str | None, since: str | None, ids: list[str] | None = None) -> Filters:
        try:
            return Filters(queue=queue, reason=reason, since=parse_duration(since) if since else None,
                           ids=tuple(ids or ()))
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None

    @app.get("/dlq", summary="Dead letters (they stay where they are)")
    async def list_dead_letters(principal: Principal = Depends(current), queue: str | None = Query(None, max_length=64),
                                reason: str | None = Query(None, max_length=200),
                                since: str | None = Query(None, max_length=16),
                                limit: int | None = Query(None, ge=1, le=10_000)) -> dict[str, Any]:
        """Filter by queue (`dms` or `dms_dead_letter_queue`), reason text, and age (`since=15m`)."""
        try:
            letters = await dead_letters(principal).list(filters(queue, reason, since), limit=limit)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        return {"count": len(letters), "messages": [d.summary() for d in letters]}

    @app.get("/dlq/{ident}", summary="One dead letter with its headers and body")
    async def show_dead_letter(principal: Principal = Depends(current), ident: str = Path(max_length=128)) -> dict[str, Any]:
        letter = await dead_letters(principal).show(ident)
        if letter is None:
            raise ApiError(404, "unknown_dead_letter", f"no dead letter with id {ident!r}")
        return letter.detail()

    @app.post("/dlq/replay", summary="Replay dead letters to their original routing key")
    async def replay_dead_letters(body: ReplayRequest, principal: Principal = Depends(current)) -> dict[str, Any]:
        """Each message leaves its DLQ only once its republish is confirmed."""
        if not body.ids and not body.all:
            raise ApiError(422, "validation_error", "name the ids to replay, or set all=true (with filters)")
        try:
            letters = await dead_letters(principal).replay(filters(body.queue, body.reason, body.since, body.ids),
                                                  rate=body.rate, dry_run=body.dry_run)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        return {"replayed": 0 if body.dry_run else len(letters), "dry_run": body.dry_run,
                "messages": [d.summary() for d in letters]}

    async def hot_send_to_dms(request: Request) -> Response:
        return await send_to("dms", "create_user", request, await authenticate(request))

    async def hot_send_to_crm(request: Request) -> Response:
        return await send_to("crm", "update_order_status", request, await authenticate(request))

    async def hot_get_request(request: Request, request_id: str, wait: float) -> Response:
        return await read_request(await authenticate(request), request_id, wait)

    # outermost of our middlewares: what it answers skips FastAPI's routing and dependencies (esi.api.hot)
    if deps.hot_path:
        app.add_middleware(HotPath, routes=HotRoutes(
            posts={"/send_to_dms": hot_send_to_dms, "/send_to_crm": hot_send_to_crm}, get_request=hot_get_request,
            max_request_id=MAX_REQUEST_ID, max_wait=MAX_WAIT_PARAM))
    return app
