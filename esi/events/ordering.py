"""Order per record: a subscriber never ends with an older version of a record after a newer one.

The choice (docs/events.md, "Order per record"): a stale change is dropped and marked `superseded` in its timeline,
rather than holding later changes behind an earlier one that is being retried. Each subscriber keeps the version of
each record it was last given (`esi_event_versions`); a change older than that is acknowledged without being handed
over. Changes of one record are handed over one at a time in a process (a lock per record), so that the check and
the hand-over are not interleaved by a second change of the same record; a change that fails and is retried later
meets the newer version that overtook it and is superseded then.

Why not wait: holding every later change of a key behind one being retried needs a per-key queue (RabbitMQ has
none), and a subscriber wants the record's state, not its history. A subscriber that needs every change in between
(an audit trail) reads the source's history instead; the event names its version for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from esi import metrics
from esi.events.identity import version_key
from esi.messages import Envelope, Handler
from esi.systems.registry import Registry


class GivenVersions(Protocol):
    """What each subscriber was given (`esi.store.event_log.EventLog`)."""

    async def given_version(self, subscriber: str, stream: str, record_id: str) -> tuple[str, str] | None: ...

    async def record_given(
        self, subscriber: str, stream: str, record_id: str, version: str, message_id: str
    ) -> None: ...


class Timeline(Protocol):
    def record(
        self, request_id: str | None, event: str, *, service: str, message_id: str | None = None,
        message_type: str | None = None, **detail: Any,
    ) -> None: ...  # fmt: skip


class _Locks:
    """A lock per record, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, key: str) -> asyncio.Lock:
        lock, users = self._held.get(key, (asyncio.Lock(), 0))
        self._held[key] = (lock, users + 1)
        await lock.acquire()
        return lock

    def release(self, key: str) -> None:
        lock, users = self._held[key]
        lock.release()
        if users <= 1:
            del self._held[key]
        else:
            self._held[key] = (lock, users - 1)


def in_order(
    subscriber: str,
    handlers: Mapping[str, Handler],
    *,
    registry: Registry,
    versions: GivenVersions,
    timeline: Timeline,
    service: str,
) -> dict[str, Handler]:
    """`subscriber`'s event handlers (by event type), each behind the version check, recording each hand-over."""
    locks = _Locks()

    def wrap(handler: Handler) -> Handler:
        async def ordered(envelope: Envelope, payload: BaseModel | None) -> list[Envelope]:
            event = registry.event(envelope.source_system, envelope.message_type)
            record_id = str(envelope.payload.get(event.id_field))
            version = version_key(envelope.payload.get(event.version_field))
            stream = f"{envelope.source_system}.{event.stream}"
            key = f"{stream}:{record_id}"
            detail = {"subscriber": subscriber, "record_id": record_id, "version": version}
            await locks(key)
            try:
                given = await versions.given_version(subscriber, stream, record_id)
                if given is not None and given[0] > version:
                    timeline.record(
                        envelope.request_id,
                        "superseded",
                        service=service,
                        message_id=envelope.message_id,
                        message_type=envelope.message_type,
                        newer=given[0],
                        **detail,
                    )
                    metrics.DELIVERIES.labels(subscriber, "superseded").inc()
                    return []
                try:
                    outgoing = await handler(envelope, payload)
                except BaseException:
                    metrics.DELIVERIES.labels(subscriber, "failed").inc()
                    raise
                await versions.record_given(subscriber, stream, record_id, version, envelope.message_id)
            finally:
                locks.release(key)
            timeline.record(
                envelope.request_id,
                "delivered",
                service=service,
                message_id=envelope.message_id,
                message_type=envelope.message_type,
                **detail,
            )
            metrics.DELIVERIES.labels(subscriber, "delivered").inc()
            return outgoing

        return ordered

    return {event_type: wrap(handler) for event_type, handler in handlers.items()}
