"""The socket under the AMQP connection: frames written in one turn of the event loop leave in one `send`.

aiormq writes every frame (a publish, an ack) to the socket on its own, and on loopback each `send` costs the sender
the whole delivery through the kernel (a tenth of a service's CPU: docs/performance.md). This transport buffers what
is written during one turn of the loop and sends it at the end of that turn (`call_soon`), in order. Nothing waits
longer than the rest of the current turn; `close` and `write_eof` send what is buffered first; flow control is the
transport's own (`drain` still waits while the socket is paused).

aio-pika takes no transport factory of its own, so `CoalescingConnection` hands one to aiormq.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aiormq.exceptions import AMQPConnectionError
from yarl import URL


class CoalescingStreamWriter(asyncio.StreamWriter):
    """A `StreamWriter` whose writes of one loop turn go to the transport as one."""

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flush_loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data))
        if self._flush_handle is None:
            self._flush_handle = self._flush_loop.call_soon(self.flush)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Hand everything buffered to the transport now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self.transport.is_closing():
            super().write(data)
        # else the connection is gone and these frames with it: their publishes are never confirmed, so their
        # callers see the failure and retry, as with frames lost in the socket

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


async def open_coalescing_connection(
    host: str | None, port: int | None, *, ssl: Any = None, **kwargs: Any
) -> tuple[asyncio.StreamReader, CoalescingStreamWriter]:
    """`asyncio.open_connection`, with a `CoalescingStreamWriter`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    # typeshed's overloads want a str host and an int port; asyncio's own signature takes None for both
    transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl, **kwargs)  # type: ignore[arg-type]
    return reader, CoalescingStreamWriter(transport, protocol, reader, loop)


class CoalescingTransportFactory(aiormq.TransportFactory):
    """aiormq's TCP and TLS factories, opening a `CoalescingStreamWriter`.

    `choose`, when given, names the node each connection attempt goes to (`esi.bus.failover`): its host and port
    replace the URL's, whose vhost, credentials and options are the same for every node.
    """

    def __init__(self, choose: Callable[[], URL] | None = None) -> None:
        self._choose = choose

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._choose is not None:
            url = self._choose()
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider is not None else None
        try:
            return await open_coalescing_connection(url.host, url.port, ssl=ssl, **kwargs)
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc


#: aiormq bounds the frames waiting for its writer at 10 per connection, and a publisher blocked on that bound holds
#: its channel's lock: past ten publishes in one turn, the rest went out one per turn. aiormq reads this class
#: attribute when it creates a connection, and offers no other way to set it. The socket's own flow control
#: (`drain`) still holds the writer back, and what can be in flight is bounded by our callers (prefetch, the relay's
#: batch).
WRITE_QUEUE_FRAMES = 1024


class CoalescingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, on a `CoalescingTransportFactory` (pass as `connection_class`)."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop, **kwargs)
        aiormq.Connection.FRAME_BUFFER_SIZE = max(aiormq.Connection.FRAME_BUFFER_SIZE, WRITE_QUEUE_FRAMES)
        # handed by aio-pika to aiormq.connect, whose Connection takes it (aio-pika filters its own kwargs)
        self.kwargs["transport_factory"] = CoalescingTransportFactory()
