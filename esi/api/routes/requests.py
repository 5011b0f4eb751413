"""Sending requests and reading their outcome: the systems' send routes (`POST /send_to_dms`, ...),
`POST /requests/{target}/{message_type}`, `GET /requests/{request_id}` (with its long poll), `GET /requests?key=`
and `GET /requests/{request_id}/timeline`.

The send routes and `GET /requests/{request_id}` are the hot routes: 1C calls them all day, and the fast path
(esi.api.hot) answers their common cases.

Every POST that sends a request is served within its client's quota (`esi.security.quota`): the check comes first in
the handler — after authentication, which both the fast path and FastAPI do before calling it, and before the body
is read or anything stored — so that a refused request (429, `quota_exceeded`) leaves no trace and its retry with
the same `request_id` is accepted as a first attempt.

One job in one module, though over 400 lines: the routes of the request resource — sending one and reading it
share its store, the caller's scopes, the wait for its outcome and the declarations of what each answers.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import time
from typing import Any

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from esi import tracing
from esi.api.deps import ApiDeps
from esi.api.ingress import Accepted, build_request, check_file_bytes, parse_json_object, prefer_wait
from esi.api.responses import (
    ACCEPTED,
    FILE_REFUSALS,
    FORBIDDEN_READ,
    MALFORMED_MULTIPART,
    SENDING,
    SETTLED_WITHIN_WAIT,
    UNKNOWN_MESSAGE_TYPE,
    UNKNOWN_MESSAGE_TYPE_IN_BODY,
    UNKNOWN_REQUEST,
    UNKNOWN_TARGET,
    UNSUPPORTED_MEDIA_TYPE,
    Refusal,
)
from esi.api.routes.table import Param, Route
from esi.bus.ports import NullRecorder, Recorder
from esi.errors import ApiError
from esi.security.quota import QuotaLimiter
from esi.security.scopes import Principal, require_read, require_send
from esi.store import RequestRecord, Store
from esi.store.cursors import cursor_of, parse_cursor
from esi.store.records import OutboxRow
from esi.store.settled import SETTLED
from esi.systems.spec import SendRoute

__all__ = ["MAX_REQUEST_ID", "MAX_WAIT_PARAM", "RequestRoutes"]

log = logging.getLogger(__name__)

#: the bounds of `GET /requests/{request_id}?wait=`
MAX_REQUEST_ID = 128
MAX_WAIT_PARAM = 300


#: the header by which 1C asks for the outcome of its request to be delivered to it (pushed or in its feed)
NOTIFY_HEADER = "X-Esi-Notify"
#: the envelope's context key that carries the wish to the answer
NOTIFY_CONTEXT = "notify"


def _wants_outcome(request: Request) -> bool:
    return request.headers.get(NOTIFY_HEADER, "").strip().lower() == "outcome"


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
                self._value = await self._store.outbox.backlog()
                self._at = time.monotonic()
        return self._value


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a send route: the default request's payload, and the `request_id`."""
    schema = model.model_json_schema()
    schema.setdefault("properties", {})["request_id"] = {
        "type": "string",
        "description": "your id of this request; generated when missing",
        "maxLength": 128,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


#: the generic route's body: any request of the catalog as JSON, or a file's upload (the OpenAPI document only: the
#: handler reads it, `send_any`)
_ANY_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "the request's fields, as the target's request of that type declares them",
                    "properties": {
                        "request_id": {
                            "type": "string",
                            "description": "your id of this request; generated when missing",
                            "maxLength": 128,
                        }
                    },
                    "additionalProperties": True,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "a request that carries a file: its fields, and the file in a part named `file`",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                    "additionalProperties": {"type": "string"},
                }
            },
        },
    }
}
#: what a multipart body can be refused for besides the JSON one's
_MULTIPART = (MALFORMED_MULTIPART, UNSUPPORTED_MEDIA_TYPE)


