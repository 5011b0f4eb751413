"""Who waits for which request to settle: the in-process half of `GET /requests/{id}?wait=`.

The store calls `notify` right after it commits a request's end (answer recorded, or dead-lettered); a waiter in
the same process wakes at once. A request settled by another process (another API replica's consumer, an adapter
that dead-lettered it) is seen by the waiter's periodic re-read of the store, so this registry only makes the
common case fast: it is never the only way a waiter learns the outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from esi.store.records import RequestStatus

#: the states a waiting client is answered on: the request will not move again by itself
SETTLED = frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.DEAD_LETTERED})


class Settlements:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        #: set at shutdown: waiters answer at once with the state as it stands, and new ones do not wait
        self.closed = False

    @contextmanager
    def watch(self, request_id: str) -> Iterator[asyncio.Event]:
        """An event set when `request_id` settles in this process; registered before the caller reads the store,
        so a settlement between that read and the wait is not missed."""
        event = asyncio.Event()
        self._waiting.setdefault(request_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiting.get(request_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[request_id]

    def close(self) -> None:
        """Shutting down: wake every waiter (a long poll must not hold the server's graceful stop)."""
        self.closed = True
        for events in self._waiting.values():
            for event in events:
                event.set()

    def notify(self, request_id: str) -> None:
        for event in self._waiting.get(request_id, ()):
            event.set()

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiting.values())
