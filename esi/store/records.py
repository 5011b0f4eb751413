"""Plain records the store hands out."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class RequestStatus(StrEnum):
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class RequestRecord(BaseModel):
    """A business request as 1C sees it through `GET /requests/{request_id}`."""

    request_id: str
    status: RequestStatus
    target: str
    message_type: str
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    last_error: str | None = None
    created_at: str
    updated_at: str
    #: the API client that sent it (None with authentication off)
    client_id: str | None = None


class OutboxRow(BaseModel):
    """A message waiting in the outbox (`id` orders the sweep; 0 for a row handed over right after its commit)."""

    id: int = 0
    message_id: str
    request_id: str
    routing_key: str
    body: bytes
    #: the W3C trace context of the request that wrote it (JSON), with tracing on (esi.tracing)
    trace_context: str | None = None


class SystemPause(BaseModel):
    """A system paused for maintenance by an operator: every adapter replica stops calling it until `until`."""

    system: str
    paused_at: str
    until: str | None = None
    reason: str | None = None
    paused_by: str | None = None


class AuditEntry(BaseModel):
    """One thing an operator did."""

    id: int
    at: str
    client_id: str
    action: str
    subject: str | None = None
    count: int | None = None
    detail: dict[str, Any] | None = None


class BreakerReport(BaseModel):
    """A circuit breaker's state as one adapter process (`instance`) reported it."""

    system: str
    instance: str
    state: str
    since: str
    reason: str | None = None
    updated_at: str
