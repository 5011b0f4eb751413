"""The publisher across a lost connection and a channel closed by the broker.

A publish that finds its channel being restored waits for it (within the publish timeout) instead of failing: failing
at once made the deliveries of a consumer restored before the publish channel churn through reject and redelivery.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from esi.bus.connection import Bus
from esi.bus.consumer import REQUEUE_PAUSE_S, Consumer
from esi.bus.topology import build_topology
from esi.errors import TransientError
from esi.messages import Envelope
from esi.systems.registry import load_registry
from esi.testing import Vhost, rabbitmqctl

pytestmark = pytest.mark.integration


async def _cut_connections(vhost: Vhost) -> int:
    """Close every connection of `vhost` from the broker's side, as a broker restart or a network cut would."""
    listed = await asyncio.to_thread(rabbitmqctl, "list_connections", "pid", "vhost")
    pids = [line.split("\t")[0] for line in listed.splitlines() if line.endswith(f"\t{vhost.name}")]
    for pid in pids:
        await asyncio.to_thread(rabbitmqctl, "close_connection", pid, "test: connection cut")
    return len(pids)


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def _depth(bus: Bus, queue: str) -> int:
    declared = await bus.consume_channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def test_publishes_made_while_the_connection_is_down_wait_for_it_and_land(vhost: Vhost) -> None:
    bus = await Bus.open(
        vhost.url, topology=build_topology(load_registry().queues(), retry_delays=[1]), name="esi-test-reconnect"
    )
    try:
        await bus.publisher.publish_raw("", "dms_queue", b"before", headers={})
        # the connection is cut and, its user's access to the vhost withdrawn, cannot come back until it is restored
        await asyncio.to_thread(rabbitmqctl, "clear_permissions", "-p", vhost.name, "guest")
        assert await _cut_connections(vhost) == 1
        await _until(lambda: bus.publish_channel.is_closed, 10, "the client to see the connection gone")
        publishes = asyncio.gather(
            *(bus.publisher.publish_raw("", "dms_queue", str(i).encode(), headers={}) for i in range(50))
        )
        await asyncio.sleep(1.5)  # a reconnection attempt fails meanwhile; the publishes must neither land nor fail
        assert not publishes.done()
        await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*")
        await publishes  # each one confirmed, or this raises
        assert bus.connected
        assert await _depth(bus, "dms_queue") == 51
    finally:
        await bus.aclose()


async def test_after_the_broker_closes_the_channel_the_next_publishes_land(vhost: Vhost) -> None:
    bus = await Bus.open(
        vhost.url, topology=build_topology(load_registry().queues(), retry_delays=[1]), name="esi-test-channel-close"
    )
    try:
        # a publish to an exchange that does not exist: the broker answers by closing the channel (404)
        with pytest.raises(TransientError):
            await bus.publisher.publish_raw("no-such-exchange", "x", b"lost", headers={})
        await asyncio.gather(
            *(bus.publisher.publish_raw("", "dms_queue", str(i).encode(), headers={}) for i in range(20))
        )
        assert not bus.publish_channel.is_closed
        assert await _depth(bus, "dms_queue") == 20
    finally:
        await bus.aclose()


async def test_a_retry_that_cannot_be_parked_goes_back_to_its_queue_after_a_pause_and_is_never_lost(
    vhost: Vhost,
) -> None:
    topology = build_topology(load_registry().queues(), retry_delays=[0.2])
    queue = topology.queue_for("dms")
    bus = await Bus.open(vhost.url, topology=topology, name="esi-test-park")
    deliveries: list[float] = []

    async def unavailable(envelope: Envelope, payload: object) -> list[Envelope]:
        deliveries.append(time.monotonic())
        raise TransientError("the DMS is down", code="dms_down")

    consumer = Consumer(
        service="dms",
        queue=queue,
        channel=bus.consume_channel,
        publisher=bus.publisher,
        catalog=load_registry().catalog,
        handlers={"create_user": unavailable},
        max_attempts=2,
        queue_arguments=topology.work_queue_arguments(queue),
    )
    try:
        # the retry ladder's hold queue is gone: parking the failed delivery there is refused (unroutable)
        await bus.publish_channel.queue_delete(queue.retry_steps[0].queue)
        envelope = Envelope(
            message_id=uuid.uuid4().hex,
            request_id="PARK-1",
            source_system="1c",
            target_system="dms",
            message_type="create_user",
            timestamp=datetime.now(UTC),
            payload={"user_id": "U-PARK", "name": "Парковка", "email": "park@example.com"},
        )
        await bus.publisher.publish(envelope, "1c.request.dms.create_user")
        await consumer.start()
        await _until(lambda: len(deliveries) >= 3, 15, "the delivery to come back twice")
        gaps = [b - a for a, b in itertools.pairwise(deliveries)]
        assert min(gaps) >= REQUEUE_PAUSE_S * 0.9, gaps  # held before going back, not churned
        # the hold queue is back: the next failure is parked, comes back, fails a second time and is dead-lettered
        await topology.declare(bus.publish_channel)
        await _until(lambda: not consumer.in_flight and len(deliveries) >= 4, 20, "the last attempt")
        dead = await bus.consume_channel.declare_queue(queue.dead_letter_queue, passive=True)
        message = await _get(dead)
        assert message.message_id == envelope.message_id
        assert message.headers["x-esi-error-code"] == "dms_down"
        assert message.headers["x-esi-attempts"] == 2
    finally:
        await consumer.stop(5)
        await bus.aclose()


async def _get(queue: AbstractQueue) -> AbstractIncomingMessage:
    deadline = time.monotonic() + 10
    while (message := await queue.get(fail=False, no_ack=True)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing arrived in {queue.name}")
        await asyncio.sleep(0.05)
    return message
