"""The console's events page (/console/events): the latest events taken, and each subscriber's delivery of them
(delivered, superseded, retrying, dead-lettered), read from the event log and the events' timelines."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from esi.console.core import Console, html_errors
from esi.console.i18n import N_
from esi.security.scopes import Principal

__all__ = ["EventPages"]

#: the timeline entries that tell how a subscriber's copy fared, the last one standing
_OUTCOMES = ("delivered", "superseded", "dead_lettered", "retry_scheduled", "waiting", "consumed")


class EventPages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self._store = console.store
        self._registry = console.registry

    @html_errors
    async def events(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        key = (request.query_params.get("key") or "").strip()[:255] or None
        source = (request.query_params.get("source") or "").strip()[:32] or None
        events = await self._store.event_log.recent(limit=50, source=source, key=key)
        rows = []
        for event in events:
            subscribers = self._registry.subscribers(event["source"], event["type"])
            timeline = await self._store.requests.timeline(event["event_id"])
            rows.append({**event, "deliveries": [_outcome(code, timeline) for code in subscribers]})
        return self.console.page(
            request, principal, "events.html", title=N_("Events"), events=rows, key=key or "", source=source or ""
        )


def _outcome(subscriber: str, timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """How `subscriber`'s copy stands: its latest telling hop, and how many tries it took."""
    hops = [
        h
        for h in timeline
        if (h.get("detail") or {}).get("subscriber") == subscriber
        or (h["service"].endswith("-events") and (h.get("detail") or {}).get("queue", "").startswith(f"{subscriber}_"))
    ]
    telling = [h for h in hops if h["event"] in _OUTCOMES]
    state = telling[-1]["event"] if telling else "pending"
    return {"subscriber": subscriber, "state": state, "at": telling[-1]["at"] if telling else None}
