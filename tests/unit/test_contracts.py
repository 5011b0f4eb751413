"""The contract as documents (esi.contracts): the generated AsyncAPI document is valid AsyncAPI 3.0.0, every payload
schema is a valid JSON Schema that a sample of its message passes, the committed snapshot (`contracts/`) is the live
contract, the API serves it, and `esi contracts export|check` behave."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import argon2
import httpx
import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from esi.api.app import ApiDeps, create_app
from esi.bus.topology import build_topology
from esi.cli import app as cli
from esi.contracts.asyncapi import build_asyncapi, iter_refs, routes, topic_matches
from esi.contracts.compat import compare, dump, live_contract, load_contract
from esi.contracts.schemas import ENVELOPE, message_schemas
from esi.messages.catalog import Catalog, MessageSpec
from esi.messages.envelope import Envelope, Kind
from esi.messages.payload import Request
from esi.security import ClientRegistry, make_client_entry
from esi.store import Store
from esi.systems.registry import Registry, load_registry
from esi.systems.spec import Operation, System

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "contracts"
ASYNCAPI_SCHEMA = ROOT / "tests" / "contracts" / "asyncapi-3.0.0.schema.json"
ASYNCAPI_SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"
REGISTRY = Registry(load_registry().systems)
DOCUMENT = build_asyncapi(REGISTRY)
PDF = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
POLICY = {
    "policy_number": "POL-1",
    "holder_name": "Иван Петров",
    "status": "active",
    "start_date": "2026-01-01",
    "end_date": "2026-12-31",
    "insurer": "Ингосстрах",
}
#: a valid payload of each built-in message
SAMPLES: dict[str, dict[str, Any]] = {
    "create_user": {"user_id": "U1", "name": "Иван", "email": "ivan@example.com", "phone": "+7 900 000-00-00"},
    "user_created": {"user_id": "U1", "dms_user_id": "D-1", "name": "Иван", "email": "ivan@example.com"},
    "get_policy_info": {"policy_number": "POL-1"},
    "policy_info_response": POLICY,
    "update_order_status": {
        "order_id": "ORD1",
        "status": "Shipped",
        "needs_policy_info": True,
        "policy_number": "POL-1",
    },
    "order_status_updated": {
        "order_id": "ORD1",
        "order_guid": "6f1c",
        "order_number": "ORD1",
        "status": "Shipped",
        "status_id": "a1",
        "policy_info": POLICY,
    },
    "send_pdf_file": {"order_id": "ORD1", "file_name": "invoice.pdf", "file_content": PDF},
    "pdf_received": {"order_id": "ORD1", "order_guid": "6f1c", "file_id": "F1", "file_name": "invoice.pdf", "size": 15},
    "order_changed": {"Id": "6f1c", "Number": "ORD1", "Status": "Paid", "ModifiedOn": "2026-12-07T10:00:00Z"},
    "contact_changed": {"Id": "c0ffee", "Name": "Иван", "Email": None, "ModifiedOn": "2026-12-07T10:00:00Z"},
    "policy_issued": {"policy_number": "POL-1", "revision": 1, "status": "active"},
    "policy_changed": {"policy_number": "POL-1", "revision": 2, "status": "suspended"},
    "policy_cancelled": {"policy_number": "POL-1", "revision": 3, "status": "cancelled"},
    "request_outcome": {"request_id": "R-1", "status": "completed", "message_type": "user_created", "response": {}},
}


def _message_validator(document: dict[str, Any], name: str) -> jsonschema.Draft7Validator:
    """A validator of the message `name` as it travels (the envelope around its payload), from the document."""
    return jsonschema.Draft7Validator(
        {"components": document["components"], "$ref": f"#/components/messages/{name}/payload"}
    )


def _pointer(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in filter(None, ref.lstrip("#").split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- the AsyncAPI document -------------------------------------------------------------------------------------------


def test_the_vendored_asyncapi_schema_is_the_official_one() -> None:
    assert hashlib.sha256(ASYNCAPI_SCHEMA.read_bytes()).hexdigest() == ASYNCAPI_SCHEMA_SHA256


def test_the_document_is_valid_asyncapi_3() -> None:
    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8")))
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(DOCUMENT)]
    assert errors == []
    assert DOCUMENT["asyncapi"] == "3.0.0"
    # the schema does refuse what is not AsyncAPI 3.0 (the check above can fail)
    broken = copy.deepcopy(DOCUMENT)
    broken["operations"]["send.1c.request.dms.create_user"]["action"] = "publish"
    broken["channels"]["dms_queue"]["bindings"]["amqp"]["exchange"] = {"name": "main_exchange"}
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_reference_resolves_and_operations_carry_their_channels_messages() -> None:
    refs = list(iter_refs(DOCUMENT))
    assert len(refs) > 50
    for ref in refs:
        _pointer(DOCUMENT, ref)  # raises KeyError for a dangling reference
    for name, operation in DOCUMENT["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name


def test_channels_are_the_routing_keys_each_system_publishes() -> None:
    keyed = {c for c, v in DOCUMENT["channels"].items() if v["bindings"]["amqp"]["is"] == "routingKey"}
    assert keyed == {
        "1c.request.dms.create_user",
        "dms.response.1c.user_created",
        "1c.request.dms.get_policy_info",
        "dms.response.1c.policy_info_response",
        "1c.request.crm.update_order_status",
        "crm.response.1c.order_status_updated",
        "1c.request.crm.send_pdf_file",
        "crm.response.1c.pdf_received",
        # the CRM's own sub-request and its answer
        "crm.request.dms.get_policy_info",
        "dms.response.crm.policy_info_response",
        # the events: one key each, a copy for every subscriber's events queue
        "crm.event.order_changed",
        "crm.event.contact_changed",
        "dms.event.policy_issued",
        "dms.event.policy_changed",
        "dms.event.policy_cancelled",
        "1c.event.request_outcome",
    }
    for key in keyed:
        channel = DOCUMENT["channels"][key]
        assert channel["address"] == key
        assert channel["bindings"]["amqp"]["exchange"] == {
            "name": "main_exchange",
            "type": "topic",
            "durable": True,
            "autoDelete": False,
        }
        source = key.split(".")[0]
        send = DOCUMENT["operations"][f"send.{key}"]
        assert send["action"] == "send"
        assert send["x-esi-system"] == source
        assert send["bindings"]["amqp"]["deliveryMode"] == 2
        assert send["bindings"]["amqp"]["mandatory"] is True


def test_each_routing_key_is_received_from_the_queue_its_binding_routes_it_to() -> None:
    topology = build_topology(REGISTRY.queues())
    for route in routes(REGISTRY, topology):
        receiver = route.key.target
        queue = topology.queue_for(receiver)
        assert any(topic_matches(b, str(route.key)) for b in queue.bindings)
        operation = DOCUMENT["operations"][f"receive.{receiver}.{route.key.message_type}"]
        assert operation["action"] == "receive"
        assert operation["channel"]["$ref"] == f"#/channels/{queue.name}"
        assert operation["bindings"]["amqp"]["ack"] is True
        assert DOCUMENT["channels"][queue.name]["bindings"]["amqp"]["queue"]["name"] == queue.name
        assert DOCUMENT["channels"][queue.name]["bindings"]["amqp"]["queue"]["durable"] is True


def test_topic_matching_is_rabbitmqs() -> None:
    assert topic_matches("*.request.dms.*", "1c.request.dms.create_user")
    assert not topic_matches("*.request.dms.*", "1c.response.dms.create_user")
    assert not topic_matches("*.request.dms.*", "1c.request.dms")
    assert topic_matches("#", "a.b")
    assert topic_matches("a.#", "a")
    assert topic_matches("a.#.d", "a.b.c.d")
    assert not topic_matches("a.#.d", "a.b.c")


def test_messages_carry_their_type_and_version_in_the_amqp_bindings() -> None:
    for name, message in DOCUMENT["components"]["messages"].items():
        assert name == f"{message['name']}.v{message['x-esi-version']}"
        assert message["bindings"]["amqp"]["messageType"] == message["name"]
        assert message["contentType"] == "application/json"


class ReserveStock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(max_length=32)
    quantity: int = Field(ge=1)


class StockReserved(BaseModel):
    sku: str
    reserved: int


#: a fourth system, declared as a site would: the contract follows the registry
STOCK = System(
    code="stock",
    title="Warehouse stock",
    handlers=lambda context: {},
    answers=(Operation("reserve_stock", ReserveStock, "stock_reserved", StockReserved),),
)


def test_a_new_system_adds_its_channels_and_messages_compatibly() -> None:
    registry = Registry((*load_registry().systems, STOCK))
    document = build_asyncapi(registry)
    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8")))
    assert list(validator.iter_errors(document)) == []
    assert {
        "1c.request.stock.reserve_stock",
        "stock.response.1c.stock_reserved",
        "stock_queue",
        "stock_dead_letter_queue",
    } == set(document["channels"]) - set(DOCUMENT["channels"])
    assert document["operations"]["receive.stock.reserve_stock"]["channel"] == {"$ref": "#/channels/stock_queue"}
    assert document["operations"]["receive.1c.stock_reserved"]["channel"] == {"$ref": "#/channels/1c_queue"}
    report = compare(live_contract(REGISTRY), live_contract(registry))
    assert report.findings
    assert not report.breaking
    assert compare(live_contract(registry), live_contract(REGISTRY)).breaking  # and taking it away breaks


class CreateUserV2(Request):
    """create_user at version 2: `name` became `full_name`, and version 1 is upcast."""

    VERSION = 2
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=64)
    full_name: str = Field(min_length=1, max_length=200)
    email: str

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["full_name"] = data.pop("name")
        return data


class CreateUserV2WithoutUpcast(Request):
    VERSION = 2
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=64)
    full_name: str = Field(min_length=1, max_length=200)
    email: str


def _with_create_user(model: type[BaseModel]) -> Registry:
    registry = Registry(load_registry().systems)
    registry.catalog = Catalog(
        [
            MessageSpec(
                s.message_type, s.kind, model, handled_by=s.handled_by, response_type=s.response_type, upload=s.upload
            )
            if s.message_type == "create_user"
            else s
            for s in registry.catalog.specs
        ]
    )
    return registry


def test_a_raised_version_is_named_and_may_break_the_payload_only_with_an_upcaster() -> None:
    with_upcaster = live_contract(_with_create_user(CreateUserV2))
    assert "create_user.v2" in with_upcaster.schemas
    assert "create_user.v1" not in with_upcaster.schemas
    message = with_upcaster.asyncapi["components"]["messages"]["create_user.v2"]
    assert message["x-esi-version"] == 2
    assert message["x-esi-accepted-versions"] == [1, 2]
    assert with_upcaster.asyncapi["channels"]["1c.request.dms.create_user"]["messages"] == {
        "create_user.v2": {"$ref": "#/components/messages/create_user.v2"}
    }
    snapshot = load_contract(SNAPSHOT)
    report = compare(snapshot, with_upcaster)
    assert report.findings, report.breaking
    assert not report.breaking, report.breaking
    without = compare(snapshot, live_contract(_with_create_user(CreateUserV2WithoutUpcast)))
    # without one, v1 messages in flight would be refused: name and phone removed, full_name a new required field
    # (email's dropped bounds and pattern widen it: additive)
    assert {f.path for f in without.breaking} == {"$.properties.name", "$.properties.phone", "$.properties.full_name"}
    # and going back down from v2 to v1 is breaking
    assert compare(with_upcaster, live_contract(REGISTRY)).breaking


# --- the payload schemas -------------------------------------------------------------------------------------------


def test_each_schema_is_a_valid_json_schema_2020_12() -> None:
    contract = live_contract(REGISTRY)
    assert set(contract.schemas) == {ENVELOPE, *(m.name for m in message_schemas(REGISTRY.catalog))}
    for name, schema in contract.schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        jsonschema.Draft202012Validator.check_schema(schema)


def test_a_sample_of_each_builtin_message_passes_its_schemas() -> None:
    contract = live_contract(REGISTRY)
    messages = {m.message_type: m for m in message_schemas(REGISTRY.catalog)}
    assert set(SAMPLES) == set(messages), "give each built-in message a sample here"
    for message_type, sample in SAMPLES.items():
        message = messages[message_type]
        message.spec.model.model_validate(sample)  # the sample is one esi accepts
        jsonschema.Draft202012Validator(contract.schemas[message.name]).validate(sample)
        kind = "request" if message.kind is Kind.REQUEST else "response"
        envelope = Envelope(
            request_id="R-1", source_system="1c", target_system="dms", message_type=message_type, payload=sample
        )
        wire = json.loads(envelope.encode())
        _message_validator(DOCUMENT, message.name).validate(wire)
        jsonschema.Draft202012Validator(contract.schemas[ENVELOPE]).validate(wire)
        # and the schemas refuse what is not the message (the checks above can fail)
        required = contract.schemas[message.name]["required"][0]
        missing = {k: v for k, v in sample.items() if k != required}
        assert not jsonschema.Draft202012Validator(contract.schemas[message.name]).is_valid(missing), message_type
        assert not _message_validator(DOCUMENT, message.name).is_valid({**wire, "payload": missing}), kind
        assert not _message_validator(DOCUMENT, message.name).is_valid({**wire, "message_type": "other"})


def test_a_response_reporting_an_error_passes_without_a_payload() -> None:
    wire = {
        "request_id": "R-1",
        "source_system": "dms",
        "target_system": "1c",
        "message_type": "user_created",
        "payload": {},
        "error": {"code": "not_found", "message": "no such user"},
    }
    assert _message_validator(DOCUMENT, "user_created.v1").is_valid(wire)
    assert not _message_validator(DOCUMENT, "user_created.v1").is_valid({**wire, "error": None})


# --- the snapshot ----------------------------------------------------------------------------------------------------


def test_the_committed_snapshot_is_the_live_contract() -> None:
    live = live_contract(REGISTRY)
    report = compare(load_contract(SNAPSHOT), live)
    if report.breaking:
        pytest.fail(
            "the contract changed incompatibly with contracts/:\n"
            + "\n".join(map(str, report.breaking))
            + "\nKeep it compatible, or raise the message's version (MessageSpec version, with an upcaster "
            "from the previous one); then run `esi contracts export contracts` and commit contracts/."
        )
    on_disk = {str(p.relative_to(SNAPSHOT)): p.read_text(encoding="utf-8") for p in sorted(SNAPSHOT.rglob("*.json"))}
    assert on_disk == live.files(), (
        "contracts/ is out of date (the change is compatible):\n"
        + "\n".join(map(str, report.findings))
        + "\nRun `esi contracts export contracts` and commit contracts/."
    )


# --- the API ---------------------------------------------------------------------------------------------------------


async def test_the_api_serves_the_document_without_credentials(tmp_path: Path) -> None:
    clients = ClientRegistry.from_json(
        json.dumps(
            [
                make_client_entry(
                    "erp",
                    password="erp-pw",
                    send=["*"],
                    hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
                )
            ]
        )
    )
    async with await Store.open(f"sqlite:///{tmp_path}/api.db") as store:
        api = create_app(
            ApiDeps(store=store, on_accepted=lambda row: None, max_pdf_bytes=1024, clients=clients, registry=REGISTRY)
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://esi") as client:
            served = await client.get("/asyncapi.json")
            assert served.status_code == 200
            assert served.headers["content-type"] == "application/json"
            assert served.json() == json.loads(dump(DOCUMENT))
            assert served.json() == json.loads((SNAPSHOT / "asyncapi.json").read_text(encoding="utf-8"))
            assert (await client.get("/requests/R-1")).status_code == 401  # the API itself does want credentials


# --- the CLI ---------------------------------------------------------------------------------------------------------


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_export_writes_stable_files_and_check_accepts_them(tmp_path: Path) -> None:
    out = tmp_path / "contracts"
    (out / "schemas").mkdir(parents=True)
    (out / "schemas" / "gone.v1.json").write_text("{}\n")
    result = _run("contracts", "export", str(out))
    assert result.exit_code == 0, result.output
    assert not (out / "schemas" / "gone.v1.json").exists()
    files = {str(p.relative_to(out)) for p in out.rglob("*.json")}
    assert files == {
        "asyncapi.json",
        "schemas/envelope.json",
        *(f"schemas/{m.name}.json" for m in message_schemas(REGISTRY.catalog)),
    }
    text = (out / "schemas" / "create_user.v1.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    result = _run("contracts", "check", str(out))
    assert result.exit_code == 0, result.output
    assert "contract unchanged" in result.output, result.output


def test_check_fails_on_a_breaking_change_naming_its_path(tmp_path: Path) -> None:
    out = tmp_path / "contracts"
    assert _run("contracts", "export", str(out)).exit_code == 0
    # the snapshot had a field the live contract no longer has: removing it is breaking
    path = out / "schemas" / "create_user.v1.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["properties"]["nickname"] = {"type": "string"}
    schema["properties"]["email"]["maxLength"] = 1000
    path.write_text(dump(schema), encoding="utf-8")
    result = _run("contracts", "check", str(out))
    assert result.exit_code == 1, result.output
    assert "BREAKING  schemas/create_user.v1.json:$.properties.nickname: field 'nickname' removed" in result.output
    assert "BREAKING  schemas/create_user.v1.json:$.properties.email.maxLength" in result.output
    assert "raise the message's version" in result.output


def test_check_allows_an_additive_change_and_asks_for_a_new_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "contracts"
    assert _run("contracts", "export", str(out)).exit_code == 0
    # the snapshot lacked a channel and an optional field the live contract has: both additive
    document = json.loads((out / "asyncapi.json").read_text(encoding="utf-8"))
    del document["channels"]["dms_dead_letter_queue"]
    (out / "asyncapi.json").write_text(dump(document), encoding="utf-8")
    path = out / "schemas" / "create_user.v1.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    del schema["properties"]["phone"]
    path.write_text(dump(schema), encoding="utf-8")
    result = _run("contracts", "check", str(out))
    assert result.exit_code == 0, result.output
    assert (
        "additive  asyncapi.json:$.channels.dms_dead_letter_queue: new channel 'dms_dead_letter_queue'" in result.output
    )
    assert "additive  schemas/create_user.v1.json:$.properties.phone: new optional field 'phone'" in result.output
    assert "esi contracts export" in result.output
    assert _run("contracts", "check", "--strict", str(out)).exit_code == 1


def test_check_without_a_snapshot_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["contracts", "check", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "esi contracts export" in result.output


# --- events ----------------------------------------------------------------------------------------------------------


class OrderChangedWithoutStatus(BaseModel):
    """order_changed with Status dropped and a new required field: what subscribers read is gone."""

    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(alias="Id")
    number: str = Field(alias="Number")
    modified_on: str = Field(alias="ModifiedOn")
    stage: str = Field(alias="Stage")


def test_a_breaking_change_to_an_event_is_caught_and_an_additive_one_is_not() -> None:
    import dataclasses

    crm = REGISTRY.system("crm")
    event = crm.event("order_changed")
    assert event is not None
    changed = dataclasses.replace(event, model=OrderChangedWithoutStatus)
    emits = tuple(changed if e.name == "order_changed" else e for e in crm.emits)
    registry = Registry([dataclasses.replace(crm, emits=emits) if s.code == "crm" else s for s in REGISTRY.systems])
    report = compare(load_contract(SNAPSHOT), live_contract(registry))
    assert {f.path for f in report.breaking} >= {"$.properties.Status", "$.properties.Stage"}, report.breaking
    document = live_contract(REGISTRY).asyncapi
    channel = document["channels"]["crm.event.order_changed"]
    assert "1c_events_queue" in channel["description"]
    assert "receive.1c.order_changed" in document["operations"]
    assert "receive.crm.policy_issued" in document["operations"]
    assert not compare(load_contract(SNAPSHOT), live_contract(REGISTRY)).findings
