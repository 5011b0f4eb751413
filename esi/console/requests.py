"""The console's request pages: the search over requests (/console/requests, by text, status, type and time, a page
of `PAGE_SIZE` at a time) and one request (/console/requests/{id}: its record, message, response and timeline as a
sequence diagram), personal data masked unless the client may read it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from esi.console.core import Console, html_errors
from esi.console.i18n import N_
from esi.console.masking import mask
from esi.console.views import sequence
from esi.errors import ApiError
from esi.security.scopes import Principal
from esi.store import RequestStatus
from esi.store.cursors import cursor_of, parse_cursor

__all__ = ["RequestPages"]

PAGE_SIZE = 50


def _utc(value: str | None) -> str | None:
    """A `datetime-local` field (no zone: read as UTC) as the store keeps times; None when empty."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "validation_error", N_("not a date and time: %(value)s", value=repr(value))) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _link(form: dict[str, str], page: int, **cursor: str) -> str:
    """The query string of another page of the list: the same filters, a page number shown, the cursor."""
    return urlencode({**form, "page": page, **cursor})


class RequestPages:
    """The requests and the request pages over a `Console`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._store = console.store
        self._registry = console.registry

    @html_errors
    async def requests(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        query = request.query_params
        text = (query.get("q") or "").strip()[:255]
        status = query.get("status") or None
        if status is not None and status not in {s.value for s in RequestStatus}:
            raise ApiError(422, "validation_error", N_("unknown status %(status)s", status=repr(status)))
        message_type = (query.get("type") or "").strip()[:64] or None
        since, until = _utc(query.get("from")), _utc(query.get("to"))
        page = int(query["page"]) if query.get("page", "").isdigit() else 1
        page = max(1, min(page, 10_000))
        # a page by keyset: `after` (older) or `before` (newer) a request's cursor; `page` numbers it only (and
        # skips rows by offset in a link without a cursor, as they were made before cursors)
        after, before = query.get("after") or None, query.get("before") or None
        for token in (after, before):
            if token is not None:
                try:
                    parse_cursor(token)
                except ValueError:
                    raise ApiError(422, "validation_error", N_("not a page of this list")) from None
        records = await self._store.queries.search_requests(
            text=text or None,
            status=status,
            message_type=message_type,
            since=since,
            until=until,
            client_id=None if self.console.sees_all(principal) else principal.client_id,
            limit=PAGE_SIZE + 1,
            offset=0 if after or before else (page - 1) * PAGE_SIZE,
            after=after,
            before=before,
        )
        if before is not None:  # newest first, the one beyond the page (if any) is the first
            newer = len(records) > PAGE_SIZE
            records = records[-PAGE_SIZE:]
            older = True
        else:
            newer = page > 1 or after is not None
            older = len(records) > PAGE_SIZE
            records = records[:PAGE_SIZE]
        if before is not None and not newer:
            page = 1  # back at the newest
        form = {
            "q": text,
            "status": status or "",
            "type": message_type or "",
            "from": query.get("from") or "",
            "to": query.get("to") or "",
        }
        link = {k: v for k, v in form.items() if v}
        return self.console.page(
            request,
            principal,
            "requests.html",
            title=N_("Requests"),
            records=records,
            form=form,
            statuses=[s.value for s in RequestStatus],
            message_types=sorted(s.message_type for s in self._registry.catalog.specs),
            page=page,
            previous=(
                (_link(link, page - 1, before=cursor_of(records[0])) if records else _link(link, 1)) if newer else None
            ),
            next=_link(link, page + 1, after=cursor_of(records[-1])) if older and records else None,
            searched=bool(link),
        )

    @html_errors
    async def request_page(self, request_id: str, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        record = await self._store.requests.get(request_id[:128])
        if record is None or not (self.console.sees_all(principal) or record.client_id == principal.client_id):
            raise ApiError(404, "unknown_request", N_("no request with request_id %(id)s", id=repr(request_id)))
        reveal = self.console.may_read(principal, record)
        envelope: dict[str, Any] | None = None
        body = await self._store.queries.request_message(record.request_id)
        if body is not None:
            try:
                parsed = orjson.loads(body)
                envelope = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                envelope = None
        events = await self._store.requests.timeline(record.request_id)
        settled = record.status in (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.DEAD_LETTERED)
        return self.console.page(
            request,
            principal,
            "request.html",
            title=N_("Request %(id)s", id=record.request_id),
            record=record,
            reveal=reveal,
            payload=mask(envelope.get("payload"), reveal=reveal) if envelope else None,
            envelope=envelope,
            response=mask(record.response, reveal=reveal) if record.response else None,
            diagram=sequence(self._registry, events),
            settled=settled,
        )
