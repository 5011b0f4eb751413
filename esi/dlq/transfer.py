"""Dead letters as JSON Lines, to move them between environments or attach them to a ticket.

`export` writes one line per dead letter the filter matches: its index row's facts, its headers, properties and
body (text, or `body_base64` when it is not UTF-8). The messages stay where they are: each DLQ is read once from
its head and everything goes back. `load` puts lines back: into their system's DLQ (indexed) or, with `replay`,
straight to their original routing key (attempt count reset, same message id: the inbox still gives one effect).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from aio_pika.abc import AbstractConnection

from esi.bus.dead_letters import DeadLetter, letter_id, replay_headers
from esi.bus.publisher import Publisher
from esi.bus.topology import Topology
from esi.dlq.entries import KeysOf, entry_of
from esi.dlq.ops import DeadLetterOps
from esi.store.dead_letters import IndexFilter

__all__ = ["export_lines", "load_lines"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _line(letter: DeadLetter, facts: dict[str, Any]) -> bytes:
    record: dict[str, Any] = {
        **facts,
        "exchange": letter.exchange,
        "routing_key": letter.routing_key,
        "headers": _jsonable(letter.headers),
        "properties": _jsonable(letter.properties),
    }
    try:
        record["body"] = letter.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(letter.body).decode()
    return orjson.dumps(record) + b"\n"


async def export_lines(
    ops: DeadLetterOps, filters: IndexFilter, *, scan_limit: int = 1_000_000
) -> AsyncIterator[bytes]:
    """The JSON Lines of the dead letters `filters` matches (in the index), read from their queues."""
    if ops.dead_letters is None:
        raise ValueError("dead-letter access is not configured here")
    by_queue: dict[str, dict[str, dict[str, Any]]] = {}
    cursor: int | None = None
    while True:
        page, cursor = await ops.page(filters, after=cursor, limit=1000)
        for row in page:
            by_queue.setdefault(row.queue, {})[row.letter_id] = row.summary()
        if cursor is None:
            break
    for queue, wanted in by_queue.items():
        for letter in await ops.dead_letters.scan(queue, limit=scan_limit):
            facts = wanted.pop(letter.id, None)
            if facts is not None:
                facts.pop("cursor", None)
                facts.pop("age_s", None)
                yield _line(letter, facts)


def _body(record: dict[str, Any]) -> bytes:
    if "body_base64" in record:
        try:
            return base64.b64decode(record["body_base64"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"body_base64 is not base64: {exc}") from None
    body = record.get("body")
    if not isinstance(body, str):
        raise ValueError("a line needs a body (text) or a body_base64")
    return body.encode("utf-8")


async def load_lines(
    lines: Iterable[bytes],
    *,
    connection: AbstractConnection,
    ops: DeadLetterOps,
    topology: Topology,
    replay: bool,
    keys: KeysOf | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - the publisher's confirm timeout, not this call's deadline
) -> int:
    """Publish each line (confirmed): to its system's DLQ, indexed, or with `replay` to its original routing key.
    How many; ValueError naming the first bad line (the lines before it are in already)."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    publisher = Publisher(channel, exchange=topology.exchange, timeout=timeout)
    queues = {q.dead_letter_queue: q for q in topology.work_queues}
    count = 0
    try:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("a line must be a JSON object")
                body = _body(record)
                headers = dict(record.get("headers") or {})
                properties = {
                    k: v
                    for k, v in (record.get("properties") or {}).items()
                    if k in ("content_type", "content_encoding", "message_id", "correlation_id", "type", "app_id")
                }
                work = queues.get(str(record.get("queue")))
                if work is None:
                    raise ValueError(f"unknown dead-letter queue {record.get('queue')!r}")
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"line {number}: {exc}") from None
            if replay:
                if not record.get("routing_key"):
                    raise ValueError(f"line {number}: no routing key to replay to")
                await publisher.publish_raw(
                    str(record.get("exchange") or topology.exchange),
                    str(record["routing_key"]),
                    body,
                    headers=replay_headers(headers),
                    properties=properties,
                )
            else:
                await publisher.publish_raw(work.dead_letter_exchange, "", body, headers=headers, properties=properties)
                letter = DeadLetter(
                    id=letter_id(properties.get("message_id"), body),
                    queue=work.dead_letter_queue,
                    exchange=str(record.get("exchange") or ""),
                    routing_key=str(record.get("routing_key") or ""),
                    reason=str(record.get("reason") or "imported"),
                    error_class=record.get("error_class"),
                    attempts=int(record.get("attempts") or 0),
                    dead_lettered_at=None,
                    headers=headers,
                    body=body,
                    properties=properties,
                )
                entry = entry_of(letter, system=work.system, keys=keys)
                entry["dead_lettered_at"] = record.get("dead_lettered_at") or entry["dead_lettered_at"]
                await ops.store.dead_letters.add([entry], indexed_by="import")
            count += 1
    finally:
        if not channel.is_closed:
            await channel.close()
    return count
