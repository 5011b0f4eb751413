"""The Creatio poller: the backstop of the business process's webhook.

Every `interval` it reads, for each configured object (`Order`, `Contact`), the rows changed since its watermark
through OData 4 (`ModifiedOn ge <mark>`, `$orderby=ModifiedOn,Id`, pages of `page_size`:
`esi.systems.crm.client.odata.changed_since`) and emits each as an event (`order_changed`, `contact_changed`) through
the sink it was given — the same sink, with the same dedup on (record Id, `ModifiedOn`), as the webhook's, so that a
change reaches subscribers once whichever path saw it first. It catches what the webhook missed: Creatio's process
failed, esi was down or unreachable, the process was never set up.

- **No loss.** The watermark (in the CRM's own table, `esi.systems.crm.tables.Watermarks`) advances only after every
  event of a page was emitted; a pass that fails half-way starts again from the last stored page, and the sink's
  dedup absorbs the repeats.
- **Once per deployment.** Each object's watermark row carries a lease: a replica polls an object only while it
  holds the lease (claimed at each pass, extended at each page, released on a clean stop), and a watermark is only
  stored by the lease's holder. Two CRM adapter replicas (or a crashed one and its replacement) therefore never poll
  the same object at once; a replica that dies hands over when its lease runs out (`lease_s`).
- **Creatio down.** A failed pass is logged once (then at debug level until Creatio answers again, which is logged
  too), and the next pass waits longer each time (doubling, up to `max_backoff_s`).
- **The first pass** starts at `start_from`, or else at the newest change Creatio holds then: a new installation
  does not replay Creatio's history into the bus.

The poller knows its client and its sink through protocols of its own (`ChangeReader`, `EventSink`), so that esi's
event core (whose `EventSink.emit` fits) and this package compile apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from esi.systems.crm.client.odata import ChangedPage, Watermark
from esi.systems.crm.settings import CreatioSettings
from esi.systems.crm.tables import Watermarks

if TYPE_CHECKING:
    from esi.store import Database
    from esi.systems.spec import SystemContext

logger = logging.getLogger(__name__)

#: the source every polled event names (the system's code on the wire)
SOURCE = "crm"
#: the shortest lease on an object's watermark, whatever the interval
MIN_LEASE_S = 30.0


class EventSink(Protocol):
    """Where the poller emits an event: True when it is new, False for one already emitted (by either path)."""

    def emit(self, source: str, type: str, payload: Mapping[str, object]) -> Awaitable[bool]: ...


class ChangeReader(Protocol):
    """What the poller asks of the Creatio client (`esi.systems.crm.client.CreatioClient`)."""

    def changed_since(
        self, entity: str, watermark: Watermark, *, page_size: int = 100, select: tuple[str, ...] = ()
    ) -> AsyncIterator[ChangedPage]: ...

    async def newest_change(self, entity: str) -> datetime | None: ...

    async def status_name(self, status_id: str) -> str | None: ...


@dataclass(frozen=True)
class PolledObject:
    """A Creatio object the poller reads: its columns, its event type and how a row becomes the event's body."""

    entity: str
    event_type: str
    columns: tuple[str, ...]
    #: the event's body (the webhook's shape) from a row and the reader (to name lookups)
    body: Callable[[dict[str, Any], ChangeReader], Awaitable[dict[str, object]]]


async def _order_body(row: dict[str, Any], reader: ChangeReader) -> dict[str, object]:
    status_id = row.get("StatusId")
    status = await reader.status_name(str(status_id)) if status_id else None
    return {
        "Id": str(row["Id"]).lower(),
        "Number": row.get("Number"),
        "Status": status,
        "ModifiedOn": row["ModifiedOn"],
        "Amount": row.get("Amount"),
    }


