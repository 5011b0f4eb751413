"""A topology as a RabbitMQ definitions document (the management plugin's export format), for `esi topology export`.

The document holds exactly what `Topology.declare` declares: the declaration runs against a channel that records
instead of talking to a broker, with aio-pika's defaults for what is not said. `deploy/rabbitmq/definitions.json` is
this document for the default settings; a test keeps it so.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel

    from esi.bus.topology import Topology

__all__ = ["VHOST", "definitions", "render"]

VHOST = "/"


class _RecordingExchange:
    def __init__(self, name: str) -> None:
        self.name = name


class _RecordingQueue:
    def __init__(self, name: str, bindings: list[dict[str, Any]]) -> None:
        self.name = name
        self._bindings = bindings

    async def bind(
        self,
        exchange: Any,
        routing_key: str | None = None,
        *,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aio-pika's own signature, recorded and ignored
    ) -> None:
        source = exchange if isinstance(exchange, str) else exchange.name
        self._bindings.append(
            {
                "source": source,
                "vhost": VHOST,
                "destination": self.name,
                "destination_type": "queue",
                "routing_key": routing_key if routing_key is not None else self.name,
                "arguments": dict(arguments or {}),
            }
        )


class _RecordingChannel:
    """Stands in for an aio-pika channel and records what is declared, with aio-pika's defaults for what is not said."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.queues: list[dict[str, Any]] = []
        self.bindings: list[dict[str, Any]] = []

    async def declare_exchange(
        self,
        name: str,
        type: Any = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aio-pika's own signature, recorded and ignored
    ) -> _RecordingExchange:
        if passive:
            raise ValueError(f"exchange {name}: a passive declare declares nothing")
        self.exchanges.append(
            {
                "name": name,
                "vhost": VHOST,
                "type": getattr(type, "value", type),
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": dict(arguments or {}),
            }
        )
        return _RecordingExchange(name)

    async def declare_queue(
        self,
        name: str | None = None,
        *,
        durable: bool = False,
        exclusive: bool = False,
        passive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aio-pika's own signature, recorded and ignored
    ) -> _RecordingQueue:
        if not name:
            raise ValueError("a server-named queue cannot be in a definitions file")
        if passive or exclusive:
            raise ValueError(f"queue {name}: passive and exclusive queues cannot be in definitions")
        self.queues.append(
            {
                "name": name,
                "vhost": VHOST,
                "durable": durable,
                "auto_delete": auto_delete,
                "arguments": dict(arguments or {}),
            }
        )
        return _RecordingQueue(name, self.bindings)


def definitions(topology: Topology) -> dict[str, Any]:
    """RabbitMQ definitions (the export format) declaring exactly what `topology.declare` declares.

    Call it outside an event loop: the declaration runs in one of its own.
    """
    channel = _RecordingChannel()
    asyncio.run(topology.declare(cast("AbstractChannel", channel)))
    return {
        # no users and no permissions: the broker creates its user from RABBITMQ_DEFAULT_USER (see rabbitmq.conf)
        "users": [],
        "vhosts": [{"name": VHOST}],
        "permissions": [],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": channel.queues,
        "exchanges": channel.exchanges,
        "bindings": channel.bindings,
    }


def render(document: dict[str, Any]) -> str:
    """The document as the file holds it: indented by two, non-ASCII kept, one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
