"""What the operator console searches and counts: read by people, never on the hot path.

Lists of requests are newest first and read a page at a time by keyset: a page after (or before) a cursor, the
position `(created_at, request_id)` of a request, handed to clients as an opaque token (`cursor_of`). A page costs
the same however deep it is (an offset would read and skip every row before it), and requests accepted between two
pages' reads never shift a row onto the next page twice or off it: each row is on exactly one page.
"""

from __future__ import annotations

from sqlalchemy import String, func, literal, select, union_all

from esi.store import schema
from esi.store.cursors import cursor_of, keyset, parse_cursor
from esi.store.database import Database
from esi.store.records import RequestRecord
from esi.store.requests import as_record

__all__ = ["Queries", "cursor_of", "keyset", "parse_cursor"]


class Queries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search_requests(
        self,
        *,
        text: str | None = None,
        status: str | None = None,
        message_type: str | None = None,
        target: str | None = None,
        since: str | None = None,
        until: str | None = None,
        client_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
        before: str | None = None,
    ) -> list[RequestRecord]:
        """Requests, newest first: `text` is a request id or a business key (order, user, DMS user, policy);
        `since`/`until` bound `created_at` (ISO times); only `client_id`'s when given. A page by keyset: the `limit`
        requests older than the cursor `after`, or the `limit` newer than `before` (still newest first); `offset`
        (skipping rows, as deep pages cost) is kept for links made before cursors."""
        r, k = schema.requests, schema.request_keys
        query = select(r)
        if text:
            # the ids first (the request's own, those with the key), then their rows: an OR of the two conditions
            # has PostgreSQL read the whole history backwards by `created_at` for a key few requests carry
            ids = union_all(
                select(literal(text, String(255)).label("request_id")),
                select(k.c.request_id).where(k.c.key == text),
            ).subquery()
            query = query.where(r.c.request_id.in_(select(ids.c.request_id)))
        for column, value in (
            (r.c.status, status),
            (r.c.message_type, message_type),
            (r.c.target, target),
            (r.c.client_id, client_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since:
            query = query.where(r.c.created_at >= since)
        if until:
            query = query.where(r.c.created_at < until)
        query = keyset(query, after=after, before=before).limit(limit).offset(offset)
        rows = await self._db.read(lambda conn: [dict(row._mapping) for row in conn.execute(query).all()])
        records = [as_record(row) for row in rows]
        return records[::-1] if before is not None else records

    async def requests_per_minute(self, since: str) -> list[tuple[str, str, str, int]]:
        """`(target, minute, status, count)` of the requests created since `since` (ISO time; minutes as
        `YYYY-MM-DDTHH:MM`, UTC), by their status now."""
        r = schema.requests
        minute = func.substr(r.c.created_at, 1, 16)
        query = (
            select(r.c.target, minute, r.c.status, func.count())
            .where(r.c.created_at >= since)
            .group_by(r.c.target, minute, r.c.status)
        )
        rows = await self._db.read(lambda conn: conn.execute(query).all())
        return [(row[0], row[1], row[2], int(row[3])) for row in rows]

    async def request_message(self, request_id: str) -> bytes | None:
        """The message a request was accepted with (its envelope), while the outbox keeps it (see `prune`)."""
        o = schema.outbox
        query = select(o.c.body).where(o.c.request_id == request_id).order_by(o.c.id).limit(1)
        body = await self._db.read(lambda conn: conn.execute(query).scalar())
        return bytes(body) if body is not None else None
