"""Acks of one loop turn leave together: a run of finished deliveries as one `basic.ack` with `multiple`.

Delivery tags grow one by one on a channel, and `multiple=True` acks every unsettled delivery up to the tag. So the
finished deliveries below the lowest delivery still being handled can go as one ack; each finished one above it
goes alone, so that nothing finished waits behind a slow message (the prefetch counts it until it is acked).
A delivery is acked only after its consumer asked for it, as before: the batch only waits for the end of the
loop turn.

The consume channel must carry one `Consumer` alone: a `multiple` ack would settle any delivery on the channel,
tracked or not. A delivery settled otherwise (rejected back to its queue) is told to `settled`.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import AbstractChannel


class _Channel:
    __slots__ = ("channel", "finished", "frames", "sender", "unsettled")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        #: delivery tags handed to the consumer and not yet acked or rejected
        self.unsettled: set[int] = set()
        #: tag → the future of the consumer waiting for its ack
        self.finished: dict[int, asyncio.Future[None]] = {}
        #: acks decided and not yet queued on the channel, in order: (tag, multiple, futures of the tags covered)
        self.frames: list[tuple[int, bool, list[asyncio.Future[None]]]] = []
        self.sender: asyncio.Task[None] | None = None


class AckBatcher:
    """Per consume channel: which deliveries are in hand, which are finished, and the acks of each loop turn."""

    def __init__(self) -> None:
        self._channels: dict[int, _Channel] = {}
        self._flush_scheduled = False
        #: deliveries acked, and the `basic.ack` frames that carried them
        self.acked = 0
        self.frames = 0

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """A delivery reached the consumer: it is in hand until acked or `settled`."""
        if message.delivery_tag is not None:
            self._state(message.channel).unsettled.add(message.delivery_tag)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """A delivery was rejected, and the reject written: it no longer holds back the acks above it. (Told
        before the reject is written, a `multiple` ack could overtake the reject and settle the delivery.)"""
        state = self._channels.get(id(message.channel))
        if state is not None and state.channel is message.channel and message.delivery_tag is not None:
            state.unsettled.discard(message.delivery_tag)

    def ack(self, message: AbstractIncomingMessage) -> asyncio.Future[None]:
        """Ack `message` with the other acks of this loop turn; the future is done once its frame is queued on
        the channel, in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        tag = message.delivery_tag
        if tag is None:
            future.set_result(None)
            return future
        state = self._state(message.channel)
        state.unsettled.add(tag)
        state.finished[tag] = future
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _state(self, channel: AbstractChannel) -> _Channel:
        state = self._channels.get(id(channel))
        if state is None or state.channel is not channel:
            state = self._channels[id(channel)] = _Channel(channel)
        return state

    def _flush(self) -> None:
        self._flush_scheduled = False
        for key, state in list(self._channels.items()):
            if state.finished:
                self._decide(state)
                if state.sender is None or state.sender.done():
                    state.sender = asyncio.create_task(self._send(state))
            elif not state.frames and getattr(state.channel, "is_closed", False):
                del self._channels[key]  # a channel of a lost connection: its deliveries come again on another

    @staticmethod
    def _decide(state: _Channel) -> None:
        """The frames for the finished deliveries: one `multiple` ack for those below the lowest delivery still in
        hand, one ack each for those above it. Decided now, in order with what was decided before."""
        finished, state.finished = state.finished, {}
        tags = sorted(finished)
        state.unsettled.difference_update(tags)
        floor = min(state.unsettled) if state.unsettled else None
        run = tags if floor is None else [tag for tag in tags if tag < floor]
        if run:
            state.frames.append((run[-1], len(run) > 1, [finished[tag] for tag in run]))
        state.frames.extend((tag, False, [finished[tag]]) for tag in tags[len(run) :])

    async def _send(self, state: _Channel) -> None:
        """Queue the decided frames on the channel one after another (one sender per channel keeps their order:
        a `multiple` ack must not overtake a single ack of a tag below it).

        Queued, not waited until the socket took them: waiting for the last frame of each batch cost throughput
        (docs/performance.md). An ack queued but never written (the process died) only means a redelivery,
        which the inbox absorbs, as for an ack written but never read by the broker."""
        while state.frames:
            tag, multiple, futures = state.frames.pop(0)
            try:
                await state.channel.basic_ack(delivery_tag=tag, multiple=multiple, wait=False)
            except Exception as exc:  # noqa: BLE001 - the channel is gone: the broker redelivers these, the inbox absorbs them
                outcome: BaseException | None = exc
            else:
                outcome = None
                self.frames += 1
                self.acked += len(futures)
            for future in futures:
                if not future.done():
                    future.set_result(None) if outcome is None else future.set_exception(outcome)
