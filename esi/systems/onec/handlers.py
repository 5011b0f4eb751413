"""What the 1C side does with the answers it receives: record them, so 1C can read the outcome of its requests."""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from esi.messages import Envelope, Handler
from esi.systems.spec import SystemContext

log = logging.getLogger(__name__)


class ResponseStore(Protocol):
    async def record_response(
        self,
        request_id: str,
        *,
        response: dict[str, Any] | None,
        error: dict[str, Any] | None,
        keys: list[str] | None = None,
    ) -> bool: ...


class RequestOutcome(BaseModel):
    """The outcome of a request of 1C, delivered to 1C when its request asked for it (`1c.event.request_outcome`)."""

    request_id: str
    status: Literal["completed", "failed"]
    #: the answer's message type (`user_created`)
    message_type: str
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: an outcome is final: one version
    revision: int = 1


def outcome_event(answer: Envelope, error: dict[str, Any] | None) -> Envelope:
    """The `request_outcome` event of an answer (its id derived from the answer's: a redelivery yields the same)."""
    outcome = RequestOutcome(
        request_id=answer.request_id,
        status="failed" if error else "completed",
        message_type=answer.message_type,
        response=answer.payload or None,
        error=error,
    )
    return Envelope(
        message_id=answer.derived_id("request_outcome"),
        request_id=answer.request_id,
        causation_id=answer.message_id,
        source_system=answer.target_system,
        target_system=answer.target_system,
        message_type="request_outcome",
        payload=outcome.model_dump(),
    )


def onec_handlers(context: SystemContext) -> dict[str, Handler]:
    """One handler for every reply that reaches 1C's queue (the registry says which)."""
    store: ResponseStore = context.store.requests
    events = context.events
    registry = context.registry

    async def record(envelope: Envelope, _payload: BaseModel | None) -> list[Envelope]:
        error = envelope.error.model_dump(exclude_none=True) if envelope.error else None
        # the end is written before the request reads as settled: a request read as completed or failed shows
        # every hop that led there, its end included
        events.record(
            envelope.request_id,
            "failed" if error else "completed",
            service=context.system.service,
            message_id=envelope.message_id,
            causation_id=envelope.causation_id,
            message_type=envelope.message_type,
            **({"error": error["message"]} if error else {}),
        )
        await events.durable()
        known = await store.record_response(
            envelope.request_id,
            response=envelope.payload or None,
            error=error,
            keys=registry.business_keys(envelope.payload),
        )
        if not known:
            log.warning("answer %s for unknown request %s recorded nowhere", envelope.message_type, envelope.request_id)
        if (envelope.context or {}).get("notify") == "outcome":  # 1C asked for it (X-Esi-Notify: outcome)
            return [outcome_event(envelope, error)]
        return []

    return {name: record for name in sorted(registry.routed_to(context.system))}
