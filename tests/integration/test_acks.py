"""Acks of one loop turn leave together (`esi.bus.acks`), on a real quorum queue.

Each test takes ten deliveries in hand, finishes some of them in one loop turn, then closes the channel: the broker
requeues whatever was not acked, so the queue's count after the close says exactly which deliveries the acks
covered. A `multiple` ack that covered a delivery still in hand would lose it (count too low); an ack the broker did
not know would close the channel with an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from esi.bus.acks import AckBatcher
from esi.testing import Vhost

pytestmark = pytest.mark.integration

N = 10


@dataclass
class Held:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    queue: str
    messages: list[AbstractIncomingMessage]  # in delivery order: tags 1..N
    acks: AckBatcher

    async def left_after_close(self) -> list[bytes]:
        """Close the consume channel (the broker requeues what it still holds) and read what is in the queue."""
        await self.channel.close()
        channel = await self.connection.channel()
        queue = await channel.declare_queue(self.queue, passive=True)
        bodies = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            bodies.append(message.body)
        return sorted(bodies)


@pytest.fixture
async def held(vhost: Vhost) -> AsyncIterator[Held]:
    connection = await aio_pika.connect_robust(vhost.url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=N)
        queue = await channel.declare_queue("acks-test", durable=True, arguments={"x-queue-type": "quorum"})
        publisher = await connection.channel(publisher_confirms=True)
        for i in range(1, N + 1):
            await publisher.default_exchange.publish(aio_pika.Message(f"m{i:02d}".encode()), routing_key=queue.name)
        acks = AckBatcher()
        messages: list[AbstractIncomingMessage] = []
        all_in = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            acks.delivered(message)
            messages.append(message)
            if len(messages) == N:
                all_in.set()

        await queue.consume(take)
        await asyncio.wait_for(all_in.wait(), 10)
        assert [m.delivery_tag for m in messages] == list(range(1, N + 1))
        yield Held(connection, channel, queue.name, messages, acks)
    finally:
        await connection.close()


def _bodies(*numbers: int) -> list[bytes]:
    return sorted(f"m{i:02d}".encode() for i in numbers)


async def test_deliveries_finished_together_are_acked_by_one_frame(held: Held) -> None:
    await asyncio.gather(*(held.acks.ack(m) for m in held.messages))

    assert (held.acks.frames, held.acks.acked) == (1, N)
    assert await held.left_after_close() == []


async def test_a_delivery_in_hand_is_not_covered_by_the_acks_above_it(held: Held) -> None:
    fifth = held.messages[4]
    await asyncio.gather(*(held.acks.ack(m) for m in held.messages if m is not fifth))

    # 1-4 as one multiple ack; 6-10 one by one, since 5 is still in hand
    assert (held.acks.frames, held.acks.acked) == (6, N - 1)
    assert await held.left_after_close() == _bodies(5)


async def test_the_lowest_in_hand_holds_back_no_ack(held: Held) -> None:
    first = held.messages[0]
    await asyncio.gather(*(held.acks.ack(m) for m in held.messages[1:]))
    assert (held.acks.frames, held.acks.acked) == (N - 1, N - 1)

    await held.acks.ack(first)

    assert (held.acks.frames, held.acks.acked) == (N, N)
    assert await held.left_after_close() == []


async def test_acks_finished_over_several_turns_after_a_reject(held: Held) -> None:
    first, rest = held.messages[0], held.messages[1:]
    await first.reject(requeue=True)
    held.acks.settled(first)

    await asyncio.gather(*(held.acks.ack(m) for m in rest[:4]))  # one turn: 2-5
    await asyncio.gather(*(held.acks.ack(m) for m in rest[4:]))  # the next: 6-10

    assert (held.acks.frames, held.acks.acked) == (2, N - 1)
    # the channel is still open: no ack named a tag the broker did not hold
    assert not held.channel.is_closed
    # the rejected one went back to the queue (and was delivered again on this channel, then requeued by the close)
    assert await held.left_after_close() == _bodies(1)
