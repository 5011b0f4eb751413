"""Declaring the topology on a broker that already has it: harmless when it agrees, a clear error when a queue was
created with other arguments (an earlier version's classic queues), and a work queue without the group size kept."""

from __future__ import annotations

import aio_pika
import pytest

from esi.bus.connection import Bus
from esi.bus.topology import GROUP_SIZE_ARGUMENT, QueueMismatch, build_topology
from esi.systems.registry import load_registry
from esi.testing import Vhost

pytestmark = pytest.mark.integration


async def test_declaring_twice_is_harmless(vhost: Vhost) -> None:
    for _ in range(2):
        bus = await Bus.open(vhost.url, topology=build_topology(load_registry().queues()))
        await bus.aclose()


async def test_a_classic_dead_letter_queue_of_an_earlier_version_is_a_clear_error(vhost: Vhost) -> None:
    connection = await aio_pika.connect(vhost.url)
    channel = await connection.channel()
    await channel.declare_queue("dms_dead_letter_queue", durable=True, arguments={"x-queue-type": "classic"})
    await connection.close()
    with pytest.raises(QueueMismatch, match=r"dms_dead_letter_queue.*Migrating queues to quorum"):
        await Bus.open(vhost.url, topology=build_topology(load_registry().queues()))


async def test_a_work_queue_created_without_the_group_size_is_used_as_it_is(vhost: Vhost) -> None:
    topology = build_topology(load_registry().queues())
    work = topology.queue_for("dms")
    earlier = {k: v for k, v in topology.work_queue_arguments(work).items() if k != GROUP_SIZE_ARGUMENT}
    connection = await aio_pika.connect(vhost.url)
    channel = await connection.channel()
    await channel.declare_queue(work.name, durable=True, arguments=earlier)
    await connection.close()
    bus = await Bus.open(vhost.url, topology=topology)
    try:
        assert topology.work_queue_arguments(work) == earlier  # what the consumer re-declares it with
        queue = await bus.consume_channel.declare_queue(
            work.name, durable=True, arguments=topology.work_queue_arguments(work)
        )
        assert queue.declaration_result.message_count == 0
    finally:
        await bus.aclose()


async def test_a_work_queue_differing_in_more_than_the_group_size_is_refused(vhost: Vhost) -> None:
    topology = build_topology(load_registry().queues())
    work = topology.queue_for("crm")
    earlier = {k: v for k, v in topology.work_queue_arguments(work).items() if k != GROUP_SIZE_ARGUMENT}
    connection = await aio_pika.connect(vhost.url)
    channel = await connection.channel()
    await channel.declare_queue(work.name, durable=True, arguments={**earlier, "x-delivery-limit": 3})
    await connection.close()
    with pytest.raises(QueueMismatch, match=r"crm_queue.*x-delivery-limit"):
        await Bus.open(vhost.url, topology=topology)