class RequestRoutes:
    """The routes of requests, over the store and the outbox in `deps`."""

    def __init__(self, deps: ApiDeps) -> None:
        self._deps = deps
        self._store = deps.store
        self._events: Recorder = deps.events or NullRecorder()
        #: without a registry every caller may do everything, and requests are recorded without a client
        self._auth_on = deps.clients is not None
        self._max_body = deps.max_pdf_bytes * 4 // 3 + 1024 * 1024
        self._backlog = _BacklogGauge(deps.store, ttl=0.5)
        self._quotas = deps.quotas if deps.quotas is not None else QuotaLimiter()
        self._registry = deps.registry
        self._catalog = deps.registry.catalog
        self._source = deps.registry.origin.code
        self._send_routes = deps.registry.send_routes if deps.send_routes is None else deps.send_routes
        uploads = sorted(s.message_type for s in self._catalog.specs if s.upload is not None)
        self._send_any_summary = "Send any request of the catalog (JSON" + (
            f", or multipart/form-data for {', '.join(uploads)})" if uploads else ")"
        )

    def routes(self) -> list[Route]:
        """The send routes first, then the generic one, reading, finding and the timeline (the OpenAPI order)."""
        sends = [
            Route(
                "POST",
                r.path,
                r.name,
                functools.partial(self.send, r),
                r.summary,
                hot=True,
                description=r.description
                or (
                    f"`message_type` in the body picks another {r.target.upper()} "
                    f"request than {r.default_message_type}."
                ),
                status_code=202,
                responses={**ACCEPTED, **SETTLED_WITHIN_WAIT},
                refusals=(*SENDING, UNKNOWN_MESSAGE_TYPE_IN_BODY, *self._file_refusals(r.target)),
                openapi_extra=_json_schema(r.body_model),
            )
            for r in self._send_routes
        ]
        return sends + [
            Route(
                "POST",
                "/requests/{target}/{message_type}",
                "send_request",
                self.send_any,
                self._send_any_summary,
                params=(Param("target", str, Path(max_length=16)), Param("message_type", str, Path(max_length=64))),
                status_code=202,
                responses={**ACCEPTED, **SETTLED_WITHIN_WAIT},
                refusals=(*SENDING, UNKNOWN_TARGET, UNKNOWN_MESSAGE_TYPE, *self._file_refusals(), *_MULTIPART),
                openapi_extra=_ANY_REQUEST_BODY,
            ),
            Route(
                "GET",
                "/requests/{request_id}",
                "get_request",
                self.read,
                "The state of a request",
                hot=True,
                params=(
                    Param("request_id", str, Path(max_length=MAX_REQUEST_ID)),
                    Param(
                        "wait",
                        float,
                        Query(
                            0,
                            ge=0,
                            le=MAX_WAIT_PARAM,
                            description=(
                                "seconds to hold the answer until the request is completed, failed or dead-lettered "
                                "(long poll; capped by ESI_MAX_WAIT); 0 answers at once"
                            ),
                        ),
                    ),
                ),
                response_model=RequestRecord,
                refusals=(FORBIDDEN_READ, UNKNOWN_REQUEST),
            ),
            Route(
                "GET",
                "/requests",
                "find_requests",
                self.find,
                "Find requests by a business key (order, user, policy)",
                params=(
                    Param(
                        "key",
                        str,
                        Query(
                            min_length=1,
                            max_length=255,
                            description=("an order id or number, user id, DMS user id, policy number"),
                        ),
                    ),
                    Param("limit", int, Query(100, ge=1, le=1000)),
                    Param(
                        "after",
                        str | None,
                        Query(
                            None,
                            max_length=512,
                            description="the next page: the `next` of the previous answer (newest first)",
                        ),
                    ),
                ),
                refusals=(FORBIDDEN_READ,),
            ),
            Route(
                "GET",
                "/requests/{request_id}/timeline",
                "request_timeline",
                self.timeline,
                "Every hop of a request, with times",
                params=(Param("request_id", str, Path(max_length=128)),),
                refusals=(FORBIDDEN_READ, UNKNOWN_REQUEST),
            ),
        ]

    def _file_refusals(self, target: str | None = None) -> tuple[Refusal, ...]:
        """What a request that carries a file can be refused for, if `target` (any, without one) takes one."""
        catalog = self._catalog
        targets = catalog.targets() if target is None else [target]
        carries = any(catalog.request_spec(t, m).upload for t in targets for m in catalog.requests_for(t))
        return FILE_REFUSALS if carries else ()

    # --- sending ----------------------------------------------------------------------------------------------------

    async def send(self, route: SendRoute, request: Request, principal: Principal) -> Response:
        """A send route: `route.default_message_type` unless the body's `message_type` names another request."""
        with self._quotas.admit(principal.client_id, principal.quota):
            return await self._send(route, request, principal)

    async def _send(self, route: SendRoute, request: Request, principal: Principal) -> Response:
        body = await self._read_json(request)
        message_type = body.pop("message_type", None) or route.default_message_type
        return await self._accept(
            build_request(
                route.target,
                str(message_type),
                body,
                catalog=self._catalog,
                source=self._source,
                max_pdf_bytes=self._deps.max_pdf_bytes,
                status_for_unknown_type=422,
            ),
            principal,
            prefer_wait(request.headers.get("prefer")),
            notify=_wants_outcome(request),
        )

    async def send_any(self, request: Request, principal: Principal, target: str, message_type: str) -> Response:
        """Any request a registered system answers, e.g. `dms` (create_user, get_policy_info), `crm`
        (update_order_status, send_pdf_file).

        A request that carries a file (`send_pdf_file`) also takes a multipart upload: its fields, and the file in a
        part named `file`.
        """
        with self._quotas.admit(principal.client_id, principal.quota):
            return await self._send_any(request, principal, target, message_type)

    async def _send_any(self, request: Request, principal: Principal, target: str, message_type: str) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            body = await self._read_multipart(request, message_type)
        else:
            body = await self._read_json(request)
        return await self._accept(
            build_request(
                target,
                message_type,
                body,
                catalog=self._catalog,
                source=self._source,
                max_pdf_bytes=self._deps.max_pdf_bytes,
            ),
            principal,
            prefer_wait(request.headers.get("prefer")),
            notify=_wants_outcome(request),
        )

    async def _read_json(self, request: Request) -> dict[str, Any]:
        max_body = self._max_body
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

    async def _read_multipart(self, request: Request, message_type: str) -> dict[str, Any]:
        max_bytes = self._deps.max_pdf_bytes
        spec = next((s for s in self._catalog.specs if s.message_type == message_type.strip().lower()), None)
        upload_spec = spec.upload if spec is not None else None
        if upload_spec is None:
            accepted = sorted(s.message_type for s in self._catalog.specs if s.upload is not None)
            raise ApiError(
                415,
                "unsupported_media_type",
                f"multipart/form-data is accepted for {', '.join(accepted) or 'no request'} only",
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + 1024 * 1024:
            raise ApiError(413, "file_too_large", f"the upload exceeds the limit of {max_bytes} bytes")
        form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
        upload = form.get("file")
        kind = upload_spec.media_type.rpartition("/")[2].upper()
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "validation_error", f"file: a {kind} file part named 'file' is required")
        content = await upload.read(max_bytes + 1)
        check_file_bytes(content, upload_spec, max_bytes=max_bytes)
        body: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        body[upload_spec.name_field] = body.get(upload_spec.name_field) or upload.filename or upload_spec.default_name
        body[upload_spec.content_field] = base64.b64encode(content).decode("ascii")
        return body

    async def _accept(
        self, accepted: Accepted, principal: Principal, wait: float = 0, *, notify: bool = False
    ) -> Response:
        """Store the request and its outgoing message; 202. With `wait` (from `Prefer: wait=N`), the answer waits
        up to that long for the request's outcome, and is then its state, 200, as `GET /requests/{id}` gives it.
        With `notify` (`X-Esi-Notify: outcome`), the outcome is also delivered to 1C as its events are (the
        envelope's context carries the wish to the answer, which 1C's adapter turns into `request_outcome`)."""
        deps, auth_on = self._deps, self._auth_on
        require_send(principal, accepted.target, accepted.message_type)
        if notify:
            context = {**(accepted.envelope.context or {}), NOTIFY_CONTEXT: "outcome"}
            accepted = dataclasses.replace(accepted, envelope=accepted.envelope.model_copy(update={"context": context}))
        body = accepted.envelope.encode()
        if await self._backlog.value() >= deps.max_backlog:
            raise ApiError(
                503,
                "backlog_full",
                f"{deps.max_backlog} or more requests are waiting for the broker; try again later",
                headers={"Retry-After": "5"},
            )
        # the request's trace context, stored with its outbox row: the relay publishes as a child of this span
        trace_context = tracing.outbox_context(accepted.request_id) if tracing.enabled else None
        record, created, first_hash = await self._store.requests.accept(
            request_id=accepted.request_id,
            source=self._source,
            target=accepted.target,
            message_type=accepted.message_type,
            payload_hash=accepted.payload_hash,
            message_id=accepted.envelope.message_id,
            routing_key=accepted.routing_key,
            body=body,
            keys=self._registry.business_keys(accepted.envelope.payload),
            client_id=principal.client_id if auth_on else None,
            trace_context=trace_context,
        )
        if created:
            deps.on_accepted(
                OutboxRow(
                    message_id=accepted.envelope.message_id,
                    request_id=accepted.request_id,
                    routing_key=accepted.routing_key,
                    body=body,
                    trace_context=trace_context,
                )
            )
            self._events.record(
                accepted.request_id,
                "accepted",
                service="api",
                message_id=accepted.envelope.message_id,
                message_type=accepted.message_type,
                routing_key=accepted.routing_key,
            )
            log.debug(
                "accepted %s %s",
                accepted.routing_key,
                accepted.request_id,
                extra={
                    "request_id": accepted.request_id,
                    "message_id": accepted.envelope.message_id,
                    "routing_key": accepted.routing_key,
                },
            )
        elif first_hash != accepted.payload_hash or (auth_on and record.client_id != principal.client_id):
            # another client's request is not described: its existence is all that leaks, as it must for ids
            own = not auth_on or record.client_id == principal.client_id
            what = f" ({record.target}/{record.message_type})" if own else ""
            raise ApiError(
                409,
                "request_id_conflict",
                f"request_id {accepted.request_id!r} was already used for a different request{what}; "
                "use a new request_id",
            )
        headers = None if created else {"X-Esi-Duplicate": "true"}
        wait = min(wait, deps.max_wait)
        # the outcome is only for a client that may read it (the request is its own: a conflict was refused above);
        # for another, the preference is ignored, as RFC 7240 lets a server do
        if wait > 0 and (not auth_on or principal.can_read):
            # `record` was read or written without an await since: the watch cannot miss the settlement
            settled = await self._store.requests.wait_settled(
                record.request_id, wait, recheck=deps.wait_recheck, known=record
            )
            if settled is not None and settled.status in SETTLED:
                return Response(settled.model_dump_json(), media_type="application/json", headers=headers)
        return JSONResponse({"status": "accepted", "request_id": record.request_id}, status_code=202, headers=headers)

    # --- reading ----------------------------------------------------------------------------------------------------

    async def read(self, request: Request, principal: Principal, request_id: str, wait: float) -> Response:
        """accepted → in_progress → completed | failed | dead_lettered, with the answer or the reason.

        With `wait`, the answer comes as soon as the request settles, or with its current state when the wait ends:
        one request instead of a polling loop.
        """
        wait = min(wait, self._deps.max_wait)
        if wait <= 0:
            record = self._check_read(principal, await self._store.requests.get(request_id), request_id)
        else:
            # the first read is checked (404, 403) before any waiting: nobody waits on what they may not see
            record = self._check_read(
                principal,
                await self._store.requests.wait_settled(
                    request_id,
                    wait,
                    recheck=self._deps.wait_recheck,
                    check=lambda first: self._check_read(principal, first, request_id),
                ),
                request_id,
            )
        # serialised by the model itself: the record is already valid, FastAPI's response validation would redo it
        return Response(record.model_dump_json(), media_type="application/json")

    async def find(
        self, request: Request, principal: Principal, key: str, limit: int, after: str | None = None
    ) -> dict[str, Any]:
        """The caller's requests that carry `key` (an order id or number, a user id, a DMS user id, a policy number),
        newest first, `limit` at a time: `next` (null on the last page) is the `after` of the next page."""
        if self._auth_on and not principal.can_read:
            raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not read the outcome of requests")
        if after is not None:
            try:
                parse_cursor(after)
            except ValueError as exc:
                raise ApiError(422, "validation_error", f"after: {exc}") from None
        records = await self._store.requests.find_by_key(
            key, limit=limit + 1, client_id=principal.client_id if self._auth_on else None, after=after
        )
        page = records[:limit]
        return {
            "key": key,
            "count": len(page),
            "requests": [r.model_dump() for r in page],
            "next": cursor_of(page[-1]) if len(records) > limit else None,
        }

    async def timeline(self, request: Request, principal: Principal, request_id: str) -> dict[str, Any]:
        """Accepted, published, consumed by which adapter, external calls, retries, answers, the end."""
        record = self._check_read(principal, await self._store.requests.get(request_id), request_id)
        return {
            "request_id": request_id,
            "status": record.status,
            "events": await self._store.requests.timeline(request_id),
        }

    def _check_read(self, principal: Principal, record: RequestRecord | None, request_id: str) -> RequestRecord:
        if record is None:
            raise ApiError(404, "unknown_request", f"no request with request_id {request_id!r}")
        if self._auth_on:
            require_read(principal, request_id, record.client_id)
        return record
