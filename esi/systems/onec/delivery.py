"""Delivery into 1C: each event 1C subscribes to becomes one message for 1C, pushed to its HTTP service or kept in
its pull feed (`ONEC_DELIVERY`), with the id it keeps on every repeat (`X-Esi-Message-Id`).

What 1C receives (docs/1c.md):

    {"message_id": "...", "kind": "event", "source": "crm", "type": "order_changed", "key": "<the record's id>",
     "version": "<the source's version>", "event_id": "evt-crm-...", "timestamp": "...", "payload": {...}}
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import orjson
from pydantic import BaseModel

from esi.messages import Envelope, Handler
from esi.systems.onec.settings import OnecSettings
from esi.systems.spec import SystemContext


class Pusher(Protocol):
    async def deliver(self, message_id: str, message: dict[str, Any]) -> int: ...


class FeedStore(Protocol):
    async def append(
        self, subscriber: str, *, message_id: str, message_type: str, source: str, record_key: str | None, body: str
    ) -> bool: ...


def message_for(envelope: Envelope, key: str | None, version: str | None) -> dict[str, Any]:
    """What 1C receives for an event."""
    return {
        "message_id": envelope.message_id,
        "kind": "event",
        "source": envelope.source_system,
        "type": envelope.message_type,
        "key": key,
        "version": version,
        "event_id": envelope.request_id,
        "timestamp": envelope.timestamp.isoformat(),
        "payload": envelope.payload,
    }


def event_handlers(context: SystemContext) -> dict[str, Handler]:
    """One handler for every event 1C subscribes to: push it, or add it to the feed."""
    settings = cast(OnecSettings, context.settings)
    registry = context.registry
    code = context.system.code
    feed: FeedStore = context.store.feed
    pusher = cast(Pusher, context.client)

    async def deliver(envelope: Envelope, _payload: BaseModel | None) -> list[Envelope]:
        event = registry.event(envelope.source_system, envelope.message_type)
        key = envelope.payload.get(event.id_field)
        message = message_for(
            envelope, None if key is None else str(key), _text(envelope.payload.get(event.version_field))
        )
        if settings.delivery == "pull":
            await feed.append(
                code,
                message_id=envelope.message_id,
                message_type=envelope.message_type,
                source=envelope.source_system,
                record_key=message["key"],
                body=orjson.dumps(message).decode(),
            )
        else:
            await pusher.deliver(envelope.message_id, message)
        return []

    return {"*": deliver}


def _text(value: object) -> str | None:
    return None if value is None else str(value)
