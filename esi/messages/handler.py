"""The shape of what an adapter does with one message type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from esi.messages.envelope import Envelope

#: a handler gets the envelope and its validated payload, and returns the envelopes to publish (answers,
#: sub-requests); it raises an `esi.errors` class to fail, and the consumer loop decides what that means
Handler = Callable[[Envelope, Any], Awaitable[list[Envelope]]]
