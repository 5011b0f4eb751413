"""The AsyncAPI 3.0.0 document of the bus, generated from the catalog and the topology of the registry of systems.

    channels     one per routing key a system publishes (`1c.request.dms.create_user`, AMQP `is: routingKey` on
                 `main_exchange`; an event's `crm.event.order_changed`), one per work queue (`dms_queue`, `is:
                 queue`), one per subscriber's events queue (`1c_events_queue`) and one per dead-letter queue
    operations   `send.<routing key>`: the system that publishes it (persistent, mandatory);
                 `receive.<system>.<message type>`: the system that consumes it from its work queue (acknowledged)
    messages     `<message_type>.v<version>`: the payload's schema wrapped in the envelope
    schemas      `envelope`, each payload's schema, and the definitions they use (`<owner>.<Definition>`)

Who sends what comes from the systems' declarations: the origin (1C) sends every request some system answers,
another system the requests it `asks` (the CRM asks the DMS `get_policy_info`); the answer goes back to the sender.
Which queue receives a routing key is read from the topology's bindings, as RabbitMQ would route it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import esi
from esi.bus.topology import Topology, WorkQueue, build_topology
from esi.contracts.schemas import ENVELOPE, MessageSchema, accepts_previous, envelope_schema, message_schemas
from esi.messages.envelope import Kind, RoutingKey, event_key
from esi.systems.registry import Registry
from esi.systems.spec import System

__all__ = ["ASYNCAPI_VERSION", "Route", "build_asyncapi", "routes"]

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
_SCHEMAS = "#/components/schemas/"
_DEF_REF = re.compile(r"^#/\$defs/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class Route:
    """One routing key: who publishes it and which work queue receives it."""

    key: RoutingKey
    sender: System
    receiver: WorkQueue


def _package_version() -> str:
    return esi.version()


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes `key` through a binding `pattern` (`*` one word, `#` zero or more)."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def routes(registry: Registry, topology: Topology) -> list[Route]:
    """Every routing key a system publishes, with the queue it lands in, sorted by routing key."""
    found: list[Route] = []
    for sender in registry.systems:
        for request in registry.asks(sender):
            spec = registry.catalog.get(request)
            handler = registry.system(spec.handled_by or "")
            keys = [RoutingKey(sender.code, Kind.REQUEST, handler.code, request)]
            if spec.response_type:
                keys.append(RoutingKey(handler.code, Kind.RESPONSE, sender.code, spec.response_type))
            for key in keys:
                publisher = sender if key.kind is Kind.REQUEST else handler
                queues = [q for q in topology.work_queues if any(topic_matches(b, str(key)) for b in q.bindings)]
                if len(queues) != 1:
                    raise ValueError(f"routing key {key} reaches {len(queues)} work queues, expected exactly one")
                found.append(Route(key, publisher, queues[0]))
    unique = {str(r.key): r for r in found}
    return [unique[k] for k in sorted(unique)]


def _hoist(schema: dict[str, Any], owner: str, into: dict[str, Any]) -> dict[str, Any]:
    """`schema` without `$schema` and `$defs`: its definitions go to `into` as `<owner>.<Definition>`, and its
    `#/$defs/...` references point there (an AsyncAPI document resolves references from its own root)."""
    schema = copy.deepcopy(schema)
    schema.pop("$schema", None)
    definitions = schema.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (m := _DEF_REF.match(ref)):
                node = {**node, "$ref": f"{_SCHEMAS}{owner}.{m['name']}"}
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, definition in definitions.items():
        into[f"{owner}.{name}"] = rewrite(definition)
    hoisted: dict[str, Any] = rewrite(schema)
    return hoisted


def _message(message: MessageSchema) -> dict[str, Any]:
    """The message as it travels: the envelope, with this message's type and payload."""
    spec = message.spec
    fields: dict[str, Any] = {"type": "object", "properties": {"message_type": {"const": message.message_type}}}
    payload = {"$ref": f"{_SCHEMAS}{message.name}"}
    if message.kind is not Kind.RESPONSE:  # a request or an event: its payload, always
        fields["properties"]["payload"] = payload
        fields["required"] = ["payload"]
        wrapped: dict[str, Any] = {"allOf": [{"$ref": f"{_SCHEMAS}{ENVELOPE}"}, fields]}
    else:
        # a response reports either its payload or an error (then its payload is empty)
        wrapped = {
            "allOf": [
                {"$ref": f"{_SCHEMAS}{ENVELOPE}"},
                fields,
                {
                    "anyOf": [
                        {"properties": {"payload": payload}, "required": ["payload"]},
                        {"properties": {"error": {"type": "object"}}, "required": ["error"]},
                    ]
                },
            ]
        }
    summary = (spec.model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    versions = [message.version - 1, message.version] if accepts_previous(spec) else [message.version]
    body: dict[str, Any] = {
        "name": message.message_type,
        "title": f"{message.message_type} v{message.version}",
        "summary": summary,
        "contentType": "application/json",
        "correlationId": {
            "description": "the request it belongs to, the same on its answer",
            "location": "$message.payload#/request_id",
        },
        "payload": wrapped,
        "bindings": {"amqp": {"messageType": message.message_type, "bindingVersion": AMQP_BINDING_VERSION}},
        "x-esi-kind": message.kind.value,
        "x-esi-version": message.version,
        "x-esi-accepted-versions": versions,
    }
    if spec.handled_by:
        body["x-esi-handled-by"] = spec.handled_by
    if spec.response_type:
        body["x-esi-response"] = spec.response_type
    return body


def _exchange(topology: Topology) -> dict[str, Any]:
    return {"name": topology.exchange, "type": "topic", "durable": True, "autoDelete": False}


def _queue_binding(name: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False},
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def _message_refs(names: list[str]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/messages/{name}"} for name in sorted(set(names))}


def build_asyncapi(registry: Registry, topology: Topology | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the bus the registry's systems make (with the default topology when not
    given: the retry ladder is described, not listed, so the document does not depend on ESI_RETRY_DELAYS)."""
    topology = topology or build_topology(registry.queues())
    messages = {m.message_type: m for m in message_schemas(registry.catalog)}
    schemas: dict[str, Any] = {}
    schemas[ENVELOPE] = _hoist(envelope_schema(), ENVELOPE, schemas)
    for m in messages.values():
        schemas[m.name] = _hoist(m.schema, m.name, schemas)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    by_queue: dict[str, list[Route]] = {}
    for route in routes(registry, topology):
        key, name = str(route.key), messages[route.key.message_type].name
        by_queue.setdefault(route.receiver.name, []).append(route)
        channels[key] = {
            "address": key,
            "title": f"{route.key.message_type}: {route.key.source} → {route.key.target}",
            "description": f"Published on `{topology.exchange}` with routing key `{key}`; bound to "
            f"`{route.receiver.name}`.",
            "messages": _message_refs([name]),
            "bindings": {
                "amqp": {"is": "routingKey", "exchange": _exchange(topology), "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
        operations[f"send.{key}"] = {
            "action": "send",
            "title": f"{route.sender.title} sends {route.key.message_type} to "
            f"{registry.system(route.key.target).title}",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{name}"}],
            "tags": [{"name": route.sender.code}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "x-esi-system": route.sender.code,
        }
    #: events: each subscriber's events queue receives its copy (queue name → (routing key, event type))
    by_events_queue: dict[str, list[tuple[str, str]]] = {}
    for source, event in registry.events:
        key, name = event_key(source, event.name), messages[event.name].name
        sender = registry.system(source)
        queues = [q for q in topology.work_queues if q.events and key in q.bindings]
        for queue in queues:
            by_events_queue.setdefault(queue.name, []).append((key, event.name))
        channels[key] = {
            "address": key,
            "title": f"{event.name}: an event of {sender.title}",
            "description": f"Published on `{topology.exchange}` with routing key `{key}`; a copy for each "
            f"subscriber: {', '.join(f'`{q.name}`' for q in queues) or 'none on this site'}. Identity: "
            f"`{event.id_field}` and the version `{event.version_field}`.",
            "messages": _message_refs([name]),
            "bindings": {
                "amqp": {"is": "routingKey", "exchange": _exchange(topology), "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
        operations[f"send.{key}"] = {
            "action": "send",
            "title": f"{sender.title} announces {event.name}",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{name}"}],
            "tags": [{"name": sender.code}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "x-esi-system": sender.code,
        }
    for queue in topology.work_queues:
        system = registry.system(queue.system)
        arriving = by_queue.get(queue.name, [])
        events = by_events_queue.get(queue.name, [])
        names = [messages[r.key.message_type].name for r in arriving] + [messages[t].name for _, t in events]
        channels[queue.name] = {
            "address": queue.name,
            "title": f"{system.title}'s {'events' if queue.events else 'work'} queue",
            "description": (
                f"Quorum queue bound to `{topology.exchange}` by {', '.join(f'`{b}`' for b in queue.bindings)}. "
                f"A failed delivery waits in a hold queue `{queue.name}.retry.<delay>` (one per step of "
                f"ESI_RETRY_DELAYS) and comes back; one that cannot be handled goes through "
                f"`{queue.dead_letter_exchange}` to `{queue.dead_letter_queue}`."
            ),
            "messages": _message_refs(names),
            "bindings": _queue_binding(queue.name),
            "x-esi-binding-keys": list(queue.bindings),
        }
        channels[queue.dead_letter_queue] = {
            "address": queue.dead_letter_queue,
            "title": f"{system.title}'s dead letters" + (" (events)" if queue.events else ""),
            "description": f"What `{queue.name}` could not handle, kept until an operator replays or purges it "
            f"(`esi dlq`, `/dead-letters`).",
            "messages": _message_refs(names),
            "bindings": _queue_binding(queue.dead_letter_queue),
        }
        published = [(str(r.key), r.key.message_type) for r in arriving] + events
        for message_type in sorted({t for _, t in published}):
            name = messages[message_type].name
            sources = sorted(k for k, t in published if t == message_type)
            operations[f"receive.{system.code}.{message_type}"] = {
                "action": "receive",
                "title": f"{system.title} receives {message_type}",
                "description": f"Consumed from `{queue.name}`; published as {', '.join(f'`{s}`' for s in sources)}.",
                "channel": {"$ref": f"#/channels/{queue.name}"},
                "messages": [{"$ref": f"#/channels/{queue.name}/messages/{name}"}],
                "tags": [{"name": system.code}],
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                "x-esi-system": system.code,
            }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "esi bus",
            "version": _package_version(),
            "description": (
                "The messages esi's systems exchange over RabbitMQ. Every message is a JSON envelope published on "
                f"the topic exchange `{topology.exchange}` with the routing key "
                "`<source>.<request|response>.<target>.<message_type>`, or `<source>.event.<type>` for an event; "
                "each system consumes its own work queue, and each subscriber its own events queue. "
                "Payload schemas are versioned `<message_type>.v<version>`; a consumer also accepts the previous "
                "version where `x-esi-accepted-versions` lists it."
            ),
            "tags": [{"name": s.code, "description": s.title} for s in registry.systems],
        },
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "The RabbitMQ broker (ESI_AMQP_URL).",
                "variables": {"host": {"default": "127.0.0.1:5672", "description": "host:port of the broker"}},
            },
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": {m.name: _message(m) for m in messages.values()},
        },
    }


def iter_refs(node: Any) -> Iterator[str]:
    """Every `$ref` in a document (for tests and the compatibility check)."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from iter_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_refs(value)
