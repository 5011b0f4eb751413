"""The Creatio poller and its reader of changes, against the fake Creatio over real HTTP and a real store.

The sink is a recording one with the dedup the event core promises (on source, type, record Id and ModifiedOn), so a
test sees both what the poller emitted and what reached subscribers as new.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from esi.store import Database
from esi.systems.crm.client import CreatioClient, Watermark
from esi.systems.crm.fake import create_app
from esi.systems.crm.poller import CreatioPoller, build_poller
from esi.systems.crm.settings import CreatioSettings
from esi.systems.crm.tables import MIGRATIONS, Watermarks
from esi.testing import serve_in_thread

pytestmark = pytest.mark.integration

PASSWORD = "Supervisor"


class RecordingSink:
    """Records every emit; answers whether (source, type, Id, ModifiedOn) is new, as the event core's sink does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []
        self.keys: set[tuple[str, str, str, str]] = set()
        self.fail_after: int | None = None

    async def emit(self, source: str, type: str, payload: Mapping[str, object]) -> bool:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("the broker is away")
        self.calls.append((source, type, dict(payload)))
        key = (source, type, str(payload["Id"]), str(payload["ModifiedOn"]))
        if key in self.keys:
            return False
        self.keys.add(key)
        return True

    def ids(self, type: str) -> list[str]:
        return [str(p["Id"]) for _, t, p in self.calls if t == type]


@pytest.fixture(scope="module")
def creatio_url() -> Iterator[str]:
    with serve_in_thread(create_app(password=PASSWORD)) as url:
        yield url


#: one connection pool for the tests' own calls to the fake (a client per call costs an SSL context each)
HTTP = httpx.Client(timeout=10)


@pytest.fixture
def creatio(creatio_url: str) -> str:
    HTTP.post(f"{creatio_url}/_fake/reset").raise_for_status()
    return creatio_url


@pytest.fixture
async def database(store_url: str) -> AsyncIterator[Database]:
    """The CRM's tables in a store of the test's own (SQLite and PostgreSQL: `store_url`)."""
    async with Database.open(store_url) as db:
        await db.migrate([MIGRATIONS])
        yield db