async def _contact_body(row: dict[str, Any], reader: ChangeReader) -> dict[str, object]:
    return {
        "Id": str(row["Id"]).lower(),
        "Name": row.get("Name"),
        "Email": row.get("Email") or None,
        "Phone": row.get("Phone") or row.get("MobilePhone") or None,
        "ModifiedOn": row["ModifiedOn"],
    }


#: what can be polled, by entity name (`CRM_POLL_OBJECTS`)
OBJECTS: dict[str, PolledObject] = {
    "Order": PolledObject("Order", "order_changed", ("Number", "StatusId", "Amount"), _order_body),
    "Contact": PolledObject("Contact", "contact_changed", ("Name", "Email", "Phone", "MobilePhone"), _contact_body),
}


def instance_name() -> str:
    """This process among the replicas: host and pid (the lease's holder)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class CreatioPoller:
    """Reads what changed in Creatio every `interval` and emits it through `sink`.

    Use it as an async context manager (or `start()` / `stop()`); `poll_once()` runs one pass (tests, a command).

    Args:
        reader: the Creatio client (its own instance or the adapter's).
        sink: where events go (`esi.events.sink.EventSink` fits).
        watermarks: the CRM's table of watermarks over the store's database.
        interval: seconds between two passes.
        objects: the objects polled, in order (`Order`, `Contact`).
        page_size: rows per OData page; the watermark advances after each.
        start_from: where the first pass starts when no watermark is stored; None: at the newest change then.
        holder: this replica's name in the lease; host:pid by default.
        lease_s: how long a claimed lease lasts without being extended; 3 intervals, 30 s at least, by default.
        max_backoff_s: the longest wait after failed passes.
        close: awaited once the poller has stopped (the reader's `aclose`, when the poller owns it).
    """

    def __init__(
        self,
        *,
        reader: ChangeReader,
        sink: EventSink,
        watermarks: Watermarks,
        interval: float,
        objects: Sequence[str] = ("Order", "Contact"),
        page_size: int = 100,
        start_from: datetime | None = None,
        holder: str | None = None,
        lease_s: float | None = None,
        max_backoff_s: float = 300.0,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        unknown = [name for name in objects if name not in OBJECTS]
        if unknown:
            raise ValueError(f"cannot poll {', '.join(unknown)}; choose from {', '.join(OBJECTS)}")
        self._reader = reader
        self._sink = sink
        self._watermarks = watermarks
        self.interval = interval
        self._objects = [OBJECTS[name] for name in objects]
        self._page_size = page_size
        self._start_from = start_from
        self.holder = holder or instance_name()
        self.lease_s = lease_s if lease_s is not None else max(MIN_LEASE_S, 3 * interval)
        self._max_backoff_s = max(max_backoff_s, interval)
        self._close = close
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        #: events emitted by this poller that the sink took as new, and in all (for logs and tests)
        self.emitted = 0
        self.new = 0

    async def __aenter__(self) -> CreatioPoller:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Poll in the background, a first pass at once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run_forever(), name="creatio-poller")

    async def stop(self) -> None:
        """Stop polling (a pass under way is cancelled: its last stored page stands) and release the leases."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for polled in self._objects:
            try:
                await self._watermarks.release(polled.entity, self.holder)
            except Exception as exc:  # noqa: BLE001 - the lease runs out by itself
                logger.warning("could not release the lease on polling Creatio's %s: %s", polled.entity, exc)
        if self._close is not None:
            close, self._close = self._close, None
            await close()

    async def run_forever(self) -> None:
        """Pass after pass until cancelled; a failed pass is logged once and the next waits longer."""
        while True:
            delay = await self._pass_then_delay()
            await asyncio.sleep(delay)

    async def _pass_then_delay(self) -> float:
        try:
            await self.poll_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - polling outlives any failure: the next pass tries again
            self._failures += 1
            if self._failures == 1:
                logger.warning("polling Creatio failed, retrying with backoff (logged once until it works): %s", exc)
            else:
                logger.debug("polling Creatio failed again (%d in a row): %s", self._failures, exc)
            return float(min(self.interval * 2 ** min(self._failures, 20), self._max_backoff_s))
        if self._failures:
            logger.info("polling Creatio works again after %d failed passes", self._failures)
            self._failures = 0
        return self.interval

    async def poll_once(self) -> int:
        """One pass over every object this replica holds the lease of; the number of events emitted."""
        emitted = 0
        for polled in self._objects:
            emitted += await self._poll(polled)
        return emitted

    async def _poll(self, polled: PolledObject) -> int:
        stored = await self._watermarks.claim(polled.entity, self.holder, lease_s=self.lease_s)
        if stored is None:
            logger.debug("another replica polls Creatio's %s", polled.entity)
            return 0
        if stored.modified_on is None:
            mark = await self._first_mark(polled)
            if mark is None:
                return 0  # an object without rows: nothing to stand on yet
            if not await self._store(polled, mark):
                return 0
        else:
            mark = Watermark(stored.modified_on, stored.seen)
        emitted = 0
        async for page in self._reader.changed_since(
            polled.entity, mark, page_size=self._page_size, select=polled.columns
        ):
            for row in page.rows:
                body = await polled.body(row, self._reader)
                if await self._sink.emit(SOURCE, polled.event_type, body):
                    self.new += 1
                emitted += 1
                self.emitted += 1
            # the page's events are out: only now does the watermark move past them
            if not await self._store(polled, page.watermark):
                break
        if emitted:
            logger.info("polled %d changed %s row(s) from Creatio", emitted, polled.entity)
        return emitted

    async def _first_mark(self, polled: PolledObject) -> Watermark | None:
        """Where an object's first pass starts: `start_from`, or past every row Creatio holds now."""
        if self._start_from is not None:
            return Watermark(self._start_from)
        newest = await self._reader.newest_change(polled.entity)
        if newest is None:
            return None
        mark = Watermark(newest)
        async for page in self._reader.changed_since(polled.entity, mark, page_size=self._page_size):
            mark = page.watermark  # the rows at that time are history too
        logger.info("polling Creatio's %s from its newest change, %s", polled.entity, mark.modified_on.isoformat())
        return mark

    async def _store(self, polled: PolledObject, mark: Watermark) -> bool:
        kept = await self._watermarks.advance(
            polled.entity, self.holder, modified_on=mark.modified_on, seen=mark.seen, lease_s=self.lease_s
        )
        if not kept:
            logger.warning("lost the lease on polling Creatio's %s to another replica, which goes on", polled.entity)
        return kept


def build_poller(settings: CreatioSettings, *, database: Database, sink: EventSink) -> CreatioPoller | None:
    """The poller the CRM adapter runs, from its settings (`CRM_POLL_*`), over a Creatio client of its own (closed
    when the poller stops) and the store's database; None when polling is off (`CRM_POLL_INTERVAL` unset or 0)."""
    if settings.poll_interval <= 0:
        return None
    from esi.systems.crm.client import client_from

    client = client_from(settings)
    return CreatioPoller(
        reader=client,
        sink=sink,
        watermarks=Watermarks(database),
        interval=settings.poll_interval,
        objects=settings.polled_objects,
        page_size=settings.poll_page_size,
        start_from=settings.poll_start,
        close=client.aclose,
    )


def poller_for(context: SystemContext, sink: EventSink) -> CreatioPoller | None:
    """The CRM adapter's background task from what its handlers are built from (`SystemContext`: its settings and the
    store), for a hook such as `System(background=...)`; None when polling is off. Start it with `start()` once the
    adapter consumes, stop it with `stop()` before the adapter closes."""
    settings = context.settings
    if not isinstance(settings, CreatioSettings):
        raise TypeError("the Creatio poller needs the CRM's settings (CreatioSettings)")
    return build_poller(settings, database=context.store.database, sink=sink)
