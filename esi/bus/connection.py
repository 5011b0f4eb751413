"""The connection to RabbitMQ: one robust connection per service, a confirm channel and a consume channel."""

from __future__ import annotations

import asyncio
import logging
import ssl
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from yarl import URL

from esi.bus.publisher import Publisher
from esi.bus.topology import Topology
from esi.bus.wire import CoalescingConnection

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker did not answer the first connect."""


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class Bus:
    """A robust connection with the topology declared, a `Publisher` and a channel to consume on.

    aio-pika's robust connection reconnects by itself and restores channels, QoS, queues, bindings and consumers.
    """

    def __init__(self, connection: AbstractRobustConnection, publish_channel: AbstractChannel,
                 consume_channel: AbstractChannel, publisher: Publisher, topology: Topology) -> None:
        self.connection = connection
        self.publish_channel = publish_channel
        self.consume_channel = consume_channel
        self.publisher = publisher
        self.topology = topology

    @classmethod
    async def open(cls, url: str, *, topology: Topology, prefetch: int = 200, publish_timeout: float = 10.0,
                   name: str = "esi", ssl_context: ssl.SSLContext | None = None) -> Bus:
        # aiormq takes the connection's name from the URL (client_properties are dropped when a URL is given)
        named = str(URL(url).update_query(name=name))
        try:
            connection = await aio_pika.connect_robust(named, reconnect_interval=1.0, ssl_context=ssl_context,
                                                      connection_class=CoalescingConnection)
        except Exception as exc:
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {redact(url)} ({type(exc).__name__}: {exc}). "
                "Is it running? Start it with: rabbitmq-server -detached"
            ) from exc
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=prefetch)
        await topology.declare(publish_channel)
        publisher = Publisher(publish_channel, exchange=topology.exchange, timeout=publish_timeout)
        return cls(connection, publish_channel, consume_channel, publisher, topology)

    @property
    def connected(self) -> bool:
        return not (self.connection.is_closed or self.connection.reconnecting or self.publish_channel.is_closed)

    async def check(self) -> None:
        if not self.connected:
            raise ConnectionError("not connected to RabbitMQ")

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), 10)
        except TimeoutError:
            log.warning("the broker connection did not close within 10 s; leaving it")

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
