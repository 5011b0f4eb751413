"""What a system's adapter does with one message type: a coroutine from the envelope and its validated payload to
the messages it sends (replies, sub-requests), which the consumer loop publishes before it acks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from esi.messages.envelope import Envelope

#: the payload is the message type's model, validated (`Catalog.validate_payload`; None for an error reply without
#: one); `Any` because one map holds the handlers of different models, each declaring its own
Handler = Callable[[Envelope, Any], Awaitable[list[Envelope]]]
