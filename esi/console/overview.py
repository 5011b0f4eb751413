"""The console's overview page (/console): per system its last hour of requests, dead-letter depth, pause, breakers
and readiness checks, with the outbox backlog.

What it reads is kept for a few seconds, one query per replica however many operators look (`Overview.clear()`
forgets it, after an action changed it); the broker's queue depths and the readiness checks are waited for a few
seconds only, and the page says when they did not come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from esi.console.core import Console, html_errors
from esi.console.i18n import N_
from esi.console.views import OUTCOMES, minute_chart
from esi.security.scopes import Principal

__all__ = ["Overview"]

#: the overview's body is fetched again this often (seconds, htmx: no page reload); what it reads is kept as long
#: (one query per replica)
REFRESH_S = 10
OVERVIEW_TTL_S = 5.0
#: how long the overview waits for the broker's queue depths and the readiness checks
SLOW_PART_TIMEOUT_S = 3.0


class _Cached:
    """A value computed at most every `ttl` seconds, whoever asks."""

    def __init__(self, compute: Callable[[], Awaitable[dict[str, Any]]], ttl: float) -> None:
        self._compute = compute
        self._ttl = ttl
        self._value: dict[str, Any] | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._at >= self._ttl:
                self._value = await self._compute()
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        self._value = None


class Overview:
    """The overview page over a `Console`, with what it read kept for `OVERVIEW_TTL_S` seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._deps = console.deps
        self._store = console.store
        self._registry = console.registry
        self._overview = _Cached(self._overview_data, OVERVIEW_TTL_S)

    def clear(self) -> None:
        """Forget what the overview read: an action changed it, the next view reads it again."""
        self._overview.clear()

    async def _overview_data(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        since = (now - timedelta(minutes=60)).isoformat(timespec="microseconds")
        # the store's reads, the broker's queue depths and the readiness checks at once: the page waits for the
        # slowest of them, not for their sum
        (counts, pauses, breakers, backlog, parked), (depths, depth_error), (ready, checks) = await asyncio.gather(
            self._store_parts(since), self._depths(), self._readiness()
        )
        systems = []
        for system in self._registry.systems:
            mine = [
                (minute, status, n) for target, minute, status, n in counts if system.origin or target == system.code
            ]
            systems.append(
                {
                    "code": system.code,
                    "title": system.title,
                    "service": system.service,
                    "origin": system.origin,
                    "chart": minute_chart(mine, now=now),
                    "depth": (depths or {}).get(system.code),
                    "paused": pauses.get(system.code),
                    "breakers": [b for b in breakers if b.system == system.code],
                    "checks": {
                        name: check
                        for name, check in checks.items()
                        if name.endswith(f"({system.service})")
                        or name.endswith(f"({system.code})")
                        or name == system.health
                    },
                }
            )
        totals = {outcome: 0 for outcome in OUTCOMES}
        for _target, _minute, status, n in counts:
            totals[status] = totals.get(status, 0) + n
        requests = sum(totals.values())
        summary = {
            "requests": requests,
            "per_minute": round(requests / 60, 1),
            "failures": totals.get("failed", 0) + totals.get("dead_lettered", 0),
            "open_breakers": len({b.system for b in breakers if b.state not in ("closed",)}),
            "parked": parked,
        }
        return {
            "summary": summary,
            "systems": systems,
            "backlog": backlog,
            "depth_error": depth_error,
            "ready": ready,
            "checks": checks,
            "at": now,
        }

    async def _store_parts(self, since: str) -> tuple[Any, Any, Any, int, int]:
        store = self._store
        counts, pauses, breakers, backlog, parked = await asyncio.gather(
            store.queries.requests_per_minute(since),
            store.pauses.system_pauses(),
            store.pauses.breaker_states(),
            store.outbox.backlog(),
            store.dead_letters.counts_by_queue(),
        )
        return counts, pauses, breakers, backlog, sum(parked.values())

    async def _depths(self) -> tuple[dict[str, dict[str, int]] | None, str | None]:
        if self._deps.dead_letters is None:
            return None, None
        try:
            async with asyncio.timeout(SLOW_PART_TIMEOUT_S):
                return await self._deps.dead_letters.depths(), None
        except Exception as exc:  # noqa: BLE001 - the broker is away: the page says so, and shows the rest
            return None, f"{type(exc).__name__}: {exc}"[:200]

    async def _readiness(self) -> tuple[bool | None, dict[str, Any]]:
        if self._deps.readiness is None:
            return None, {}
        try:
            async with asyncio.timeout(SLOW_PART_TIMEOUT_S):
                return await self._deps.readiness()
        except Exception as exc:  # noqa: BLE001 - the page shows the failure instead of failing
            return False, {"readiness": {"status": "down", "error": f"{type(exc).__name__}: {exc}"}}

    @html_errors
    async def live(self, *, request: Request, principal: Principal) -> Response:
        """The overview's body alone: htmx swaps it in place every `REFRESH_S` seconds (no page reload)."""
        self.console.require_viewer(principal)
        data = await self._overview.get()
        return self.console.fragment(
            request, principal, "_overview_body.html", outcomes=OUTCOMES, refresh_s=REFRESH_S, **data
        )

    @html_errors
    async def overview(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        data = await self._overview.get()
        return self.console.page(
            request, principal, "overview.html", title=N_("Overview"), outcomes=OUTCOMES, refresh_s=REFRESH_S, **data
        )
