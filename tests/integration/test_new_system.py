"""A fourth system, declared outside the `esi` package: the proof that a system lives in one place.

This module is what README "Adding a system" walks through. It declares a warehouse (one request type,
`reserve_stock`, answered by `stock_reserved`) with its settings (`WAREHOUSE_*`), a client, a handler, a table of
its own with its migrations and a fake HTTP server, registers it through the `esi.systems` entry point of an
installed distribution (exactly as esi's own systems register; `ESI_SYSTEMS=module:attribute` is the other way),
and sends a request from 1C to the warehouse and back through the real broker, store and API — with no edit to
`esi/` and no file under `esi/` naming it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy import Column, Connection, Index, MetaData, String, Table, insert, select

from esi.bus.topology import build_topology
from esi.errors import BusinessError
from esi.messages import Envelope, Handler
from esi.messages.payload import Payload
from esi.store import Database, Migrations
from esi.store.migrations import create_index
from esi.systems.http import error_for_status, http_client, translate_transport_errors
from esi.systems.registry import Registry, RegistryError, load_registry
from esi.systems.spec import Event, Fake, Operation, System, SystemContext, SystemSettings
from esi.testing import EsiSystem, Vhost, rabbitmqctl, wait_until

ROOT = Path(__file__).resolve().parents[2]
SPEC = "tests.integration.test_new_system:WAREHOUSE"


# --- 1. the messages ------------------------------------------------------------------------------------------------


class ReserveStock(Payload):
    """Hold stock of one article for an order (`1c.request.warehouse.reserve_stock`).

    Version 2: version 1 called the quantity `qty`. A consumer of version 2 still reads version 1 (`upcast`).
    """

    VERSION = 2
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=100_000)
    order_id: str = Field(min_length=1, max_length=64)

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["quantity"] = data.pop("qty")
        return data


class StockReserved(BaseModel):
    """The warehouse holds the stock (`warehouse.response.1c.stock_reserved`)."""

    model_config = ConfigDict(extra="ignore")

    reservation_id: str
    sku: str
    quantity: int
    order_id: str


# --- 2. the settings: WAREHOUSE_URL, WAREHOUSE_TIMEOUT, WAREHOUSE_MAX_CONCURRENCY, WAREHOUSE_FAKE_PORT, ... -----------


class WarehouseSettings(SystemSettings):
    model_config = SettingsConfigDict(env_prefix="WAREHOUSE_", env_file=".env", extra="ignore", populate_by_name=True)

    url: str = Field("http://127.0.0.1:5300", description="the warehouse system")
    fake_port: int = Field(5300, description="where `esi run fake-warehouse` listens")


# --- 3. the client: I/O with the warehouse only, its failures translated into esi's ---------------------------------


class WarehouseClient:
    def __init__(self, settings: WarehouseSettings) -> None:
        self._http = http_client(
            base_url=settings.url,
            timeout=settings.timeout,
            ca_bundle=settings.ca_bundle,
            max_connections=settings.max_concurrency,
        )

    async def reserve(self, *, sku: str, quantity: int, order_id: str, key: str) -> dict[str, Any]:
        with translate_transport_errors("warehouse", "reserve"):
            response = await self._http.post(
                "/reservations",
                json={"sku": sku, "quantity": quantity, "order_id": order_id},
                headers={"Idempotency-Key": key},
            )
        if response.status_code == 409:
            raise BusinessError(f"warehouse: {response.json()['detail']}", code="out_of_stock", system="warehouse")
        if not response.is_success:
            raise error_for_status(response, system="warehouse", operation="reserve")
        return dict(response.json())

    async def order_changed(self, *, order: str, status: str, version: str, key: str) -> None:
        with translate_transport_errors("warehouse", "order_changed"):
            response = await self._http.post(
                "/order-events",
                json={"order": order, "status": status, "version": version},
                headers={"Idempotency-Key": key},
            )
        if not response.is_success:
            raise error_for_status(response, system="warehouse", operation="order_changed")

    async def check(self) -> None:
        with translate_transport_errors("warehouse", "check"):
            (await self._http.get("/health")).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()


# --- 4. the handlers: pure logic over the client --------------------------------------------------------------------


def warehouse_handlers(context: SystemContext) -> dict[str, Handler]:
    client: WarehouseClient = context.client
    reservations = Reservations(context.store.database)

    async def reserve_stock(envelope: Envelope, payload: ReserveStock) -> list[Envelope]:
        held = await client.reserve(
            sku=payload.sku, quantity=payload.quantity, order_id=payload.order_id, key=f"esi-{envelope.message_id}"
        )
        await reservations.remember(held["id"], order_id=payload.order_id, message_id=envelope.message_id)
        answer = StockReserved(
            reservation_id=held["id"], sku=payload.sku, quantity=payload.quantity, order_id=payload.order_id
        )
        return [envelope.reply("stock_reserved", answer.model_dump())]

    return {"reserve_stock": reserve_stock}


def warehouse_event_handlers(context: SystemContext) -> dict[str, Handler]:
    """The events the warehouse subscribes to: an order changed in Creatio (it holds stock for orders)."""
    client: WarehouseClient = context.client

    async def order_changed(envelope: Envelope, _payload: BaseModel | None) -> list[Envelope]:
        payload = envelope.payload
        await client.order_changed(
            order=payload["Number"], status=payload["Status"], version=payload["ModifiedOn"], key=envelope.message_id
        )
        return []

    return {"crm.order_changed": order_changed}


# --- 4b. its own table, with its migrations: the reservations it made, by order ----------------------------------

TABLES = MetaData()
reservations_table = Table(
    "warehouse_reservations",
    TABLES,
    Column("reservation_id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),
)
#: version 2 adds an index: a system's migrations go on like the core's
ORDER_INDEX = Index("ix_warehouse_reservations_order", reservations_table.c.order_id)
MIGRATIONS = Migrations("warehouse", {1: [reservations_table], 2: [create_index(ORDER_INDEX)]})


class Reservations:
    """The warehouse adapter's repository over the store's shared database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(self, reservation_id: str, *, order_id: str, message_id: str) -> None:
        r = reservations_table

        def write(conn: Connection) -> None:  # a redelivery finds it there: idempotent
            if conn.execute(select(r.c.reservation_id).where(r.c.reservation_id == reservation_id)).first() is None:
                conn.execute(insert(r).values(reservation_id=reservation_id, order_id=order_id, message_id=message_id))

        await self._db.write(write)


