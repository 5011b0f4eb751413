"""Channels for short-lived work — a sample of the queues' depths, a pass over a dead-letter queue, an operator's
browse: plain channels, not robust ones.

A robust connection keeps every robust channel opened through it and restores each after a reconnect. One that ends
otherwise than by its own `close` — closed by the broker (a passive declare of a missing queue), or caught by a lost
connection half-way — is never let go: it is restored, fails, and is tried again at every reconnect after, with its
callbacks and buffers. The chaos run (seed 31, three nodes, 27 minutes) found it: the channels the CRM adapter tried
to restore at each reconnect grew from 3 to 68 and its memory from 203 to 255 MB. A plain channel belongs to the
connection it was opened on and ends with it; the long-lived channels (consuming, publishing) stay robust.

One more hold remains on a plain channel the broker closed: aio-pika (9.6) removes the channel's callback from its
connection's `closing` future only when the channel is closed by its own `close`, so every channel the broker
closed would stay referenced by the connection until the connection ends (tests/integration/test_channels.py counts
them: 700 callbacks after 20 samples of missing queues). `short_lived_channel` removes it when the channel closes,
however it closes.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection


async def short_lived_channel(
    connection: AbstractConnection, *, publisher_confirms: bool = False, on_return_raises: bool = False
) -> AbstractChannel:
    """A plain channel on `connection` (robust or not), open; close it when done (a lost connection closes it)."""
    channel = aio_pika.Channel(
        connection=connection, publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
    )
    await channel
    underlay = getattr(channel, "_channel", None)  # aio-pika's UnderlayChannel: the callback and the connection
    callback = getattr(underlay, "close_callback", None)
    closing = getattr(getattr(getattr(underlay, "channel", None), "connection", None), "closing", None)
    if callback is not None and closing is not None:

        def forget(*_: Any) -> None:
            closing.remove_done_callback(callback)

        channel.close_callbacks.add(forget)
    return channel
