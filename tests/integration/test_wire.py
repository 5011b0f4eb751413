"""The AMQP socket writes (esi.bus.wire): many publishes of one loop turn leave in one send, in order, all confirmed."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import aio_pika
import pytest

from esi.bus import wire
from esi.bus.publisher import Publisher
from esi.errors import TransientError
from esi.testing import Vhost


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many frames each send to the socket carried."""
    sizes: Counter[int] = Counter()
    flush = wire.CoalescingStreamWriter.flush

    def counting(self: wire.CoalescingStreamWriter) -> None:
        if self._pending:
            sizes[len(self._pending)] += 1
        flush(self)

    monkeypatch.setattr(wire.CoalescingStreamWriter, "flush", counting)
    return sizes


async def test_publishes_of_one_turn_leave_together_in_order_and_confirmed(vhost: Vhost, sends: Counter[int]) -> None:
    connection = await aio_pika.connect_robust(vhost.url, connection_class=wire.CoalescingConnection)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(
            f"wire-{uuid.uuid4().hex[:8]}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        publisher = Publisher(channel)
        sends.clear()
        await asyncio.gather(
            *(publisher.publish_raw("", queue.name, str(i).encode(), headers={"n": i}) for i in range(300))
        )
        # 300 publishes (each confirmed, or gather would have raised) in a handful of sends, not 300
        assert sum(sends.values()) <= 10, sends
        assert sum(n * count for n, count in sends.items()) == 300
        bodies = []
        async with queue.iterator() as messages:
            async for message in messages:
                bodies.append(int(message.body))
                await message.ack()
                if len(bodies) == 300:
                    break
        assert bodies == list(range(300))
    finally:
        await connection.close()


async def test_an_unroutable_publish_still_fails_among_good_ones(vhost: Vhost) -> None:
    connection = await aio_pika.connect_robust(vhost.url, connection_class=wire.CoalescingConnection)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(f"wire-{uuid.uuid4().hex[:8]}", auto_delete=True)
        publisher = Publisher(channel)
        results = await asyncio.gather(
            *(
                publisher.publish_raw("", queue.name if i != 5 else "no-such-queue", b"x", headers={})
                for i in range(10)
            ),
            return_exceptions=True,
        )
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [5]
        assert isinstance(results[5], TransientError)
        assert "NO_ROUTE" in str(results[5])
        await asyncio.wait_for(_until_count(queue, 9), 10)
    finally:
        await connection.close()


async def _until_count(queue: aio_pika.abc.AbstractQueue, count: int) -> None:
    while (await queue.declare()).message_count != count:
        await asyncio.sleep(0.05)


async def test_writes_wait_for_the_end_of_the_turn_and_close_sends_them_first() -> None:
    loop = asyncio.get_running_loop()
    received = bytearray()
    got = asyncio.Event()

    class Peer(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)
            got.set()

    server = await loop.create_server(Peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await wire.open_coalescing_connection("127.0.0.1", port)
        writer.write(b"a")
        writer.write(b"b")
        assert writer._pending == [b"a", b"b"]  # nothing sent yet: the turn is not over
        await asyncio.sleep(0)
        assert writer._pending == []  # sent at the end of the turn, as one
        await asyncio.wait_for(got.wait(), 5)
        writer.write(b"c")
        writer.close()  # flushed before the close, not dropped
        await writer.wait_closed()
        async with asyncio.timeout(5):
            while bytes(received) != b"abc":
                await asyncio.sleep(0.01)
    finally:
        server.close()
        await server.wait_closed()
