"""Several broker nodes behind one robust connection: each connection attempt goes to the next node in turn.

aio-pika's robust connection takes one URL. `FailoverConnection` keeps it and everything it restores after a
reconnection (channels, QoS, exchanges, queues, bindings, consumers) and changes only where each attempt goes: the
transport factory asks `next_node` for the node, so the attempt after a lost connection (or a failed attempt) goes
to the next node of the list, round robin. Publishes whose confirm was in flight on the lost connection fail
(`esi.bus.publisher` raises `TransientError`): their callers publish them again (the outbox relay, the consumer's
retry), and the inbox absorbs a message that had in fact arrived.

Every node's URL must name the same vhost, credentials, scheme and options: only host and port may differ.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from yarl import URL

from esi.bus.wire import CoalescingConnection, CoalescingTransportFactory

log = logging.getLogger(__name__)


def node_urls(urls: str | Sequence[str], *, name: str | None = None) -> list[URL]:
    """The nodes' URLs (a comma-separated string or a list), checked to differ only in host and port; with `name`,
    the connection's name added to each (aiormq takes it from the URL)."""
    parts = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else [u.strip() for u in urls]
    nodes = [URL(u) for u in parts if u]
    if not nodes:
        raise ValueError("no AMQP URL given")
    first = nodes[0]
    for node in nodes[1:]:
        if (node.scheme, node.user, node.password, node.path, node.query) != (
            first.scheme,
            first.user,
            first.password,
            first.path,
            first.query,
        ):
            raise ValueError(
                "the AMQP URLs of a cluster's nodes may differ only in host and port (same scheme, "
                f"credentials, vhost and options): {node.with_password(None)} differs from "
                f"{first.with_password(None)}"
            )
    if name is not None:
        nodes = [node.update_query(name=name) for node in nodes]
    return nodes


class FailoverConnection(CoalescingConnection):
    """A robust connection over several nodes (pass as `connection_class`, with `nodes=` and `first=`)."""

    def __init__(
        self,
        url: URL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        nodes: Sequence[URL] = (),
        first: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, loop, **kwargs)
        self.nodes: tuple[URL, ...] = tuple(nodes) or (self.url,)
        #: the node of the next attempt; random by default, so that a fleet's connections spread over the nodes
        self._next = random.randrange(len(self.nodes)) if first is None else first % len(self.nodes)  # noqa: S311 - spreads connections over the nodes, not a secret
        self.kwargs["transport_factory"] = CoalescingTransportFactory(choose=self.next_node)

    def next_node(self) -> URL:
        """The node this connection attempt goes to; the following attempt goes to the next one."""
        node = self.nodes[self._next % len(self.nodes)]
        self._next += 1
        if len(self.nodes) > 1 and node != self.url:
            log.info("connecting to RabbitMQ node %s:%s", node.host, node.port)
        self.url = node  # what this connection reports (its logs, `Bus.node`)
        return node
