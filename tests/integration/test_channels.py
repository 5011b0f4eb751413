"""Short-lived work opens plain channels, so a robust connection keeps nothing of it (esi.bus.channels).

Found by the chaos run (seed 31): a robust channel that the broker closed (a passive declare of a missing queue) or
that a lost connection caught was kept by the robust connection and tried again at every reconnect; the CRM
adapter's memory grew 203 → 255 MB over 27 minutes.
"""

from __future__ import annotations

import aio_pika
import pytest

from esi.bus.channels import short_lived_channel
from esi.bus.dead_letters import DeadLetters
from esi.bus.topology import build_topology
from esi.systems.registry import load_registry
from esi.testing import Vhost

pytestmark = pytest.mark.integration


def _kept(connection: aio_pika.RobustConnection) -> tuple[int, int]:
    """(robust channels the connection would restore, callbacks waiting on its transport's closing)."""
    tracked = len(connection._RobustConnection__channels)  # type: ignore[attr-defined]  # aio-pika's own set
    transport = connection.transport
    assert transport is not None
    return tracked, len(transport.connection.closing._callbacks)  # type: ignore[attr-defined]


async def test_depths_of_missing_queues_leave_nothing_on_the_robust_connection(vhost: Vhost) -> None:
    connection = await aio_pika.connect_robust(vhost.url)
    try:
        dead_letters = DeadLetters(connection, build_topology(load_registry().queues()))
        await dead_letters.depths()  # nothing declared in this vhost: every passive declare closes its channel
        before = _kept(connection)
        for _ in range(20):
            depths = await dead_letters.depths()
            assert all(v == 0 for counts in depths.values() for v in counts.values())
        assert _kept(connection) == before
        assert before[0] == 0  # no robust channel at all
        # a plain channel is usable like any other, and closing it lets it go
        channel = await short_lived_channel(connection, publisher_confirms=True)
        queue = await channel.declare_queue("", exclusive=True)
        assert queue.name
        await channel.close()
        assert _kept(connection) == before
    finally:
        await connection.close()