# --- 5. a fake warehouse (demo and tests) ---------------------------------------------------------------------------


def fake_warehouse(_settings: WarehouseSettings) -> FastAPI:
    app = FastAPI()
    state: dict[str, Any] = {"stock": {"SKU-1": 10}, "reservations": {}, "order_events": {}}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/reservations", status_code=201)
    async def reserve(request: Request, idempotency_key: str = Header()) -> Any:
        if idempotency_key in state["reservations"]:
            return state["reservations"][idempotency_key]
        body = await request.json()
        if state["stock"].get(body["sku"], 0) < body["quantity"]:
            return JSONResponse({"detail": f"only {state['stock'].get(body['sku'], 0)} of {body['sku']}"}, 409)
        state["stock"][body["sku"]] -= body["quantity"]
        held = {"id": f"RES-{len(state['reservations']) + 1:04d}", **body}
        state["reservations"][idempotency_key] = held
        return held

    @app.post("/order-events", status_code=201)
    async def order_event(request: Request, idempotency_key: str = Header()) -> Any:
        state["order_events"].setdefault(idempotency_key, await request.json())
        return {"status": "recorded"}

    @app.get("/_fake/state")
    async def fake_state() -> dict[str, Any]:
        return state

    @app.post("/_fake/reset")
    async def reset() -> dict[str, str]:
        state.update({"stock": {"SKU-1": 10}, "reservations": {}})
        return {"status": "reset"}

    return app


# --- 5b. an event it emits, from a task of its own (a poller would be one): its stock of an article -------------


class StockChanged(BaseModel):
    """The warehouse's stock of an article changed (`warehouse.event.stock_changed`)."""

    sku: str
    quantity: int
    revision: int


def stock_announcer(context: SystemContext) -> Callable[[], Coroutine[Any, Any, None]]:
    """The warehouse's background task: once started, it tells its stock (a real one would poll and tell changes),
    through the same sink as the webhooks (`context.sink`: deduplicated by sku and revision)."""

    async def announce() -> None:
        assert context.sink is not None
        await context.sink.emit("warehouse", "stock_changed", {"sku": "SKU-1", "quantity": 10, "revision": 1})

    return announce


# --- 6. the declaration: everything esi derives from -------------------------------------------------------------

