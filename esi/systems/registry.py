"""The registry of systems: every `System` declaration esi runs with, and what is derived from them.

    catalog        every message type: the requests each system answers and the replies they produce
    queues         one work queue per system, bound to `*.request.<code>.*` if it answers requests and to
                   `*.response.<code>.*` if it sends them (the origin, 1C, receives every reply), and one events
                   queue per subscriber, bound to `<source>.event.<type>` of each event it subscribes to: data the
                   bus builds its topology from (`esi.bus.topology.build_topology`)
    subscriptions  who subscribes to which event: the declarations (`System.subscribes`), with what the site's
                   settings add or remove (`ESI_SUBSCRIPTIONS`: `1c:crm.contact_changed,-crm:dms.policy_issued`)
    targets        the systems 1C may send requests to (the HTTP API's targets)
    routed_to      the message types arriving on a system's queue: its handlers must cover exactly these
    services/fakes the names `esi run` accepts
    migrations     the systems' own tables

Every system registers the same way, the built-in ones included: an `esi.systems` entry point of an installed
package (esi's own are in its pyproject.toml), or `ESI_SYSTEMS` (`module:attribute` of a `System`) for one not
installed (`load_registry`). The registry is built once, at the edge (`esi.runtime`), and passed to whatever
needs it; no module holds a current one.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import NamedTuple, TypeVar

from esi.messages.catalog import Catalog, MessageSpec
from esi.messages.envelope import Kind, event_key
from esi.messages.handler import Handler
from esi.store.migrations import Migrations
from esi.systems.spec import Event, SendRoute, System

_T = TypeVar("_T")

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "esi.systems"


class Inbound(NamedTuple):
    """A system's work queue (or its events queue) and the routing keys bound to it (what the bus declares for it)."""

    system: str
    queue: str
    bindings: tuple[str, ...]
    #: an events queue: one subscriber's copy of the events it subscribes to
    events: bool = False


class RegistryError(ValueError):
    """The declarations do not fit together (a duplicate code, a request nobody answers, a handler missing)."""