async def until(predicate: Callable[[], object], *, timeout: float, what: str) -> None:
    """Wait, letting the event loop run, until `predicate()` is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def client(creatio: str) -> AsyncIterator[CreatioClient]:
    async with CreatioClient(base_url=creatio, username="Supervisor", password=PASSWORD) as c:
        yield c


def add_orders(url: str, count: int) -> list[str]:
    numbers = [f"ORD-P-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for number in numbers:
        HTTP.post(f"{url}/_fake/orders", json={"Number": number}).raise_for_status()
    return numbers


def change_order(url: str, number: str, **values: Any) -> dict[str, Any]:
    response = HTTP.post(f"{url}/_fake/orders/{number}", json=values)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def orders(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = HTTP.get(f"{url}/_fake/state").raise_for_status().json()["orders"]
    return rows


def add_contact(url: str, **values: Any) -> dict[str, Any]:
    body: dict[str, Any] = HTTP.post(f"{url}/_fake/contacts/{uuid.uuid4()}", json=values).raise_for_status().json()
    return body


def fault(url: str, spec: dict[str, Any]) -> None:
    HTTP.post(f"{url}/_fake/faults", json=spec).raise_for_status()


def poller(client: CreatioClient, sink: RecordingSink, database: Database, **options: Any) -> CreatioPoller:
    return CreatioPoller(
        reader=client, sink=sink, watermarks=Watermarks(database), **{"interval": 0.2, "page_size": 7, **options}
    )


# --- the reader of changes -----------------------------------------------------------------------------------------


async def read_all(client: CreatioClient, entity: str, mark: Watermark, page_size: int) -> tuple[list[str], Watermark]:
    ids: list[str] = []
    async for page in client.changed_since(entity, mark, page_size=page_size, select=("Number",)):
        assert page.rows, "an empty page is not yielded"
        ids += [row["Id"] for row in page.rows]
        mark = page.watermark
    return ids, mark


async def test_rows_sharing_a_modified_on_across_a_page_boundary_are_all_read_once(
    client: CreatioClient, creatio: str
) -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    numbers = add_orders(creatio, 6)
    # three rows at 10:00:01 (a page of 2 ends between them), two more at 10:00:02, one at 10:00:03
    times = ["10:00:01", "10:00:01", "10:00:01", "10:00:02", "10:00:02", "10:00:03"]
    rows = [
        change_order(creatio, n, ModifiedOn=f"2026-12-01T{t}.000Z", Status="Confirmed")
        for n, t in zip(numbers, times, strict=True)
    ]
    expected = [r["Id"] for r in sorted(rows, key=lambda r: (r["ModifiedOn"], r["Id"]))]
    seeded_before = {o["Id"] for o in orders(creatio)} - set(expected)

    ids, mark = await read_all(client, "Order", Watermark(start), page_size=2)
    assert [i for i in ids if i not in seeded_before] == expected
    assert len(ids) == len(set(ids))
    assert mark.modified_on == datetime(2026, 12, 1, 10, 0, 3, tzinfo=UTC)
    assert mark.seen == {expected[-1]}

    # from the watermark: nothing again
    again, same = await read_all(client, "Order", mark, page_size=2)
    assert again == []
    assert same == mark


async def test_a_run_of_one_timestamp_longer_than_pages_is_read_through(client: CreatioClient, creatio: str) -> None:
    numbers = add_orders(creatio, 5)
    rows = [change_order(creatio, n, ModifiedOn="2026-12-02T08:00:00.000Z") for n in numbers]
    ids, mark = await read_all(client, "Order", Watermark(datetime(2026, 12, 2, 7, tzinfo=UTC)), page_size=2)
    assert sorted(ids) == sorted(r["Id"] for r in rows)
    assert mark.seen == {r["Id"] for r in rows}
    # half-way through the run (two taken), the rest and only the rest
    taken = sorted(r["Id"] for r in rows)[:2]
    half = Watermark(datetime(2026, 12, 2, 8, tzinfo=UTC), frozenset(taken))
    rest, _ = await read_all(client, "Order", half, page_size=2)
    assert sorted(rest) == sorted(set(ids) - set(taken))


async def test_a_row_changed_again_leaves_its_tie_and_is_read_again_without_losing_the_other(
    client: CreatioClient, creatio: str
) -> None:
    a, b = add_orders(creatio, 2)
    row_a = change_order(creatio, a, ModifiedOn="2026-12-03T09:00:00.000Z")
    row_b = change_order(creatio, b, ModifiedOn="2026-12-03T09:00:00.000Z")
    first, second = sorted([row_a, row_b], key=lambda r: r["Id"])
    # the first of the two was taken (a page ended there); then a manager changes it again
    mark = Watermark(datetime(2026, 12, 3, 9, tzinfo=UTC), frozenset({first["Id"]}))
    changed = change_order(creatio, first["Number"], Status="Shipped", ModifiedOn="2026-12-03T09:05:00.000Z")
    ids, after = await read_all(client, "Order", mark, page_size=1)
    assert ids == [second["Id"], changed["Id"]]
    assert after == Watermark(datetime(2026, 12, 3, 9, 5, tzinfo=UTC), frozenset({changed["Id"]}))


# --- the poller ----------------------------------------------------------------------------------------------------


async def test_fifty_changes_made_while_esi_was_down_are_emitted_once_across_restarts(
    client: CreatioClient, creatio: str, database: Database
) -> None:
    numbers = add_orders(creatio, 50)
    sink = RecordingSink()
    # esi ran once (its watermark stands at the newest change), then stopped
    first = poller(client, sink, database)
    assert await first.poll_once() == 0
    await first.stop()
    stored = await Watermarks(database).get("Order")
    assert stored is not None

    # while it is down, managers change the 50 orders; some changes share a moment (ties across page boundaries)
    changed: dict[str, str] = {}
    for i, number in enumerate(numbers):
        extra = {"ModifiedOn": "2030-01-01T00:00:00.000Z"} if i % 10 < 3 else {}
        row = change_order(creatio, number, Status="Shipped", **extra)
        changed[row["Id"]] = row["ModifiedOn"]
    contact = add_contact(creatio, Name="New Contact")

    # esi starts: every change is emitted, each once
    second = poller(client, sink, database)
    async with second:
        await until(lambda: len(sink.calls) >= 51, timeout=20, what="50 order events and a contact's")
    orders = sink.ids("order_changed")
    assert sorted(orders) == sorted(changed), "each changed order once, no other"
    assert sink.ids("contact_changed") == [contact["Id"]]
    bodies = {p["Id"]: p for _, t, p in sink.calls if t == "order_changed"}
    some = numbers[7]
    body = next(b for b in bodies.values() if b["Number"] == some)
    assert body["Status"] == "Shipped"
    assert body["ModifiedOn"] == changed[str(body["Id"])]
    assert set(body) == {"Id", "Number", "Status", "ModifiedOn", "Amount"}
    # the watermark is stored: at the newest change, with the 15 orders sharing it
    stored = await Watermarks(database).get("Order")
    assert stored is not None
    assert stored.modified_on == datetime(2030, 1, 1, tzinfo=UTC)
    assert len(stored.seen) == 15

    # a restart (a new poller, the same store) emits nothing again
    third = poller(client, sink, database)
    assert await third.poll_once() == 0
    await third.stop()
    assert len(sink.calls) == 51


async def test_a_page_half_emitted_is_emitted_again_and_nothing_is_lost(
    client: CreatioClient, creatio: str, database: Database
) -> None:
    numbers = add_orders(creatio, 10)
    sink = RecordingSink()
    p = poller(client, sink, database, page_size=4, objects=("Order",))
    await p.poll_once()
    for number in numbers:
        change_order(creatio, number, Status="Confirmed")
    sink.fail_after = 6  # the sink fails in the middle of the second page
    with pytest.raises(ConnectionError):
        await p.poll_once()
    assert len(sink.calls) == 6
    sink.fail_after = None
    assert await p.poll_once() == 6  # the second page again (2 repeats) and the last
    assert sorted(set(sink.ids("order_changed"))) == sorted(o["Id"] for o in orders(creatio) if o["Number"] in numbers)
    assert len(sink.keys) == 10  # what subscribers saw: each change once


async def test_the_first_pass_starts_at_the_newest_change_unless_told_where(
    client: CreatioClient, creatio: str, database: Database
) -> None:
    sink = RecordingSink()
    assert await poller(client, sink, database).poll_once() == 0  # history is not replayed
    assert sink.calls == []
    stored = await Watermarks(database).get("Contact")
    assert stored is not None
    assert stored.modified_on == datetime(2024, 6, 2, tzinfo=UTC)
    assert len(stored.seen) == 3  # the three seeded contacts share their ModifiedOn


async def test_start_from_replays_from_that_time(client: CreatioClient, creatio: str, tmp_path: Path) -> None:
    async with Database.open(f"sqlite:///{tmp_path}/replay.db") as db:
        await db.migrate([MIGRATIONS])
        sink = RecordingSink()
        p = poller(client, sink, db, start_from=datetime(2020, 1, 1, tzinfo=UTC))
        assert await p.poll_once() == 6  # the three seeded orders, the three seeded contacts
        assert len(sink.ids("contact_changed")) == 3
        contact = next(p for _, t, p in sink.calls if t == "contact_changed" and p["Name"] == "Petrova Anna")
        assert contact["Phone"] is None
        assert contact["Email"] == "petrova@example.com"


async def test_two_replicas_poll_once_and_a_stopped_one_hands_over(
    client: CreatioClient, creatio: str, database: Database
) -> None:
    numbers = add_orders(creatio, 3)
    sink_a, sink_b = RecordingSink(), RecordingSink()
    a = poller(client, sink_a, database, holder="replica-a", lease_s=60)
    b = poller(client, sink_b, database, holder="replica-b", lease_s=60)
    await a.poll_once()
    for number in numbers:
        change_order(creatio, number, Status="Confirmed")
    assert await b.poll_once() == 0  # a holds the lease
    assert await a.poll_once() == 3
    await a.stop()  # releases its leases
    change_order(creatio, numbers[0], Status="Shipped")
    assert await b.poll_once() == 1
    assert await a.poll_once() == 0  # b holds them now
    assert len(sink_a.calls) == 3
    assert len(sink_b.calls) == 1


async def test_an_expired_lease_is_taken_over_and_the_old_holder_stores_nothing(
    client: CreatioClient, creatio: str, database: Database
) -> None:
    watermarks = Watermarks(database)
    assert await watermarks.claim("Order", "a", lease_s=2) is not None
    assert await watermarks.claim("Order", "b", lease_s=60) is None  # a's lease holds
    deadline = asyncio.get_running_loop().time() + 10
    while await watermarks.claim("Order", "b", lease_s=60) is None:  # until a's lease runs out
        assert asyncio.get_running_loop().time() < deadline, "the expired lease was never taken over"
        await asyncio.sleep(0.1)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert not await watermarks.advance("Order", "a", modified_on=when, seen=frozenset(), lease_s=60)
    assert await watermarks.advance("Order", "b", modified_on=when, seen=frozenset({"x"}), lease_s=60)
    stored = await watermarks.get("Order")
    assert stored is not None
    assert stored.modified_on == when
    assert stored.seen == {"x"}


async def test_creatio_down_is_logged_once_backed_off_and_caught_up(
    client: CreatioClient, creatio: str, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    numbers = add_orders(creatio, 3)
    sink = RecordingSink()
    p = poller(client, sink, database, interval=0.05, max_backoff_s=0.2, objects=("Order",))
    await p.poll_once()
    fault(creatio, {"status": 503})
    for number in numbers:
        change_order(creatio, number, Status="Delivered")
    with caplog.at_level(logging.DEBUG, logger="esi.systems.crm.poller"):
        async with p:
            failed = lambda: sum("polling Creatio failed" in r.getMessage() for r in caplog.records) >= 3  # noqa: E731
            await until(failed, timeout=10, what="three failed passes")
            fault(creatio, {})
            recovered = lambda: any("works again" in r.getMessage() for r in caplog.records)  # noqa: E731
            await until(recovered, timeout=10, what="a pass after Creatio came back")
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "polling Creatio failed" in r.getMessage()]
    assert len(warned) == 1
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert len(sink.calls) == 3


async def test_build_poller_from_settings(creatio: str, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREATIO_URL", creatio)
    monkeypatch.setenv("CREATIO_POLL_INTERVAL", "2s")  # the name, an alias of CRM_POLL_INTERVAL
    monkeypatch.setenv("CRM_POLL_OBJECTS", "Contact")
    monkeypatch.setenv("CRM_POLL_FROM", "2020-01-01T00:00:00")
    settings = CreatioSettings()
    assert settings.poll_interval == 2.0
    assert settings.polled_objects == ["Contact"]
    sink = RecordingSink()
    built = build_poller(settings, database=database, sink=sink)
    assert built is not None
    assert await built.poll_once() == 3
    assert {t for _, t, _ in sink.calls} == {"contact_changed"}
    await built.stop()
    monkeypatch.setenv("CREATIO_POLL_INTERVAL", "0")
    assert build_poller(CreatioSettings(), database=database, sink=sink) is None
    # the hook's form: from the context the CRM's handlers are built from
    from esi.systems.crm import SYSTEM
    from esi.systems.crm.poller import poller_for
    from esi.systems.spec import SystemContext

    store = SimpleNamespace(database=database)
    monkeypatch.setenv("CREATIO_POLL_INTERVAL", "1s")
    context = SystemContext(SYSTEM, CreatioSettings(), None, store, None, None)  # type: ignore[arg-type]
    hooked = poller_for(context, sink)
    assert hooked is not None
    assert hooked.interval == 1.0
    await hooked.stop()
    with pytest.raises(TypeError, match="CreatioSettings"):
        poller_for(SystemContext(SYSTEM, None, None, store, None, None), sink)  # type: ignore[arg-type]


def test_a_watermark_compares_times_in_utc_and_ids_in_lower_case() -> None:
    assert Watermark(datetime(2026, 1, 1, tzinfo=UTC)).after([]) == Watermark(datetime(2026, 1, 1, tzinfo=UTC))
    later = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=1)
    rows = [{"Id": "B", "ModifiedOn": "2026-01-01T03:00:01+03:00"}]
    assert Watermark(datetime(2026, 1, 1, tzinfo=UTC)).after(rows) == Watermark(later, frozenset({"b"}))
