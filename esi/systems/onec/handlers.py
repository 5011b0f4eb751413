"""What the 1C side does with the answers it receives: record them, so 1C can read the outcome of its requests."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from esi.bus.consumer import Handler
from esi.messages import Envelope

log = logging.getLogger(__name__)

RESPONSES = ("user_created", "policy_info_response", "order_status_updated", "pdf_received")


class ResponseStore(Protocol):
    async def record_response(self, request_id: str, *, response: dict[str, Any] | None,
                              error: dict[str, Any] | None) -> bool: ...


def onec_handlers(store: ResponseStore) -> dict[str, Handler]:
    async def record(envelope: Envelope, _payload: object) -> list[Envelope]:
        error = envelope.error.model_dump(exclude_none=True) if envelope.error else None
        known = await store.record_response(envelope.request_id, response=envelope.payload or None, error=error)
        if not known:
            log.warning("answer %s for unknown request %s recorded nowhere", envelope.message_type, envelope.request_id)
        return []

    return {name: record for name in RESPONSES}