class Registry:
    """The systems esi runs with. Immutable once built; every derived view is computed here, once."""

    def __init__(self, systems: Iterable[System], subscriptions: Sequence[str] = ()) -> None:
        self.systems: tuple[System, ...] = tuple(systems)
        self._by_code = _unique({s.code: s for s in self.systems}, [s.code for s in self.systems], "system code")
        self._by_service = _unique(
            {s.service: s for s in self.systems}, [s.service for s in self.systems], "service name"
        )
        _unique({}, [s.queue for s in self.systems], "queue name")
        origins = [s for s in self.systems if s.origin]
        if not self.systems:
            raise RegistryError(
                "no systems are registered: is esi installed (`pip install -e .` registers the "
                "built-in ones as entry points of the group 'esi.systems')?"
            )
        if len(origins) != 1:
            raise RegistryError(
                f"exactly one origin system is needed (the one whose API sends requests), "
                f"found {len(origins)}: {[s.code for s in origins]}"
            )
        self.origin = origins[0]
        self._answered_by: dict[str, System] = {}
        specs: list[MessageSpec] = []
        for system in self.systems:
            for op in system.answers:
                for message_type in (op.request, op.reply):
                    if any(spec.message_type == message_type for spec in specs):
                        raise RegistryError(f"message type {message_type!r} of {system.code} is declared twice")
                self._answered_by[op.request] = system
                specs.append(
                    MessageSpec(
                        op.request,
                        Kind.REQUEST,
                        op.model,
                        handled_by=system.code,
                        response_type=op.reply,
                        upload=op.upload,
                    )
                )
                specs.append(MessageSpec(op.reply, Kind.RESPONSE, op.reply_model))
        self._emitted: dict[str, tuple[System, Event]] = {}
        for system in self.systems:
            for event in system.emits:
                if any(spec.message_type == event.name for spec in specs):
                    raise RegistryError(f"message type {event.name!r} of {system.code} is declared twice")
                self._emitted[f"{system.code}.{event.name}"] = (system, event)
                specs.append(MessageSpec(event.name, Kind.EVENT, event.model, emitted_by=system.code))
        for system in self.systems:
            for request in system.asks:
                if request not in self._answered_by:
                    raise RegistryError(f"{system.code} asks {request!r}, which no registered system answers")
        self.catalog = Catalog(specs)
        self.subscriptions: dict[str, tuple[str, ...]] = self._subscriptions(subscriptions)
        self.fakes: dict[str, System] = _unique(
            {s.fake.service: s for s in self.systems if s.fake is not None},
            [s.fake.service for s in self.systems if s.fake is not None] + list(self._by_service),
            "service name",
        )
        self.key_fields: tuple[str, ...] = tuple(dict.fromkeys(f for s in self.systems for f in s.key_fields))
        self.send_routes: tuple[SendRoute, ...] = tuple(r for s in self.systems for r in s.send_routes)

    # --- lookups ---------------------------------------------------------------------------------------------

    def system(self, code: str) -> System:
        try:
            return self._by_code[code]
        except KeyError:
            raise KeyError(f"unknown system {code!r}; known: {', '.join(self.codes)}") from None

    def by_service(self, service: str) -> System:
        return self._by_service[service]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._by_code)

    @property
    def services(self) -> tuple[str, ...]:
        """The adapters' service names, the origin first."""
        return tuple(s.service for s in sorted(self.systems, key=lambda s: not s.origin))

    @property
    def targets(self) -> tuple[str, ...]:
        """The systems that answer requests: where 1C's requests may go."""
        return tuple(s.code for s in self.systems if s.answers)

    def asks(self, system: System) -> tuple[str, ...]:
        """The requests `system` sends: for the origin, every request some system answers."""
        if system.origin:
            return tuple(self._answered_by)
        return system.asks

    def routed_to(self, system: System) -> frozenset[str]:
        """The message types arriving on `system`'s queue: the requests it answers, the replies to its own."""
        replies = {self._answered_by[r].operation(r).reply for r in self.asks(system)}  # type: ignore[union-attr]
        return frozenset({op.request for op in system.answers} | replies)

    def bindings(self, system: System) -> tuple[str, ...]:
        keys = []
        if system.answers:
            keys.append(f"*.request.{system.code}.*")
        if self.asks(system):
            keys.append(f"*.response.{system.code}.*")
        return tuple(keys)

    # --- events ---------------------------------------------------------------------------------------------------

    def _subscriptions(self, overrides: Sequence[str]) -> dict[str, tuple[str, ...]]:
        # a declared subscription to a system this site does not run is left out (1C subscribes to Creatio's orders:
        # a site without Creatio still runs); one to an event its source does not emit is a mistake, refused below
        chosen = {
            s.code: [e for e in dict.fromkeys(s.subscribes) if e.partition(".")[0] in self._by_code]
            for s in self.systems
        }
        for item in (o.strip() for o in overrides):
            if not item:
                continue
            remove = item.startswith("-")
            subscriber, sep, event = item.lstrip("-+").partition(":")
            if not sep or subscriber not in self._by_code:
                raise RegistryError(
                    f"subscription {item!r} must be '[-]<subscriber>:<source>.<type>' with a registered subscriber "
                    f"({', '.join(self.codes)})"
                )
            if remove:
                chosen[subscriber] = [e for e in chosen[subscriber] if e != event]
            elif event not in chosen[subscriber]:
                chosen[subscriber].append(event)
        for subscriber, events in chosen.items():
            for event in events:
                if event not in self._emitted:
                    raise RegistryError(
                        f"{subscriber} subscribes to {event!r}, which no registered system emits; known: "
                        f"{', '.join(sorted(self._emitted)) or 'none'}"
                    )
            if events and self._by_code[subscriber].on_event is None:
                raise RegistryError(f"{subscriber} subscribes to {', '.join(events)} but declares no on_event handlers")
        return {code: tuple(events) for code, events in chosen.items() if events}

    def event(self, source: str, event_type: str) -> Event:
        """The declaration of `source`'s event `event_type`; KeyError naming the known ones."""
        try:
            return self._emitted[f"{source}.{event_type}"][1]
        except KeyError:
            known = ", ".join(e.name for e in self.system(source).emits) if source in self._by_code else ""
            raise KeyError(f"{source} emits no event {event_type!r}" + (f"; known: {known}" if known else "")) from None

    @property
    def events(self) -> tuple[tuple[str, Event], ...]:
        """Every declared event with its source, as `(source, event)`."""
        return tuple((system.code, event) for system, event in self._emitted.values())

    def subscribers(self, source: str, event_type: str) -> tuple[str, ...]:
        """The systems subscribed to `source`'s `event_type`, in the registry's order."""
        name = f"{source}.{event_type}"
        return tuple(code for code, events in self.subscriptions.items() if name in events)

    def subscribed_by(self, system: System) -> frozenset[str]:
        """The event types arriving on `system`'s events queue."""
        return frozenset(e.partition(".")[2] for e in self.subscriptions.get(system.code, ()))

    def event_handlers(self, system: System, handlers: Mapping[str, Handler]) -> dict[str, Handler]:
        """`system`'s event handlers by event type, for its events queue: refused at start-up unless every
        subscription has one (by `<source>.<type>` or `*`)."""
        chosen: dict[str, Handler] = {}
        for name in self.subscriptions.get(system.code, ()):
            handler = handlers.get(name) or handlers.get("*")
            if handler is None:
                raise RegistryError(f"{system.code} subscribes to {name} but has no handler for it")
            chosen[name.partition(".")[2]] = handler
        return chosen

    def check_handlers(self, system: System, handlers: Mapping[str, Handler]) -> None:
        """Refuse, at start-up, handlers that do not cover exactly what reaches the system's queue."""
        expected = self.routed_to(system)
        missing, extra = sorted(expected - set(handlers)), sorted(set(handlers) - expected)
        if missing or extra:
            raise RegistryError(
                f"the handlers of {system.code} do not match what reaches {system.queue}: "
                + "; ".join(
                    filter(
                        None,
                        [
                            f"missing {', '.join(missing)}" if missing else None,
                            f"never routed there: {', '.join(extra)}" if extra else None,
                        ],
                    )
                )
            )

    def queues(self) -> tuple[Inbound, ...]:
        """Every system's work queue with its bindings, in the registry's order, then each subscriber's events
        queue bound to the keys of its events."""
        work = tuple(Inbound(s.code, s.queue, self.bindings(s)) for s in self.systems)
        events = tuple(
            Inbound(
                s.code, s.events_queue, tuple(event_key(*e.split(".", 1)) for e in self.subscriptions[s.code]), True
            )
            for s in self.systems
            if s.code in self.subscriptions
        )
        return work + events

    @property
    def migrations(self) -> tuple[Migrations, ...]:
        """The systems' own tables' migrations."""
        return tuple(s.tables for s in self.systems if s.tables is not None)

    def business_keys(self, payload: Mapping[str, object] | None) -> list[str]:
        """The values of a payload (and of the payloads nested in it) that people search requests by."""
        if not payload:
            return []
        keys = [str(payload[f]) for f in self.key_fields if payload.get(f)]
        for value in payload.values():
            if isinstance(value, Mapping):
                keys += [str(value[f]) for f in self.key_fields if value.get(f)]
        return list(dict.fromkeys(keys))


