"""Operations over HTTP, for operators: the systems and their maintenance pauses, and the audit log.

    GET  /systems                    every registered system: pause (for every replica), circuit breakers per process
    POST /systems/{code}/pause       pause one for maintenance: {"for": "2h", "reason": "..."} (both optional)
    POST /systems/{code}/resume      lift the pause
    GET  /audit                      what operators did, newest first

A pause is stored, not held in memory: every adapter replica of the system reads it (within a second), a restarted
one too, and it lifts itself at the end of `for`. Every change is written to the audit log with who made it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from esi.api.responses import FORBIDDEN_OPERATOR, INVALID_DURATION, UNKNOWN_SYSTEM
from esi.api.routes.table import Param, Route
from esi.config import parse_duration
from esi.errors import ApiError
from esi.security.scopes import Principal, require_operator
from esi.store import Store
from esi.systems.registry import Registry

__all__ = ["PauseRequest", "SystemsRoutes"]


class PauseRequest(BaseModel):
    """How long, and why, a system is paused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    for_: str | None = Field(
        default=None, alias="for", max_length=16, description="90s, 15m, 2h, 7d; unset: until resumed"
    )
    reason: str | None = Field(default=None, max_length=500)


class SystemsRoutes:
    def __init__(self, store: Store, registry: Registry) -> None:
        self._store = store
        self._registry = registry

    def routes(self) -> list[Route]:
        code = Param("code", str, Path(max_length=32))
        return [
            Route(
                "GET",
                "/systems",
                "list_systems",
                self.systems,
                "The systems: maintenance pauses and breakers",
                refusals=(FORBIDDEN_OPERATOR,),
            ),
            Route(
                "POST",
                "/systems/{code}/pause",
                "pause_system",
                self.pause,
                "Pause a system for maintenance, for every adapter replica",
                params=(code, Param("body", PauseRequest)),
                refusals=(FORBIDDEN_OPERATOR, UNKNOWN_SYSTEM, INVALID_DURATION),
            ),
            Route(
                "POST",
                "/systems/{code}/resume",
                "resume_system",
                self.resume,
                "Lift a system's pause",
                params=(code,),
                refusals=(FORBIDDEN_OPERATOR, UNKNOWN_SYSTEM),
            ),
            Route(
                "GET",
                "/audit",
                "audit_log",
                self.audit,
                "What operators did, newest first",
                params=(
                    Param("action", str | None, Query(None, max_length=64)),
                    Param("since", str | None, Query(None, max_length=16, description="90s, 15m, 2h, 7d")),
                    Param("limit", int, Query(100, ge=1, le=10_000)),
                ),
                refusals=(FORBIDDEN_OPERATOR, INVALID_DURATION),
            ),
        ]

    async def systems(self, request: Request, principal: Principal) -> dict[str, Any]:
        """Each system's maintenance pause (if any) and the breakers its adapter processes last reported."""
        require_operator(principal)
        pauses = await self._store.pauses.system_pauses()
        breakers = await self._store.pauses.breaker_states()
        return {
            "systems": [
                {
                    "code": s.code,
                    "title": s.title,
                    "service": s.service,
                    "origin": s.origin,
                    "paused": pauses[s.code].model_dump() if s.code in pauses else None,
                    "breakers": [b.model_dump() for b in breakers if b.system == s.code],
                }
                for s in self._registry.systems
            ]
        }

    async def pause(self, request: Request, principal: Principal, code: str, body: PauseRequest) -> dict[str, Any]:
        require_operator(principal)
        system = self._pausable(code)
        until = None
        if body.for_:
            try:
                seconds = parse_duration(body.for_, name="for")
                if not seconds:  # `off`, `never`, 0: not a pause that ends now
                    raise ValueError(
                        f"for must be a positive duration (leave it out to pause until resumed): {body.for_!r}"
                    )
                until = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
        pause = await self._store.pauses.pause_system(
            system, until=until, reason=body.reason, paused_by=principal.client_id
        )
        await self._store.audit.record(
            "system.pause",
            client_id=principal.client_id,
            subject=system,
            detail={"until": until, "reason": body.reason},
        )
        return {"system": system, "paused": pause.model_dump()}

    async def resume(self, request: Request, principal: Principal, code: str) -> dict[str, Any]:
        require_operator(principal)
        system = self._pausable(code)
        was_paused = await self._store.pauses.resume_system(system)
        await self._store.audit.record(
            "system.resume", client_id=principal.client_id, subject=system, detail={"was_paused": was_paused}
        )
        return {"system": system, "paused": None, "was_paused": was_paused}

    async def audit(
        self, request: Request, principal: Principal, action: str | None, since: str | None, limit: int
    ) -> dict[str, Any]:
        require_operator(principal)
        start = None
        if since:
            try:
                start = (datetime.now(UTC) - timedelta(seconds=parse_duration(since, name="since"))).isoformat(
                    timespec="microseconds"
                )
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
        entries = await self._store.audit.entries(limit=limit, action=action, since=start)
        return {"count": len(entries), "entries": [e.model_dump() for e in entries]}

    def _pausable(self, code: str) -> str:
        code = code.strip().lower()
        if code not in self._registry.codes or self._registry.system(code).origin:
            known = [s.code for s in self._registry.systems if not s.origin]
            raise ApiError(404, "unknown_system", f"unknown system {code!r}; known: {', '.join(known)}")
        return code
