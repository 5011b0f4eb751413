"""The event sink: where an event enters esi, from a webhook (`POST /events/{source}/{type}`) or from esi's own
code (the Creatio poller), the same way.

`emit` validates the payload against the event's model, derives its id from (source, type, record id, version),
writes the event log row and its outbox row in one transaction (`EventLog.take`: a repeat of the same change writes
nothing and returns False), and hands the committed row to the outbox relay, which publishes it with confirms as it
publishes requests. Once `emit` returns, the event is durable: the relay's sweep publishes whatever the fast path
could not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from esi import metrics
from esi.errors import InvalidMessage
from esi.events.identity import event_id, message_id, record_key, version_key
from esi.messages import Envelope, Kind
from esi.messages.envelope import describe_validation_error
from esi.store.records import OutboxRow
from esi.systems.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["EventLogPort", "EventSink"]


class EventLogPort(Protocol):
    """What the sink needs of the store (`esi.store.event_log.EventLog`)."""

    async def take(
        self,
        *,
        event_id: str,
        message_id: str,
        source: str,
        event_type: str,
        record_id: str,
        version: str,
        keys: list[str],
        via: str,
        routing_key: str,
        body: bytes,
    ) -> bool: ...


class Timeline(Protocol):
    def record(self, request_id: str | None, event: str, *, service: str, **detail: Any) -> None: ...


class EventSink:
    """Takes events in: `await sink.emit("crm", "order_changed", {...})` → True when new, False for a repeat."""

    def __init__(
        self,
        *,
        registry: Registry,
        log: EventLogPort,
        on_accepted: Callable[[OutboxRow], None],
        timeline: Timeline | None = None,
        via: str = "esi",
    ) -> None:
        self._registry = registry
        self._log = log
        self._on_accepted = on_accepted
        self._timeline = timeline
        self._via = via

    def via(self, name: str) -> EventSink:
        """The same sink, recording events as handed over by `name` (`webhook`, `poller`)."""
        return EventSink(
            registry=self._registry, log=self._log, on_accepted=self._on_accepted, timeline=self._timeline, via=name
        )

    def envelope(self, source: str, type: str, payload: Mapping[str, object]) -> tuple[Envelope, str, str]:
        """The event's envelope, its record id and its version key; `InvalidMessage` naming what is wrong."""
        try:
            event = self._registry.event(source, type)
        except KeyError as exc:
            raise InvalidMessage(str(exc.args[0]), code="unknown_event") from None
        try:
            model = event.model.model_validate(dict(payload))
        except ValidationError as exc:
            raise InvalidMessage(
                f"invalid {source} {type} event: {describe_validation_error(exc)}", code="invalid_payload"
            ) from exc
        data = model.model_dump(mode="json", by_alias=True)
        record_id, raw_version = data.get(event.id_field), data.get(event.version_field)
        if record_id in (None, ""):
            raise InvalidMessage(
                f"{source} {type}: the record id {event.id_field!r} is missing", code="invalid_payload"
            )
        try:
            version = version_key(raw_version)
        except ValueError as exc:
            raise InvalidMessage(f"{source} {type}: {event.version_field}: {exc}", code="invalid_payload") from None
        spec = self._registry.catalog.get(type)
        record_id = record_key(record_id)
        ident = event_id(source, type, record_id, version)
        envelope = Envelope(
            schema_version=spec.version,
            message_id=message_id(ident),
            request_id=ident,
            source_system=source,
            target_system=source,
            message_type=type,
            payload=data,
        )
        return envelope, record_id, version

    async def emit(self, source: str, type: str, payload: Mapping[str, object]) -> bool:
        """Take one event: True when it is new (stored, and handed to the relay), False for a repeat of a change
        already taken. Raises `InvalidMessage` for an unknown event or a payload its model refuses."""
        envelope, record_id, version = self.envelope(source, type, payload)
        event = self._registry.event(source, type)
        routing_key = envelope.routing_key(Kind.EVENT)
        body = envelope.encode()
        keys = [str(envelope.payload[f]) for f in event.key_fields if envelope.payload.get(f) not in (None, "")]
        new = await self._log.take(
            event_id=envelope.request_id,
            message_id=envelope.message_id,
            source=source,
            event_type=type,
            record_id=record_id,
            version=version,
            keys=[record_id, *keys],
            via=self._via,
            routing_key=routing_key,
            body=body,
        )
        metrics.EVENTS_TAKEN.labels(source, type, "new" if new else "duplicate").inc()
        if not new:
            log.info("%s %s of %s version %s taken before: nothing published", source, type, record_id, version)
            return False
        if self._timeline is not None:
            self._timeline.record(
                envelope.request_id,
                "event_received",
                service=self._via,
                message_id=envelope.message_id,
                message_type=type,
                record_id=record_id,
                version=version,
                subscribers=list(self._registry.subscribers(source, type)),
            )
        self._on_accepted(
            OutboxRow(
                message_id=envelope.message_id, request_id=envelope.request_id, routing_key=routing_key, body=body
            )
        )
        return True
