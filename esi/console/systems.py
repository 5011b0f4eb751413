"""The console's systems page (/console/systems: each target system's pause and breakers, and for operators the
latest audit log) and its actions, pause and resume, through the same code as the JSON API
(esi.api.routes.systems), audit log included.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from esi.api.routes.systems import PauseRequest, SystemsRoutes
from esi.config import parse_duration
from esi.console.core import Console, html_errors
from esi.console.i18n import N_
from esi.console.overview import Overview
from esi.errors import ApiError
from esi.security.scopes import Principal

__all__ = ["SystemPages"]


class SystemPages:
    """The systems page and its actions over a `Console`; an action makes the `Overview` read afresh."""

    def __init__(self, console: Console, overview: Overview) -> None:
        self.console = console
        self._store = console.store
        self._registry = console.registry
        self._overview = overview
        self._operations = SystemsRoutes(console.deps.store, console.deps.registry)

    @html_errors
    async def systems(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        pauses = await self._store.pauses.system_pauses()
        breakers = await self._store.pauses.breaker_states()
        systems = [
            {
                "code": s.code,
                "title": s.title,
                "service": s.service,
                "paused": pauses.get(s.code),
                "breakers": [b for b in breakers if b.system == s.code],
            }
            for s in self._registry.systems
            if not s.origin
        ]
        audit = await self._store.audit.entries(limit=20) if principal.is_operator else []
        return self.console.page(request, principal, "systems.html", title=N_("Systems"), systems=systems, audit=audit)

    @html_errors
    async def pause(self, code: str, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        duration = str(form.get("for") or "").strip() or None
        reason = str(form.get("reason") or "").strip()[:500] or None
        if duration is not None:
            try:
                parse_duration(duration, name="for")
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
        result = await self._operations.pause(
            request, principal, code, PauseRequest(**{"for": duration, "reason": reason})
        )
        self._overview.clear()
        return self.console.redirect("/console/systems", done="paused", system=str(result["system"]))

    @html_errors
    async def resume(self, code: str, *, request: Request, principal: Principal) -> Response:
        await self.console.action_form(request, principal)
        result = await self._operations.resume(request, principal, code)
        self._overview.clear()
        return self.console.redirect("/console/systems", done="resumed", system=str(result["system"]))
