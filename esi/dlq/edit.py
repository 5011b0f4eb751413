"""Edit and replay: an operator with the `dlq:edit` scope corrects a dead letter's payload, which is checked against
its message type's published JSON Schema (the one `esi contracts` writes to contracts/schemas) before anything is
published; the corrected message replaces the parked one (same message id, so the consumer's inbox still gives it
one effect), the index says `edited`, the audit log keeps the payload before and after (masked as the console masks
personal data) and the request's timeline gets an `edited` hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from esi.bus.headers import H_EDITED_BY
from esi.contracts.schemas import model_schema
from esi.dlq.entries import envelope_fields
from esi.dlq.ops import DeadLetterOps
from esi.errors import InvalidMessage
from esi.messages import Catalog

__all__ = ["EditRefused", "edit_and_replay", "schema_errors"]

T = TypeVar("T")


class EditRefused(ValueError):
    """The edit cannot be published: `status` 404 (no such parked letter), 422 (the schema's message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@cache
def _validator(catalog: Catalog, message_type: str) -> Draft202012Validator:
    return Draft202012Validator(model_schema(catalog.get(message_type).model))


def schema_errors(catalog: Catalog, message_type: str, payload: Any) -> str | None:
    """The schema's message for the first problem of `payload` as a `message_type` payload (None: it is valid)."""
    try:
        validator = _validator(catalog, message_type)
    except InvalidMessage as exc:
        return exc.message
    error = best_match(validator.iter_errors(payload))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


async def _patiently(look: Callable[[], Awaitable[T]], tries: int = 5, pause_s: float = 0.5) -> T | None:
    """`look()` until it finds something: a queue's messages held for a moment by another reader (the sweep, a job's
    pass, an operator opening one) are not in its ready count then."""
    for attempt in range(tries):
        found = await look()
        if found is not None:
            return found
        if attempt < tries - 1:
            await asyncio.sleep(pause_s)  # back-off between looks, not synchronisation
    return None


async def edit_and_replay(
    ops: DeadLetterOps,
    catalog: Catalog,
    ident: str,
    payload: Any,
    *,
    by: str,
    mask: Callable[[Any], Any],
) -> dict[str, Any]:
    """Replace dead letter `ident`'s payload with `payload` and replay it; what the audit log keeps."""
    if ops.dead_letters is None:
        raise EditRefused(503, "dead-letter access is not configured on this service")
    row = await ops.store.dead_letters.get(ident)
    if row is None or row.state != "parked":
        raise EditRefused(404, f"no parked dead letter with id {ident!r}")
    letter = await _patiently(lambda: ops.dead_letters.find(row.queue, ident))  # type: ignore[union-attr]
    if letter is None:
        raise EditRefused(404, f"dead letter {ident!r} is not in {row.queue} any more")
    envelope = envelope_fields(letter.body)
    message_type = envelope.get("message_type")
    if not envelope or not isinstance(message_type, str):
        raise EditRefused(422, "only a message with an esi envelope can be edited (this one is not JSON or has none)")
    before = envelope.get("payload")
    problem = schema_errors(catalog, message_type, payload)
    if problem is not None:
        message = f"the edit does not match the {message_type} schema: {problem}"
        await ops.store.audit.record(
            "dlq.edit_refused",
            client_id=by,
            subject=row.request_id or ident,
            count=0,
            detail={
                "id": ident,
                "message_type": message_type,
                "before": mask(before),
                "after": mask(payload),
                "error": message,
            },
        )
        raise EditRefused(422, message)
    body = orjson.dumps({**envelope, "payload": payload})
    dead_letters = ops.dead_letters
    replayed = await _patiently(
        lambda: dead_letters.republish_one(row.queue, ident, body, extra_headers={H_EDITED_BY: by})
    )
    if replayed is None:
        raise EditRefused(404, f"dead letter {ident!r} is not in {row.queue} any more")
    await ops.store.dead_letters.settle([row.id], "edited")
    detail = {
        "id": ident,
        "queue": row.queue,
        "message_type": message_type,
        "before": mask(before),
        "after": mask(payload),
    }
    await ops.store.audit.record("dlq.edit", client_id=by, subject=row.request_id or ident, count=1, detail=detail)
    if row.request_id:
        await ops.store.requests.add_events(
            [
                {
                    "request_id": row.request_id,
                    "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "event": "edited",
                    "service": "dlq-edit",
                    "message_id": ident,
                    "causation_id": None,
                    "message_type": message_type,
                    "detail": orjson.dumps({"by": by, "before": mask(before), "after": mask(payload)}).decode(),
                }
            ]
        )
    return detail
