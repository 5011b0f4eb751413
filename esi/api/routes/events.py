"""Events over HTTP: the webhooks that hand events in (`POST /events/{source}/{type}`), the operators' view of the
events taken and their deliveries (`GET /events`, `GET /events/{event_id}`), and the pull feed a subscriber reads
by cursor (`GET /feed/{subscriber}`, `POST /feed/{subscriber}/ack`).

A webhook authenticates as its source declares (`System.event_auth`): an API client holding the scope
`events:<source>` (HTTP Basic, what a Creatio business process sends), or a signature of the body with the source's
shared secret and a timestamp checked against replay (`esi.events.signatures`). Nothing is published for a call
refused for any reason; `202` only once the event is in the store with its outgoing message (the outbox).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from esi.api.ingress import parse_json_object
from esi.api.responses import (
    AUTHENTICATION,
    BODY_TOO_LARGE,
    FORBIDDEN_OPERATOR,
    INVALID_JSON,
    Refusal,
)
from esi.api.routes.table import Param, Route
from esi.errors import ApiError, InvalidMessage
from esi.events.sink import EventSink
from esi.messages.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, BadSignature, verify
from esi.security.scopes import Principal, require_events, require_feed, require_operator
from esi.store import Store
from esi.systems.registry import Registry
from esi.systems.spec import SystemSettings

__all__ = ["EventRoutes", "FeedAck"]

#: seconds a signed webhook's timestamp may be off when the source's settings say nothing
DEFAULT_TOLERANCE = 300.0
#: the largest webhook body (an event is a record's few fields)
MAX_EVENT_BODY = 256 * 1024
_NAME = r"^[a-z0-9][a-z0-9_]{0,63}$"

UNKNOWN_EVENT = Refusal(
    404, "unknown_event", "the source emits no event of that type", "crm emits no event 'order_deleted'; known: ..."
)
BAD_SIGNATURE = Refusal(
    401,
    "bad_signature",
    "a signed source's call without a valid signature, or with a timestamp outside the tolerance (a replay)",
    "the timestamp is 3600 s from esi's clock (tolerance 300 s)",
)
FORBIDDEN_EVENTS = Refusal(403, "forbidden", "the client lacks the scope events:<source>", "client 'x' lacks ...")
FORBIDDEN_FEED = Refusal(403, "forbidden", "the client lacks the scope feed:<subscriber>", "client 'x' lacks ...")
INVALID_EVENT = Refusal(
    422,
    "invalid_payload",
    "the event's fields do not match its schema (each problem named)",
    "invalid crm order_changed event: ModifiedOn: Field required",
)
EVENTS_UNAVAILABLE = Refusal(503, "events_unavailable", "this process takes no events", "this process takes no events")
UNKNOWN_FEED = Refusal(404, "unknown_feed", "no system of that code subscribes to events", "no feed 'erp'")


class FeedAck(BaseModel):
    """Every feed entry up to `cursor` is handled."""

    model_config = ConfigDict(extra="forbid")

    cursor: int = Field(ge=0, description="the cursor of the last entry handled")


class EventRoutes:
    def __init__(
        self,
        registry: Registry,
        store: Store | None,
        sink: EventSink | None,
        system_settings: dict[str, SystemSettings | None] | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        self._registry = registry
        self._store = store
        self._sink = sink.via("webhook") if sink is not None else None
        self._settings = system_settings or {}
        self._clock = clock

    def routes(self) -> list[Route]:
        return [
            Route(
                "POST",
                "/events/{source}/{event_type}",
                "take_event",
                self.take,
                "Hand in an event of a source (its webhook)",
                description=(
                    "The body is the event's fields (see the AsyncAPI document). Authenticated as the source "
                    "declares: HTTP Basic of a client holding the scope `events:<source>` (Creatio), or the headers "
                    f"`{TIMESTAMP_HEADER}` and `{SIGNATURE_HEADER}` (the DMS). Answers 202 once the event is stored "
                    "with its outgoing message; 200 for a change of a record already taken (nothing published)."
                ),
                params=(
                    Param("source", str, Path(pattern=_NAME)),
                    Param("event_type", str, Path(pattern=_NAME)),
                ),
                authenticated=False,
                status_code=202,
                responses={200: {"description": "a repeat of a change already taken: nothing published"}},
                refusals=(
                    *AUTHENTICATION,
                    BAD_SIGNATURE,
                    FORBIDDEN_EVENTS,
                    UNKNOWN_EVENT,
                    INVALID_JSON,
                    BODY_TOO_LARGE,
                    INVALID_EVENT,
                    EVENTS_UNAVAILABLE,
                ),
                openapi_extra={
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
                },
            ),
            Route(
                "GET",
                "/events",
                "list_events",
                self.list_events,
                "The latest events taken, newest first (operators)",
                params=(
                    Param("source", str | None, Query(None, max_length=32)),
                    Param("key", str | None, Query(None, max_length=255)),
                    Param("limit", int, Query(100, ge=1, le=1000)),
                ),
                refusals=(FORBIDDEN_OPERATOR, EVENTS_UNAVAILABLE),
            ),
            Route(
                "GET",
                "/events/{event_id}",
                "show_event",
                self.show_event,
                "One event and its timeline: its publication, each subscriber's delivery (operators)",
                params=(Param("event_id", str, Path(max_length=128)),),
                refusals=(FORBIDDEN_OPERATOR, UNKNOWN_EVENT, EVENTS_UNAVAILABLE),
            ),
            Route(
                "GET",
                "/feed/{subscriber}",
                "read_feed",
                self.read_feed,
                "A subscriber's pull feed: the entries after a cursor, oldest first",
                params=(
                    Param("subscriber", str, Path(pattern=_NAME)),
                    Param("after", int | None, Query(None, ge=0)),
                    Param("limit", int, Query(100, ge=1, le=1000)),
                ),
                refusals=(FORBIDDEN_FEED, UNKNOWN_FEED, EVENTS_UNAVAILABLE),
            ),
            Route(
                "POST",
                "/feed/{subscriber}/ack",
                "ack_feed",
                self.ack_feed,
                "Acknowledge a pull feed up to a cursor (its entries are kept until then)",
                params=(Param("subscriber", str, Path(pattern=_NAME)), Param("body", FeedAck)),
                refusals=(FORBIDDEN_FEED, UNKNOWN_FEED, EVENTS_UNAVAILABLE),
            ),
        ]

    # --- the webhook ------------------------------------------------------------------------------------------

    async def take(self, request: Request, source: str, event_type: str) -> JSONResponse:
        """One event of `source` (see the route's description)."""
        try:
            self._registry.event(source, event_type)
        except KeyError as exc:
            raise ApiError(404, "unknown_event", str(exc.args[0])) from None
        system = self._registry.system(source)
        body = await _read(request)
        if system.event_auth == "signed":
            settings = self._settings.get(source)
            try:
                verify(
                    SystemSettings.secret(getattr(settings, "webhook_secret", None)),
                    body,
                    timestamp=request.headers.get(TIMESTAMP_HEADER),
                    signature=request.headers.get(SIGNATURE_HEADER),
                    now=self._clock(),
                    tolerance=float(getattr(settings, "webhook_tolerance", DEFAULT_TOLERANCE)),
                )
            except BadSignature as exc:
                raise ApiError(401, "bad_signature", str(exc)) from None
        else:
            principal = await request.app.authenticator.authenticate(request)
            require_events(principal, source)
        if self._sink is None:
            raise ApiError(503, "events_unavailable", "this process takes no events")
        payload = parse_json_object(body)
        try:
            new = await self._sink.emit(source, event_type, payload)
        except InvalidMessage as exc:
            raise ApiError(422, exc.code, exc.message) from None
        envelope, record_id, version = self._sink.envelope(source, event_type, payload)
        answer = {
            "status": "accepted" if new else "duplicate",
            "event_id": envelope.request_id,
            "message_id": envelope.message_id,
            "record_id": record_id,
            "version": version,
        }
        return JSONResponse(answer, status_code=202 if new else 200)

    # --- the operators' view ---------------------------------------------------------------------------------

    def _needs_store(self) -> Store:
        if self._store is None:
            raise ApiError(503, "events_unavailable", "this process takes no events")
        return self._store

    async def list_events(
        self, request: Request, principal: Principal, source: str | None, key: str | None, limit: int
    ) -> dict[str, Any]:
        require_operator(principal)
        events = await self._needs_store().event_log.recent(limit=limit, source=source, key=key)
        return {"count": len(events), "events": events}

    async def show_event(self, request: Request, principal: Principal, event_id: str) -> dict[str, Any]:
        require_operator(principal)
        store = self._needs_store()
        event = await store.event_log.get(event_id)
        if event is None:
            raise ApiError(404, "unknown_event", f"no event with id {event_id!r}")
        timeline = await store.requests.timeline(event_id)
        deliveries: dict[str, list[dict[str, Any]]] = {
            code: [] for code in self._registry.subscribers(event["source"], event["type"])
        }
        for hop in timeline:
            subscriber = (hop.get("detail") or {}).get("subscriber")
            if subscriber is None and hop["service"].endswith("-events"):
                subscriber = self._registry.by_service(hop["service"].removesuffix("-events")).code
            if subscriber is not None:
                deliveries.setdefault(subscriber, []).append(hop)
        return {**event, "subscribers": deliveries, "timeline": timeline}

    # --- the pull feed ---------------------------------------------------------------------------------------

    def _feed_of(self, principal: Principal, subscriber: str) -> Store:
        if subscriber not in self._registry.subscriptions:
            raise ApiError(404, "unknown_feed", f"no feed {subscriber!r}: no such system subscribes to events")
        require_feed(principal, subscriber)
        return self._needs_store()

    async def read_feed(
        self, request: Request, principal: Principal, subscriber: str, after: int | None, limit: int
    ) -> dict[str, Any]:
        """Entries after the cursor `after` (left out: after the last one acknowledged), oldest first; `next` is
        the cursor to read after them and to acknowledge once they are handled. An entry stays until acknowledged:
        read again, it is the same, with the same `message_id`."""
        store = self._feed_of(principal, subscriber)
        if after is None:
            after = (await store.feed.lag(subscriber))["acked"]
        entries = await store.feed.read(subscriber, after=after, limit=limit)
        return {"entries": entries, "next": entries[-1]["cursor"] if entries else after, "more": len(entries) == limit}

    async def ack_feed(self, request: Request, principal: Principal, subscriber: str, body: FeedAck) -> dict[str, Any]:
        store = self._feed_of(principal, subscriber)
        acked = await store.feed.ack(subscriber, body.cursor)
        return {"acked": acked, **(await store.feed.lag(subscriber))}


async def _read(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_EVENT_BODY:
        raise ApiError(413, "body_too_large", f"the request body exceeds {MAX_EVENT_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BODY:
            raise ApiError(413, "body_too_large", f"the request body exceeds {MAX_EVENT_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