WAREHOUSE = System(
    code="warehouse",
    title="Warehouse",
    description="stock held for orders",
    answers=(Operation("reserve_stock", ReserveStock, "stock_reserved", StockReserved),),
    settings=WarehouseSettings,
    client=WarehouseClient,
    handlers=warehouse_handlers,
    fake=Fake("fake-warehouse", fake_warehouse),
    key_fields=("sku", "reservation_id"),
    tables=MIGRATIONS,
    # it subscribes to an event of another system, exactly as 1C and Creatio do: its own events queue
    subscribes=("crm.order_changed",),
    on_event=warehouse_event_handlers,
    emits=(Event("stock_changed", StockChanged, id_field="sku", version_field="revision", key_fields=("sku",)),),
    background=stock_announcer,
)


# --- what the registry derives from it (no broker) ------------------------------------------------------------------


def test_the_registry_derives_catalog_topology_targets_and_routing() -> None:
    registry = Registry([*load_registry().systems, WAREHOUSE])
    spec = registry.catalog.request_spec("warehouse", "reserve_stock")
    assert spec.model is ReserveStock
    assert spec.response_type == "stock_reserved"
    assert registry.catalog.get("stock_reserved").model is StockReserved
    assert "warehouse" in registry.targets
    assert "warehouse" in registry.services
    assert registry.fakes["fake-warehouse"] is WAREHOUSE
    work = build_topology(registry.queues()).queue_for("warehouse")
    assert (work.name, work.bindings) == ("warehouse_queue", ("*.request.warehouse.*",))
    assert work.dead_letter_queue == "warehouse_dead_letter_queue"
    # the reply goes back to 1C, whose adapter must record it
    assert "stock_reserved" in registry.routed_to(registry.origin)
    assert registry.routed_to(WAREHOUSE) == {"reserve_stock"}
    assert registry.business_keys({"sku": "SKU-1", "quantity": 3}) == ["SKU-1"]
    # its subscription: a queue of its own bound to the event's key, beside 1C's copy
    topology = build_topology(registry.queues())
    events = topology.events_queue_for("warehouse")
    assert events is not None
    assert (events.name, events.bindings) == ("warehouse_events_queue", ("crm.event.order_changed",))
    assert events.dead_letter_queue == "warehouse_events_dead_letter_queue"
    assert registry.subscribers("crm", "order_changed") == ("1c", "warehouse")


def test_a_site_changes_subscriptions_in_its_settings() -> None:
    systems = [*load_registry().systems, WAREHOUSE]
    removed = Registry(systems, ["-warehouse:crm.order_changed"])
    assert removed.subscribers("crm", "order_changed") == ("1c",)
    assert build_topology(removed.queues()).events_queue_for("warehouse") is None
    added = Registry(systems, ["warehouse:dms.policy_issued"])
    assert added.subscriptions["warehouse"] == ("crm.order_changed", "dms.policy_issued")
    with pytest.raises(RegistryError, match="no registered system emits"):
        Registry(systems, ["warehouse:crm.order_deleted"])
    only_orders = {"crm.order_changed": warehouse_handlers}  # what its on_event gives: no policy handler
    with_policies = Registry(systems, ["warehouse:dms.policy_issued"])
    with pytest.raises(RegistryError, match="no handler"):
        with_policies.event_handlers(WAREHOUSE, only_orders)  # type: ignore[dict-item]


def test_declarations_that_do_not_fit_are_refused_at_start_up() -> None:
    with pytest.raises(RegistryError, match="declared twice"):
        Registry([*load_registry().systems, WAREHOUSE, WAREHOUSE])
    asks_nobody = System(code="erp2", title="x", handlers=lambda _: {}, asks=("ship_it",))
    with pytest.raises(RegistryError, match="no registered system answers"):
        Registry([*load_registry().systems, asks_nobody])
    registry = Registry([*load_registry().systems, WAREHOUSE])
    with pytest.raises(RegistryError, match="missing reserve_stock"):
        registry.check_handlers(WAREHOUSE, {})
    # forgetting the 1C side's reply handler is caught at start-up, not by a dead letter at run time
    before = {t: warehouse_handlers for t in Registry(load_registry().systems).routed_to(registry.origin)}
    with pytest.raises(RegistryError, match=r"missing stock_reserved$"):
        registry.check_handlers(registry.origin, before)  # type: ignore[arg-type]


