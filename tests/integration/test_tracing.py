"""OpenTelemetry tracing: one trace per request across the API, the relay, both adapters and back, exported over
OTLP/HTTP to a receiver of the test's own; and with tracing off, nothing of it on the wire."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from esi import tracing
from esi.bus.publisher import Publisher
from esi.bus.relay import OutboxRelay
from esi.messages import Envelope
from esi.store import Store
from esi.store.records import OutboxRow
from esi.testing import EsiSystem, Vhost, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration

#: span kinds as OTLP numbers them
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: POST /v1/traces, protobuf; keeps every span it was sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name for it
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(  # noqa: PERF401 - per resource, per scope: the loops read better than one comprehension
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "service": resource.get("service.name"),
                            "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        with self._lock:
            self.spans.extend(spans)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def find(self, **attributes: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if all(s["attributes"].get(k) == v for k, v in attributes.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def traced_system(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[EsiSystem]:
    """Each adapter in a process of its own, every process exporting its spans to the receiver."""
    workdir = tmp_path_factory.mktemp("esi-tracing")
    v = Vhost()
    system = EsiSystem(
        workdir=workdir,
        amqp_url=v.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "ESI_LOG_LEVEL": "DEBUG",
        },
    )
    try:
        system.start_all({"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec"], "crm": ["crm"], "dms": ["dms"]})
        for name in ("crm", "dms"):
            system.wait_http(f"{system.processes[name].health_url}/readyz")
        yield system
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), f"esi did not stop cleanly: {codes}"
    except BaseException:
        print(system.logs()[-5000:])
        raise
    finally:
        for p in system.processes.values():
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
        v.delete()


#: (service, kind, name) of the spans one update_order_status with a policy lookup must have, at least
EXPECTED = [
    ("esi-onec", SERVER, "POST /send_to_crm"),
    ("esi-onec", PRODUCER, "publish 1c.request.crm.update_order_status"),
    ("esi-crm", CONSUMER, "process 1c.request.crm.update_order_status"),
    ("esi-crm", INTERNAL, "crm find_order"),
    ("esi-crm", INTERNAL, "crm find_status_id"),
    ("esi-crm", INTERNAL, "crm set_order_status"),
    ("esi-crm", CLIENT, "PATCH"),
    ("esi-crm", PRODUCER, "publish crm.request.dms.get_policy_info"),
    ("esi-dms", CONSUMER, "process crm.request.dms.get_policy_info"),
    ("esi-dms", INTERNAL, "dms get_policy"),
    ("esi-dms", CLIENT, "GET"),
    ("esi-dms", PRODUCER, "publish dms.response.crm.policy_info_response"),
    ("esi-crm", CONSUMER, "process dms.response.crm.policy_info_response"),
    ("esi-crm", PRODUCER, "publish crm.response.1c.order_status_updated"),
    ("esi-onec", CONSUMER, "process crm.response.1c.order_status_updated"),
]

#: each messaging hop's parent: (child name, parent name)
CHAIN = [
    ("publish 1c.request.crm.update_order_status", "POST /send_to_crm"),
    ("process 1c.request.crm.update_order_status", "publish 1c.request.crm.update_order_status"),
    ("crm set_order_status", "process 1c.request.crm.update_order_status"),
    ("publish crm.request.dms.get_policy_info", "process 1c.request.crm.update_order_status"),
    ("process crm.request.dms.get_policy_info", "publish crm.request.dms.get_policy_info"),
    ("dms get_policy", "process crm.request.dms.get_policy_info"),
    ("publish dms.response.crm.policy_info_response", "process crm.request.dms.get_policy_info"),
    ("process dms.response.crm.policy_info_response", "publish dms.response.crm.policy_info_response"),
    ("publish crm.response.1c.order_status_updated", "process dms.response.crm.policy_info_response"),
    ("process crm.response.1c.order_status_updated", "publish crm.response.1c.order_status_updated"),
]


def test_one_trace_follows_a_request_through_every_process(traced_system: EsiSystem, receiver: Receiver) -> None:
    request_id = unique("TRACE")
    response = traced_system.post(
        "/send_to_crm",
        {
            "request_id": request_id,
            "order_id": "ORD9876",
            "status": "Shipped",
            "needs_policy_info": True,
            "policy_number": "POL-0001",
        },
    )
    assert response.status_code == 202, response.text
    record = traced_system.wait_final(request_id)
    assert record["status"] == "completed"
    assert record["response"]["policy_info"]["policy_number"] == "POL-0001"

    roots = wait_until(
        lambda: receiver.find(**{"esi.request_id": request_id, "http.route": "/send_to_crm"}),
        timeout=20,
        what="the API's span",
    )
    assert len(roots) == 1
    root = roots[0]
    trace_id = root["trace_id"]

    def complete() -> list[dict[str, Any]] | None:
        spans = receiver.trace(trace_id)
        have = {(s["service"], s["kind"], s["name"]) for s in spans}
        ids = {s["span_id"] for s in spans}
        linked = all(s["parent_span_id"] in ids for s in spans if s is not root)
        return spans if set(EXPECTED) <= have and linked else None

    spans = wait_until(complete, timeout=20, what=f"every span of trace {trace_id}")
    # one root: the POST; every other span's parent is a span of the same trace, across the four processes
    assert [s for s in spans if not s["parent_span_id"]] == [root]
    assert {s["service"] for s in spans} == {"esi-onec", "esi-crm", "esi-dms"}
    by_name = {s["name"]: s for s in spans}
    by_id = {s["span_id"]: s for s in spans}
    for child, parent in CHAIN:
        assert by_id[by_name[child]["parent_span_id"]]["name"] == parent, f"{child}'s parent is not {parent}"
    assert root["attributes"]["http.request.method"] == "POST"
    assert root["attributes"]["http.response.status_code"] == 202

    # messaging spans follow the semantic conventions
    for span in spans:
        if span["kind"] not in (PRODUCER, CONSUMER):
            continue
        attributes = span["attributes"]
        assert attributes["messaging.system"] == "rabbitmq"
        assert attributes["messaging.destination.name"] == "main_exchange"
        assert attributes["messaging.rabbitmq.destination.routing_key"] == span["name"].split(" ", 1)[1]
        assert attributes["messaging.message.id"]
        assert attributes["messaging.operation.type"] == ("send" if span["kind"] == PRODUCER else "process")
        assert attributes["esi.request_id"] == request_id
    assert by_name["process 1c.request.crm.update_order_status"]["attributes"]["esi.outcome"] == "ok"
    # the consumer of a publish got the very message the producer span sent
    assert (
        by_name["process crm.request.dms.get_policy_info"]["attributes"]["messaging.message.id"]
        == by_name["publish crm.request.dms.get_policy_info"]["attributes"]["messaging.message.id"]
    )

    # HTTP calls to Creatio and the DMS: method, URL, status, under the call that made them
    clients = [s for s in spans if s["kind"] == CLIENT]
    for span in clients:
        assert span["attributes"]["http.request.method"] == span["name"]
        assert span["attributes"]["url.full"].startswith(("http://127.0.0.1:", "http://localhost:"))
        assert 200 <= span["attributes"]["http.response.status_code"] < 300
        assert by_id[span["parent_span_id"]]["kind"] == INTERNAL
    dms_get = next(s for s in clients if s["service"] == "esi-dms")
    assert "/policies/POL-0001" in dms_get["attributes"]["url.full"]
    assert by_id[dms_get["parent_span_id"]]["name"] == "dms get_policy"
    patch = next(s for s in clients if s["name"] == "PATCH")
    assert by_id[patch["parent_span_id"]]["name"] == "crm set_order_status"

    # the trace id is on every timeline event of the request and on the log lines written for it
    # each process writes its events in batches (every 100 ms): the last ones may land a moment after the spans
    def timeline() -> list[dict[str, Any]] | None:
        found = httpx.get(f"{traced_system.api_url}/requests/{request_id}/timeline", timeout=10).json()["events"]
        return found if len(found) >= 14 else None

    events = wait_until(timeline, timeout=15, interval=0.1, what="the request's 14 timeline events")
    assert {(e["service"], e["event"], (e.get("detail") or {}).get("trace_id")) for e in events} == {
        (e["service"], e["event"], trace_id) for e in events
    }
    lines = [json.loads(line) for line in traced_system.logs().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line.get("request_id") == request_id]
    assert {line["service"] for line in ours if "service" in line} >= {"crm", "dms", "onec"}
    assert ours
    assert all(line.get("trace_id") == trace_id for line in ours), [
        line for line in ours if line.get("trace_id") != trace_id
    ][:3]


def test_a_traceparent_sent_by_the_client_is_the_root(traced_system: EsiSystem, receiver: Receiver) -> None:
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id = unique("TRACE-IN")
    response = traced_system.post(
        "/send_to_dms",
        {"request_id": request_id, "user_id": unique("U"), "name": "Трассировка", "email": "t@example.com"},
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
    )
    assert response.status_code == 202
    assert traced_system.wait_final(request_id)["status"] == "completed"
    server = wait_until(
        lambda: receiver.find(**{"esi.request_id": request_id, "http.route": "/send_to_dms"}),
        timeout=20,
        what="the API's span",
    )[0]
    assert server["trace_id"] == caller_trace
    assert server["parent_span_id"] == caller_span
    wait_until(
        lambda: any(s["name"] == "process dms.response.1c.user_created" for s in receiver.trace(caller_trace)),
        timeout=20,
        what="the answer's span in the caller's trace",
    )


async def test_the_outbox_keeps_a_request_trace_context(tmp_path: Path) -> None:
    """The context stored with an outbox row comes back with it, for a relay that publishes it later (the sweep)."""
    store = await Store.open(f"sqlite:///{tmp_path}/esi.db")
    try:
        carrier = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
        await store.requests.accept(
            request_id="R1",
            source="1c",
            target="dms",
            message_type="create_user",
            payload_hash="h",
            message_id="M1",
            routing_key="1c.request.dms.create_user",
            body=b"{}",
            trace_context=carrier,
        )
        await store.requests.accept(
            request_id="R2",
            source="1c",
            target="dms",
            message_type="create_user",
            payload_hash="h",
            message_id="M2",
            routing_key="1c.request.dms.create_user",
            body=b"{}",
        )
        assert [(r.message_id, r.trace_context) for r in await store.outbox.pending()] == [
            ("M1", carrier),
            ("M2", None),
        ]
    finally:
        await store.aclose()


class _Outbox:
    """The relay's store: rows in memory."""

    def __init__(self, rows: list[OutboxRow]) -> None:
        self.rows = rows
        self.sent: list[OutboxRow] = []

    async def claim(
        self, *, limit: int, fresh_s: float, lease_s: float, mine: list[str] | None = None
    ) -> list[OutboxRow]:
        return [r for r in self.rows if r not in self.sent][:limit]

    async def release(self, rows: list[OutboxRow]) -> None:
        pass

    async def mark_sent(self, rows: list[OutboxRow]) -> None:
        self.sent.extend(rows)


async def test_with_tracing_off_messages_carry_no_trace_context(vhost: Vhost) -> None:
    assert not tracing.enabled  # nothing in the test process configured it
    connection = await aio_pika.connect(vhost.url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(exclusive=True)
        publisher = Publisher(channel, exchange="", timeout=10)
        envelope = Envelope(
            request_id="OFF-1", source_system="crm", target_system="1c", message_type="order_status_updated"
        )
        await publisher.publish(envelope, queue.name)
        relay = OutboxRelay(
            store=_Outbox([OutboxRow(message_id="OFF-2", request_id="OFF-2", routing_key=queue.name, body=b"{}")]),
            publisher=publisher,
            exchange="",
        )
        assert await relay.drain_once() == 1
        got = []
        for _ in range(2):
            message = await queue.get(timeout=10)
            await message.ack()
            got.append(message)
        assert [m.message_id for m in got] == [envelope.message_id, "OFF-2"]
        for message in got:
            assert not {"traceparent", "tracestate"} & set(message.headers or {}), message.headers
    finally:
        await connection.close()
