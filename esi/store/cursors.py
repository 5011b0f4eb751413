"""Keyset pagination over the requests: a cursor is a request's position `(created_at, request_id)` in a list
newest first, handed out as an opaque token."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from sqlalchemy import Select, and_, or_

from esi.store import schema
from esi.store.records import RequestRecord


def cursor_of(record: RequestRecord) -> str:
    """The opaque token of `record`'s position in a list of requests (what `after=` and `before=` take)."""
    raw = orjson.dumps([record.created_at, record.request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(token: str) -> tuple[str, str]:
    """`(created_at, request_id)` of a token made by `cursor_of`; ValueError for anything else."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise ValueError(f"not a cursor: {token[:40]!r}") from None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not a cursor: {token[:40]!r}")
    return value[0], value[1]


def keyset(query: Select[Any], *, after: str | None = None, before: str | None = None) -> Select[Any]:
    """`query` over the requests (as `schema.requests`), newest first, limited to the rows after the cursor `after`
    (older ones) or before `before` (newer ones, then read oldest first: the caller reverses them).

    The condition `created_at <= c AND (created_at < c OR request_id < r)` is the row comparison
    `(created_at, request_id) < (c, r)` written so that both backends' planners take the range of the index on
    `created_at`."""
    r = schema.requests
    if after is not None:
        at, rid = parse_cursor(after)
        query = query.where(
            r.c.created_at <= at, or_(r.c.created_at < at, and_(r.c.created_at == at, r.c.request_id < rid))
        )
    if before is not None:
        at, rid = parse_cursor(before)
        query = query.where(
            r.c.created_at >= at, or_(r.c.created_at > at, and_(r.c.created_at == at, r.c.request_id > rid))
        )
        return query.order_by(r.c.created_at, r.c.request_id)
    return query.order_by(r.c.created_at.desc(), r.c.request_id.desc())
