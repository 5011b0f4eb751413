"""The connection to RabbitMQ: one robust connection per service, a confirm channel and a consume channel."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from esi.bus.failover import FailoverConnection, node_urls
from esi.bus.publisher import Publisher
from esi.bus.topology import Topology

log = logging.getLogger(__name__)


#: the longest one connection attempt may take (a node that does not answer at all, rather than refusing)
CONNECT_ATTEMPT_TIMEOUT = 10.0
#: the longest pause between two rounds of attempts while waiting for a first node at start-up
WAIT_MAX_DELAY = 10.0


class BrokerUnavailable(RuntimeError):
    """No node of the broker answered within the wait given to `Bus.open`."""


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class Bus:
    """A robust connection with the topology declared, a `Publisher` and a channel to consume on.

    aio-pika's robust connection reconnects by itself, to the next node of the cluster (`esi.bus.failover`), and
    restores channels, QoS, queues, bindings and consumers.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publish_channel: AbstractChannel,
        consume_channel: AbstractChannel,
        publisher: Publisher,
        topology: Topology,
    ) -> None:
        self.connection = connection
        self.publish_channel = publish_channel
        self.consume_channel = consume_channel
        self.publisher = publisher
        self.topology = topology

    @classmethod
    async def open(
        cls,
        url: str | Sequence[str],
        *,
        topology: Topology,
        prefetch: int = 200,
        publish_timeout: float = 10.0,
        name: str = "esi",
        ssl_context: ssl.SSLContext | None = None,
        wait: float = 0.0,
    ) -> Bus:
        """Connect to one of the nodes `url` names (a comma-separated list, or a list: `esi.bus.failover`).

        Every node is tried once, starting at a random one (a fleet's connections spread over the nodes). While none
        answers, keep trying for `wait` seconds (`math.inf`: for ever), each attempt to the next node, with one log
        line per attempt and a backoff between rounds (up to `WAIT_MAX_DELAY`); then raise `BrokerUnavailable`.
        """
        # aiormq takes the connection's name from the URL (client_properties are dropped when a URL is given)
        nodes = node_urls(url, name=name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        first = random.randrange(len(nodes))  # noqa: S311 - spreads connections over the nodes, not a secret
        attempt = 0
        while True:
            node = nodes[(first + attempt) % len(nodes)]
            try:
                connection = await aio_pika.connect_robust(
                    node,
                    reconnect_interval=1.0,
                    ssl_context=ssl_context,
                    timeout=CONNECT_ATTEMPT_TIMEOUT,
                    connection_class=FailoverConnection,
                    nodes=nodes,
                    first=first + attempt,
                )
                break
            except Exception as exc:
                attempt += 1
                delay = min(WAIT_MAX_DELAY, 0.5 * 2 ** (attempt // len(nodes))) if attempt % len(nodes) == 0 else 0.2
                problem = f"cannot connect to RabbitMQ at {redact(str(node))} ({type(exc).__name__}: {exc})"
                if attempt >= len(nodes) and loop.time() + delay > deadline:
                    raise BrokerUnavailable(
                        f"{problem}{' nor at any other node' if len(nodes) > 1 else ''}. "
                        "Is it running? Start it with: rabbitmq-server -detached"
                    ) from exc
                log.warning("%s; not ready, next attempt in %.1fs", problem, delay)
                await asyncio.sleep(delay)
        try:
            publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=prefetch)
            # on a plain channel of its own, closed after: a refused declare closes its channel (`QueueMismatch`),
            # and the durable topology needs no restoring after a reconnection
            declaring = await aio_pika.Channel(connection=connection, publisher_confirms=False)
            try:
                await topology.declare(declaring)
            finally:
                if not declaring.is_closed:
                    await declaring.close()
        except BaseException:
            await connection.close()
            raise
        publisher = Publisher(publish_channel, exchange=topology.exchange, timeout=publish_timeout)
        return cls(connection, publish_channel, consume_channel, publisher, topology)

    async def consume_channel_of_its_own(self, prefetch: int) -> AbstractChannel:
        """Another consume channel with its own prefetch (a second consumer, such as a subscriber's events queue:
        each consumer's acks are batched per channel, and one consumer's deliveries never wait for the other's)."""
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    @property
    def node(self) -> str:
        """The node this process is connected to (or trying), as host:port."""
        url = getattr(self.connection, "url", None)  # aio-pika's connections have one; its abstract class does not
        return f"{url.host}:{url.port}" if url is not None else "?"

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
