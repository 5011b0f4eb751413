"""Who waits for which request to settle: the in-process half of `GET /requests/{id}?wait=`.

The store calls `notify` right after it commits a request's end (answer recorded, or dead-lettered); a waiter in
the same process wakes at once. A request settled by another process (another API replica's consumer, an adapter
that dead-lettered it) is announced on PostgreSQL by the database itself (a trigger's `NOTIFY` at the commit,
`esi.store.schema`; `Requests` listens), within milliseconds: two API replicas behind a load balancer answer as fast
as one. Where nothing announces it (SQLite; the listening connection down), it is found by one periodic query for
all the requests waited on (`lookup`), not by a read per waiter: a thousand open long polls cost one query a
second, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from esi.store.records import RequestStatus

log = logging.getLogger(__name__)

#: the states a waiting client is answered on: the request will not move again by itself
SETTLED = frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.DEAD_LETTERED})


class Waiter:
    """One waiting reader: `event` is set when its request settles; `row` is the request's row as the settling write
    left it when that write was made in this process (the waiter then needs no read), None when it must read it."""

    __slots__ = ("event", "row")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.row: dict[str, Any] | None = None

    def wake(self, row: dict[str, Any] | None) -> None:
        if row is not None:  # a later wake-up without a row (the store's own announcement of it) keeps the row
            self.row = row
        self.event.set()


class Settlements:
    def __init__(self, lookup: Callable[[list[str]], Awaitable[list[str]]] | None = None, *, chunk: int = 500) -> None:
        self._waiting: dict[str, set[Waiter]] = {}
        #: set at shutdown: waiters answer at once with the state as it stands, and new ones do not wait
        self.closed = False
        #: which of these request ids are settled, per the store (None: this process's notifications only)
        self._lookup = lookup
        self._chunk = chunk
        self._interval = float("inf")
        self._kick = asyncio.Event()
        self._rechecker: asyncio.Task[None] | None = None

    def recheck_every(self, interval: float) -> None:
        """Look the waited-on requests up in the store at least every `interval` seconds while any are waited on."""
        if self._lookup is None:
            return
        if self._rechecker is None or self._rechecker.done():
            self._interval = interval
            self._rechecker = asyncio.create_task(self._recheck_forever(), name="settlement-recheck")
        elif interval < self._interval:
            self._interval = interval
            self._kick.set()  # start the wait again, shorter

    async def _recheck_forever(self) -> None:
        assert self._lookup is not None  # noqa: S101 - set in start(); narrows for mypy
        while self._waiting and not self.closed:
            try:
                await asyncio.wait_for(self._kick.wait(), self._interval)
            except TimeoutError:
                pass
            else:
                self._kick.clear()
                continue
            ids = list(self._waiting)
            try:
                for start in range(0, len(ids), self._chunk):
                    for request_id in await self._lookup(ids[start : start + self._chunk]):
                        self.notify(request_id)
            except Exception as exc:  # noqa: BLE001 - the store is away: the waiters still end at their deadline
                log.warning("looking up %d waited-on requests failed: %s", len(ids), exc)

    @contextmanager
    def watch(self, request_id: str) -> Iterator[Waiter]:
        """A waiter woken when `request_id` settles; registered before the caller reads the store, so a
        settlement between that read and the wait is not missed."""
        waiter = Waiter()
        self._waiting.setdefault(request_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiting.get(request_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiting[request_id]

    def close(self) -> None:
        """Shutting down: wake every waiter (a long poll must not hold the server's graceful stop)."""
        self.closed = True
        self._kick.set()
        for waiters in self._waiting.values():
            for waiter in waiters:
                waiter.wake(None)

    def notify(self, request_id: str, row: dict[str, Any] | None = None) -> None:
        """`request_id` settled; `row`, when given, is its whole row as this process just committed it (turned into
        a record only by a waiter, so an answer nobody waits on here costs nothing more)."""
        for waiter in self._waiting.get(request_id, ()):
            waiter.wake(row)

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())
