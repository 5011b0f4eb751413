"""The confirmed publisher: every publish is persistent, mandatory and waits for the broker's confirm."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError
from aiormq import spec

from esi import tracing
from esi.bus.headers import ATTEMPT_HEADER
from esi.errors import TransientError
from esi.messages import Envelope

log = logging.getLogger(__name__)

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def envelope_properties(
    message_id: str, request_id: str, message_type: str, headers: dict[str, Any]
) -> spec.Basic.Properties:
    """The AMQP properties of an envelope's message: persistent, JSON, its ids in the standard fields. Built as
    aio-pika's `Message.properties` builds them, without the `Message` (whose guarded attributes cost a tenth of
    a publish)."""
    return spec.Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=PERSISTENT,
        message_id=message_id,
        correlation_id=request_id,
        message_type=message_type,
        timestamp=datetime.now(UTC),
        app_id="esi",
        headers=headers,
    )


class Publisher:
    """Publishes on one channel opened with publisher confirms and `on_return_raises`.

    Many publishes may be in flight at once; each `publish` returns only once the broker confirmed the message,
    and raises `TransientError` if the broker refused it, returned it as unroutable, or did not answer in time.
    """

    def __init__(self, channel: AbstractChannel, *, exchange: str = "main_exchange", timeout: float = 10.0) -> None:
        self._channel = channel
        self._exchange_name = exchange
        self._timeout = timeout

    async def publish(self, envelope: Envelope, routing_key: str, *, headers: Mapping[str, Any] | None = None) -> None:
        """Publish an envelope to the main exchange and wait for its confirm."""
        message_headers: dict[str, Any] = {ATTEMPT_HEADER: 1, **(headers or {})}
        body = envelope.encode()
        if tracing.enabled:  # a PRODUCER span, its context carried in the headers (esi.tracing)
            with tracing.publishing(
                self._exchange_name, routing_key, envelope.message_id, request_id=envelope.request_id
            ):
                tracing.inject(message_headers)
                await self.publish_message(
                    self._exchange_name,
                    routing_key,
                    body,
                    envelope_properties(
                        envelope.message_id, envelope.request_id, envelope.message_type, message_headers
                    ),
                )
            return
        await self.publish_message(
            self._exchange_name,
            routing_key,
            body,
            envelope_properties(envelope.message_id, envelope.request_id, envelope.message_type, message_headers),
        )

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish bytes as they are (a retry or a dead letter keeps the original body byte for byte)."""
        props = dict(properties or {})
        props.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        message = aio_pika.Message(body, headers=dict(headers), **props)
        await self.publish_message(exchange, routing_key, message.body, message.properties)

    async def publish_message(
        self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> None:
        try:
            # bounded here, inline, and not by aio-pika's `timeout`: that one does not cover a publish caught in a
            # reconnection (seen: stuck for minutes across a broker restart), and aiormq runs each step of a publish
            # under it (the channel lock on entry and exit, the write queue, the confirm) through wait_for: four
            # tasks per publish
            async with asyncio.timeout(self._timeout):
                if self._channel.is_closed:
                    await self._until_restored()
                # aiormq's Channel, whose basic_publish takes `wait` (its abstract class does not say so)
                channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
                # aiormq's own publish, as aio-pika's Exchange.publish makes it, but with wait=False: the channel's
                # lock is then held only while the frames are queued (delivery tags stay in order), not until
                # the socket took them, so the publishes of one loop turn leave together (esi.bus.wire); the
                # confirm is awaited all the same
                confirmation = await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True, wait=False
                )
        except (DeliveryError, PublishError) as exc:
            raise TransientError(
                f"broker refused the publish to {exchange or '(default)'}/{routing_key}: {exc}", code="publish_refused"
            ) from exc
        except TimeoutError as exc:
            raise TransientError(
                f"no confirm for the publish to {exchange or '(default)'}/{routing_key} within {self._timeout}s "
                "(the broker is slow, or the connection is still being restored)",
                code="publish_timeout",
            ) from exc
        except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
            raise TransientError(f"publish failed: {type(exc).__name__}: {exc}", code="publish_failed") from exc
        # aiormq answers a nack with a Basic.Nack frame rather than an exception on some paths
        if confirmation is not None and confirmation.__class__.__name__ == "Nack":
            raise TransientError(f"broker nacked the publish to {exchange}/{routing_key}", code="publish_nacked")

    async def _until_restored(self) -> None:
        """Wait for a robust channel closed by a lost connection or by the broker to be reopened.

        Waiting (within the caller's bound) rather than failing at once: failing at once made every delivery of a
        consumer whose channel came back first churn through reject and redelivery until this one came back too.
        """
        if not isinstance(self._channel, aio_pika.RobustChannel):
            raise ChannelInvalidStateError(f"{self._channel!r} closed")
        while self._channel.is_closed:
            await self._channel.ready()
            if self._channel.is_closed:
                # the channel's close callback, which starts the restore, has not run yet: give it the loop
                await asyncio.sleep(0.01)
