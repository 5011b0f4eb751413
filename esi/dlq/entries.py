"""A dead letter read from its queue, as a row of the index (the sweep, an import)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from esi.bus import headers as h
from esi.bus.dead_letters import DeadLetter
from esi.store.dead_letters import index_row

#: the business keys of a payload (the registry's `business_keys`)
KeysOf = Callable[[Mapping[str, object] | None], list[str]]


def envelope_fields(body: bytes) -> dict[str, Any]:
    """What a body's envelope says (request id, message type, payload), as far as it is JSON at all."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def entry_of(letter: DeadLetter, *, system: str, keys: KeysOf | None = None) -> dict[str, Any]:
    """The index row of `letter` (a message in `system`'s DLQ)."""
    fields = envelope_fields(letter.body)
    payload = fields.get("payload")
    code = letter.headers.get(h.H_ERROR_CODE)
    request_id = fields.get("request_id") or letter.properties.get("correlation_id")
    message_type = fields.get("message_type")
    return index_row(
        letter_id=letter.id,
        queue=letter.queue,
        system=system,
        message_type=message_type if isinstance(message_type, str) else None,
        reason_class=letter.error_class,
        reason_code=code.decode() if isinstance(code, bytes) else (str(code) if code else None),
        reason=letter.reason,
        keys=keys(payload) if keys is not None and isinstance(payload, dict) else (),
        request_id=request_id if isinstance(request_id, str) else None,
        routing_key=letter.routing_key,
        attempts=letter.attempts,
        dead_lettered_at=letter.dead_lettered_at.isoformat(timespec="microseconds")
        if letter.dead_lettered_at
        else None,
        size=len(letter.body),
    )