def _unique(mapping: dict[str, _T], names: list[str], what: str) -> dict[str, _T]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RegistryError(f"{what} {name!r} is declared twice")
        seen.add(name)
    return mapping


def resolve(spec: str) -> System:
    """The `System` named by `module:attribute` (or a module with a `SYSTEM` attribute)."""
    module_name, _, attribute = spec.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import the system module {module_name!r} (ESI_SYSTEMS): {exc}") from exc
    value = getattr(module, attribute or "SYSTEM", None)
    if not isinstance(value, System):
        raise RegistryError(f"{spec!r} does not name an esi System (found {type(value).__name__})")
    return value


def load_registry(
    extra: Sequence[str] = (), *, entry_points_group: str = ENTRY_POINT_GROUP, subscriptions: Sequence[str] = ()
) -> Registry:
    """The systems of the installed packages' entry points (esi's own built-in ones among them) and the `extra`
    specs (`ESI_SYSTEMS`), in a stable order: the origin first, then by code; `subscriptions` are the site's
    changes to who subscribes to what (`ESI_SUBSCRIPTIONS`)."""
    systems: list[System] = []
    for point in entry_points(group=entry_points_group):
        systems.append(resolve(point.value))
        log.debug("system %s registered by the entry point %s", systems[-1].code, point.name)
    systems += [resolve(spec) for spec in extra if spec.strip()]
    return Registry(sorted(systems, key=lambda s: (not s.origin, s.code)), subscriptions)
