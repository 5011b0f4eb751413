"""Pushing a message to 1C: `POST <ONEC_BASE_URL>/messages`, the 1C HTTP service of docs/1c.md.

Each message carries `X-Esi-Message-Id`, the same on every repeat: the service records the ids it handled and
answers a repeat without doing it twice. HTTP failures become esi's errors here (`esi.systems.http`): 5xx, 429 and
timeouts are worth retrying, the rest are permanent.
"""

from __future__ import annotations

from typing import Any

from esi.systems.http import error_for_status, http_client, translate_transport_errors

MESSAGE_ID_HEADER = "X-Esi-Message-Id"
#: the statuses that mean 1C holds the message: taken now (200, 201, 204) or taken before (208)
_TAKEN = frozenset({200, 201, 202, 204, 208})


class OnecClient:
    def __init__(
        self,
        *,
        base_url: str,
        username: str | None,
        password: str | None,
        timeout: float,
        ca_bundle: str | None = None,
        max_connections: int = 32,
        push: bool = True,
    ) -> None:
        self._push = push
        self._http = http_client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            ca_bundle=ca_bundle,
            max_connections=max_connections,
            auth=(username, password or "") if username else None,
        )

    async def deliver(self, message_id: str, message: dict[str, Any]) -> int:
        """POST one message to 1C; its status (1C holds it). Raises esi's errors otherwise."""
        with translate_transport_errors("1c", "deliver"):
            response = await self._http.post("/messages", json=message, headers={MESSAGE_ID_HEADER: message_id})
        if response.status_code not in _TAKEN:
            raise error_for_status(response, system="1c", operation="deliver")
        return response.status_code

    async def check(self) -> None:
        """Readiness: `GET /ping` of the HTTP service (push only: in pull mode esi calls nothing in 1C)."""
        if not self._push:
            return
        with translate_transport_errors("1c", "check"):
            response = await self._http.get("/ping")
        if not response.is_success:
            raise error_for_status(response, system="1c", operation="check")

    async def aclose(self) -> None:
        await self._http.aclose()
