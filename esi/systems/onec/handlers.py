"""What the 1C side does with the answers it receives: record them, so 1C can read the outcome of its requests."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from esi.messages import Envelope, Handler

log = logging.getLogger(__name__)

RESPONSES = ("user_created", "policy_info_response", "order_status_updated", "pdf_received")


#: payload fields worth finding a request by (GET /requests?key=...)
KEY_FIELDS = ("order_id", "order_number", "order_guid", "user_id", "dms_user_id", "policy_number", "file_id")


class ResponseStore(Protocol):
    async def record_response(self, request_id: str, *, response: dict[str, Any] | None,
                              error: dict[str, Any] | None, keys: list[str] | None = None) -> bool: ...


def business_keys(payload: dict[str, Any] | None) -> list[str]:
    """The values of a payload (and of a nested policy) that people search requests by."""
    if not payload:
        return []
    keys = [str(payload[f]) for f in KEY_FIELDS if payload.get(f)]
    nested = payload.get("policy_info")
    if isinstance(nested, dict) and nested.get("policy_number"):
        keys.append(str(nested["policy_number"]))
    return keys


def onec_handlers(store: ResponseStore, events: Any = None) -> dict[str, Handler]:
    async def record(envelope: Envelope, _payload: object) -> list[Envelope]:
        error = envelope.error.model_dump(exclude_none=True) if envelope.error else None
        known = await store.record_response(envelope.request_id, response=envelope.payload or None, error=error,
                                            keys=business_keys(envelope.payload))
        if not known:
            log.warning("answer %s for unknown request %s recorded nowhere", envelope.message_type, envelope.request_id)
            return []
        if events is not None:
            events.record(envelope.request_id, "failed" if error else "completed", service="onec",
                          message_id=envelope.message_id, causation_id=envelope.causation_id,
                          message_type=envelope.message_type, **({"error": error["message"]} if error else {}))
        return []

    return {name: record for name in RESPONSES}
