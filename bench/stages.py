"""Where a request's time goes, from the timestamps the system writes anyway.

    client    POST start (wall clock)            ─┐ api: HTTP, validation, the store's insert
    store     esi_requests.created_at            ─┤ relay: outbox → main_exchange, confirmed, marked sent
    store     esi_outbox.sent_at                 ─┤ to_dms: dms_queue, DMS adapter (inbox check, HTTP call)
    fake DMS  users[].created_at                 ─┤ back: reply (confirmed), inbox record, ack, 1c_queue, stored
    store     esi_requests.updated_at            ─┤ poll: until the client's GET sees `completed`
    client    first GET that sees completed      ─┘

All on one host, so the clocks agree (the fake DMS stamps to the millisecond).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from typing import Any

from bench.load import Outcome, percentile

STAGES = ("api", "relay", "to_dms", "back", "poll")


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _store_rows(database_url: str, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """request id → (created_at, updated_at, sent_at), read-only."""
    query = (
        "SELECT r.request_id, r.created_at, r.updated_at, o.sent_at FROM esi_requests r "
        "LEFT JOIN esi_outbox o ON o.request_id = r.request_id WHERE r.request_id LIKE "
    )
    prefix = ids[0].rsplit("-", 1)[0] + "-%"
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            rows = conn.execute(query + "?", (prefix,)).fetchall()
    else:
        import asyncpg

        async def fetch() -> list[Any]:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetch(query + "$1", prefix)
            finally:
                await conn.close()

        rows = asyncio.run(fetch())
    wanted = set(ids)
    return {row[0]: tuple(row[1:]) for row in rows if row[0] in wanted}


def breakdown(outcome: Outcome, *, database_url: str, dms_users: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and p95 of each stage over the requests of `outcome` that completed, in ms."""
    done = {rid: w for rid, w in outcome.wall.items() if len(w) == 2}
    if not done:
        return {}
    store = _store_rows(database_url, list(done))
    dms = {u.get("external_id"): _ts(u.get("created_at")) for u in dms_users}
    spans: dict[str, list[float]] = {stage: [] for stage in STAGES}
    stored: list[float] = []
    for rid, (posted, seen) in done.items():
        row = store.get(rid)
        if row is None:
            continue
        created, updated, sent = (_ts(v) for v in row)
        at_dms = dms.get("U-" + rid.split("-", 1)[1])
        points = [posted, created, sent, at_dms, updated, seen]
        if any(p is None for p in points):
            continue
        for stage, start, end in zip(STAGES, points, points[1:]):
            spans[stage].append(end - start)
        stored.append(updated - posted)
    out: dict[str, Any] = {"requests": len(spans["api"])}
    for stage, values in spans.items():
        out[stage] = {"p50_ms": _ms(percentile(values, 50)), "p95_ms": _ms(percentile(values, 95))}
    # the latency to the answer being stored, without the polling: what a push API would give 1C
    out["to_stored"] = {
        "p50_ms": _ms(percentile(stored, 50)),
        "p95_ms": _ms(percentile(stored, 95)),
        "p99_ms": _ms(percentile(stored, 99)),
    }
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)
