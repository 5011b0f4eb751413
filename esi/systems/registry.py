"""The registry of systems: every `System` declaration esi runs with, and what is derived from them.

    catalog        every message type: the requests each system answers and the replies they produce
    queues         one work queue per system, bound to `*.request.<code>.*` if it answers requests and to
                   `*.response.<code>.*` if it sends them (the origin, 1C, receives every reply): data the bus
                   builds its topology from (`esi.bus.topology.build_topology`)
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
from esi.messages.envelope import Kind
from esi.messages.handler import Handler
from esi.store.migrations import Migrations
from esi.systems.spec import SendRoute, System

_T = TypeVar("_T")

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "esi.systems"


class Inbound(NamedTuple):
    """A system's work queue and the routing keys bound to it (what the bus declares for it)."""

    system: str
    queue: str
    bindings: tuple[str, ...]


class RegistryError(ValueError):
    """The declarations do not fit together (a duplicate code, a request nobody answers, a handler missing)."""


class Registry:
    """The systems esi runs with. Immutable once built; every derived view is computed here, once."""

    def __init__(self, systems: Iterable[System]) -> None:
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
        for system in self.systems:
            for request in system.asks:
                if request not in self._answered_by:
                    raise RegistryError(f"{system.code} asks {request!r}, which no registered system answers")
        self.catalog = Catalog(specs)
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
        """Every system's work queue with its bindings, in the registry's order."""
        return tuple(Inbound(s.code, s.queue, self.bindings(s)) for s in self.systems)

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


def load_registry(extra: Sequence[str] = (), *, entry_points_group: str = ENTRY_POINT_GROUP) -> Registry:
    """The systems of the installed packages' entry points (esi's own built-in ones among them) and the `extra`
    specs (`ESI_SYSTEMS`), in a stable order: the origin first, then by code."""
    systems: list[System] = []
    for point in entry_points(group=entry_points_group):
        systems.append(resolve(point.value))
        log.debug("system %s registered by the entry point %s", systems[-1].code, point.name)
    systems += [resolve(spec) for spec in extra if spec.strip()]
    return Registry(sorted(systems, key=lambda s: (not s.origin, s.code)))