def test_the_esi_package_does_not_know_the_warehouse() -> None:
    found = subprocess.run(["grep", "-ril", "warehouse", str(ROOT / "esi")], capture_output=True, text=True)
    assert found.stdout == "", f"esi/ names the warehouse: {found.stdout}"


def install_entry_point(site: Path) -> Path:
    """A distribution's metadata in `site` whose `esi.systems` entry point names the warehouse: what `pip install`
    of a package declaring `[project.entry-points."esi.systems"] warehouse = ...` leaves on the path."""
    info = site / "esi_warehouse-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: esi-warehouse\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[esi.systems]\nwarehouse = {SPEC}\n")
    return site


def _reservations(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as conn:
        return list(conn.execute("SELECT reservation_id, order_id FROM warehouse_reservations ORDER BY 1"))


def _migrations(database: Path, owner: str) -> list[int]:
    with sqlite3.connect(database) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM esi_migrations WHERE owner = ? ORDER BY 1", (owner,))]


def test_an_entry_point_registers_the_warehouse(tmp_path: Path) -> None:
    site = install_entry_point(tmp_path / "site")
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]; from esi.systems.registry import "
        "load_registry; print(' '.join(load_registry().codes))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["1c", "crm", "dms", "warehouse"], found.stderr


def _publish(amqp_url: str, routing_key: str, envelope: dict[str, Any], *, answer: str | None = None) -> Any:
    """Publish one message onto main_exchange; with `answer`, wait for the reply on that routing key."""

    async def run() -> Any:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("main_exchange")
            queue = await channel.declare_queue(exclusive=True)
            if answer:
                await queue.bind(exchange, answer)
            await exchange.publish(
                aio_pika.Message(json.dumps(envelope).encode(), delivery_mode=2),
                routing_key=routing_key,
                mandatory=True,
            )
            if not answer:
                return None
            async with asyncio.timeout(30), queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    return json.loads(message.body)
        finally:
            await connection.close()

    return asyncio.run(run())


def _versions_of_the_payload(system: EsiSystem) -> None:
    """A producer still writing version 1 (`qty`) is read by this consumer of version 2; version 3 is refused."""
    request_id = f"WH-V1-{uuid.uuid4().hex[:8]}"
    v1 = {
        "schema_version": 1,
        "request_id": request_id,
        "source_system": "1c",
        "target_system": "warehouse",
        "message_type": "reserve_stock",
        "payload": {"sku": "SKU-1", "qty": 2, "order_id": "ORD9876"},
    }
    reply = _publish(
        system.amqp_url, "1c.request.warehouse.reserve_stock", v1, answer="warehouse.response.1c.stock_reserved"
    )
    assert reply["request_id"] == request_id, reply
    assert reply["payload"]["quantity"] == 2, reply
    assert httpx.get(f"{system.fake_url('warehouse')}/_fake/state", timeout=10).json()["stock"]["SKU-1"] == 5
    v3 = {**v1, "schema_version": 3, "request_id": f"WH-V3-{uuid.uuid4().hex[:8]}"}
    _publish(system.amqp_url, "1c.request.warehouse.reserve_stock", v3)

    def parked() -> list[dict[str, Any]]:
        found = httpx.get(f"{system.api_url}/dlq", params={"queue": "warehouse", "reason": "newer"}, timeout=30)
        return list(found.json()["messages"])

    [letter] = wait_until(parked, timeout=30, interval=0.5, what="the version 3 message in the DLQ")
    assert "version 3 is newer than this consumer's 2" in letter["reason"], letter
    assert letter["attempts"] <= 1, letter


# --- end to end: 1C → warehouse → 1C through the real broker, store and API -----------------------------------------


@pytest.mark.integration
def test_a_request_goes_from_1c_to_the_warehouse_and_back(tmp_path: Path) -> None:
    vhost = Vhost()
    system = EsiSystem(
        workdir=tmp_path,
        amqp_url=vhost.url,
        database_url=f"sqlite:///{tmp_path}/esi.db",
        registry=Registry([*load_registry().systems, WAREHOUSE]),
        # registered exactly as the built-in systems are: an entry point of an installed distribution
        extra_env={
            "PYTHONPATH": f"{install_entry_point(tmp_path / 'site')}{os.pathsep}{ROOT}",
            # the site subscribes 1C to the warehouse's stock in its settings, without code
            "ESI_SUBSCRIPTIONS": "1c:warehouse.stock_changed",
        },
    )
    try:
        system.start_all()
        request_id = f"WH-{uuid.uuid4().hex[:10]}"
        body = {"request_id": request_id, "sku": "SKU-1", "quantity": 3, "order_id": "ORD9876"}
        response = system.post("/requests/warehouse/reserve_stock", json=body)
        assert response.status_code == 202, response.text
        record = system.wait_final(request_id)
        assert record["status"] == "completed", record
        assert record["target"] == "warehouse"
        assert record["message_type"] == "reserve_stock"
        assert record["response"]["sku"] == "SKU-1"
        assert record["response"]["reservation_id"] == "RES-0001"
        state = httpx.get(f"{system.fake_url('warehouse')}/_fake/state", timeout=10).json()
        assert state["stock"]["SKU-1"] == 7
        assert len(state["reservations"]) == 1
        # found by the new system's business keys; the timeline shows the warehouse call
        found = httpx.get(f"{system.api_url}/requests", params={"key": "RES-0001"}, timeout=10).json()
        assert [r["request_id"] for r in found["requests"]] == [request_id]
        events = httpx.get(f"{system.api_url}/requests/{request_id}/timeline", timeout=10).json()["events"]
        calls = [e for e in events if e["event"] == "external_call"]
        assert calls
        assert calls[0]["detail"]["system"] == "warehouse"
        assert calls[0]["detail"]["outcome"] == "ok"
        # its own table, created by its migrations, holds what its handler wrote
        assert _reservations(tmp_path / "esi.db") == [("RES-0001", "ORD9876")]
        assert _migrations(tmp_path / "esi.db", "warehouse") == [1, 2]
        # the warehouse's refusal ends the request failed, with its reason
        refused_id = f"WH-{uuid.uuid4().hex[:10]}"
        system.post("/requests/warehouse/reserve_stock", json={**body, "request_id": refused_id, "quantity": 99})
        refused = system.wait_final(refused_id)
        assert refused["status"] == "failed", refused
        assert "only 7 of SKU-1" in refused["error"]["message"], refused
        # the edge knows the new target and its one message type
        unknown = system.post("/requests/warehouse/ship_it", json={"sku": "SKU-1"})
        assert unknown.status_code == 404
        assert "reserve_stock" in unknown.json()["error"]["message"]
        invalid = system.post("/requests/warehouse/reserve_stock", json={"sku": "SKU-1", "quantity": -1})
        assert invalid.status_code == 422
        _versions_of_the_payload(system)
        # an order changed in Creatio reaches the warehouse, a subscriber declared outside esi, and 1C, each once
        order = {"Id": str(uuid.uuid4()), "Number": "ORD-WH-1", "Status": "Paid", "ModifiedOn": "2026-12-07T10:00:00Z"}
        taken = system.post("/events/crm/order_changed", json=order)
        assert taken.status_code == 202, taken.text

        def order_events() -> list[dict[str, Any]]:
            return list(
                httpx.get(f"{system.fake_url('warehouse')}/_fake/state", timeout=10).json()["order_events"].values()
            )

        [seen] = wait_until(order_events, timeout=30, interval=0.2, what="the order event at the warehouse")
        assert (seen["order"], seen["status"]) == ("ORD-WH-1", "Paid")
        wait_until(
            lambda: [r for r in system.fake_state("1c")["received"] if r["key"] == order["Id"]],
            timeout=30,
            interval=0.2,
            what="1C's copy",
        )
        # the warehouse's own task emitted its stock through the sink; the site's subscription brought it to 1C
        [stock] = wait_until(
            lambda: [r for r in system.fake_state("1c")["received"] if r["type"] == "stock_changed"],
            timeout=30,
            interval=0.2,
            what="the warehouse's stock event at 1C",
        )
        assert (stock["source"], stock["key"], stock["body"]["payload"]["quantity"]) == ("warehouse", "SKU-1", 10)
        ready = httpx.get(f"{system.processes['adapters'].health_url}/readyz", timeout=10).json()
        assert ready["checks"]["warehouse"]["status"] == "ok", ready
        queues = rabbitmqctl("list_queues", "-p", vhost.name, "name", "arguments")
        assert "warehouse_queue" in queues
        assert "warehouse_dead_letter_queue" in queues
        assert "warehouse_events_queue" in queues
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, system.logs()[-3000:])
    except BaseException:
        print(system.logs()[-5000:])
        system.kill_all()
        raise
    finally:
        vhost.delete()
