"""How an external system is declared: one `System` value per system, in `esi/systems/<code>/__init__.py`.

A declaration says everything the rest of esi derives from it:

- its wire code (`dms`), the service that runs its adapter (`esi run dms`) and its work queue (`dms_queue`);
- the requests it answers (`Operation`: the request's type and payload model, the reply's type and model), and the
  requests it sends to other systems (`asks`: their replies come back to its own queue);
- its settings (a `SystemSettings` subclass with its own environment prefix, e.g. `DMS_`), the client built from
  them, and the handlers built over that client;
- its fake (a demo/test server), the payload fields people search requests by, its HTTP routes of the original
  system (`/send_to_dms`), and its own tables with their migrations;
- the events it emits (`Event`: `<code>.event.<type>`, its payload model, the record's id and version fields, its
  business keys), the events it subscribes to (`subscribes`: `<source>.<type>`) and the handlers that take them in
  (`on_event`); a site adds or removes subscriptions in its settings (`ESI_SUBSCRIPTIONS`), not in code.

`esi.systems.registry.Registry` derives the catalog, the work queues, the ingress targets, the 1C side's expected
replies, the runtime wiring and readiness from the declarations; nothing else names a system.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from esi.config import FileSecretsSettings
from esi.messages.catalog import Upload
from esi.messages.handler import Handler

if TYPE_CHECKING:
    from fastapi import FastAPI

    from esi.store import Migrations, Store
    from esi.store.events import EventRecorder
    from esi.systems.calls import Guarded

#: a system's code on the wire: lower case, as routing keys carry it ("1c", "dms", "crm")
CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
#: the default limit of calls under way at once to one system, per adapter process: a limit that protects the
#: system, not one sized by the prefetch (32 calls carry 160 requests/s to a system answering in 200 ms)
DEFAULT_MAX_CONCURRENCY = 32


class SystemSettings(FileSecretsSettings):
    """What every external system's adapter reads; a subclass sets `env_prefix` (`DMS_`) and adds its own fields.

    Fields read `<PREFIX><NAME>` from the environment or `.env`: `DMS_URL`, `DMS_TIMEOUT`, `DMS_MAX_CONCURRENCY`,
    `DMS_CA_BUNDLE`, ...; or from a file, as `Settings` does (`<PREFIX><NAME>_FILE`, the secrets directory:
    `esi.config.with_secret_files`).
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    #: the deployment's mode, as ESI_ENV gives it: production refuses a system's demo secrets
    env: Literal["demo", "production"] = Field("demo", validation_alias="ESI_ENV")
    url: str = Field("http://127.0.0.1:8000", description="the system's base URL")
    timeout: float = Field(10.0, gt=0, description="seconds per HTTP call")
    max_concurrency: int = Field(
        DEFAULT_MAX_CONCURRENCY, ge=1, le=10_000, description="calls under way at once, per adapter process"
    )
    ca_bundle: str | None = Field(None, description="a CA bundle for HTTPS to the system")
    rate_limit: float | None = Field(
        None,
        gt=0,
        description="calls started per second, per adapter process (the system's published quota); unset: no limit",
    )
    breaker_failures: int = Field(5, ge=1, le=1000, description="transient failures in a row that open the breaker")
    breaker_probe_max: float = Field(
        30.0, gt=0, le=3600, description="longest wait between two probes of a system that is down"
    )
    fake_port: int = Field(8000, description="where the system's fake listens (`esi run --with-fakes`)")

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable that sets `field_name`."""
        info = cls.model_fields[field_name]
        alias = info.validation_alias
        if isinstance(alias, str):
            return alias.upper()
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0]).upper()
        return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()

    @staticmethod
    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


@dataclass(frozen=True)
class Operation:
    """A request a system answers, and the reply it produces."""

    request: str
    model: type[BaseModel]
    reply: str
    reply_model: type[BaseModel]
    upload: Upload | None = None


@dataclass(frozen=True)
class Event:
    """An event a system emits (`<code>.event.<type>` on the main exchange), for every system subscribing to it.

    The payload names the record (`id_field`: Creatio's `Id`, a policy number) and the source's version of it
    (`version_field`: Creatio's `ModifiedOn`, a DMS revision): esi takes one change of one record once (the pair is
    its identity), and a subscriber never ends with an older version of a record after a newer one (events of one
    `entity`, e.g. `policy_issued` and `policy_cancelled` of one policy, are ordered by version).
    """

    name: str
    model: type[BaseModel]
    id_field: str
    version_field: str
    #: what kind of record it tells about (`order`, `policy`); events of one entity and id share an order
    entity: str = ""
    #: payload fields people search by (the business keys recorded with it)
    key_fields: tuple[str, ...] = ()

    @property
    def stream(self) -> str:
        return self.entity or self.name


@dataclass(frozen=True)
class SendRoute:
    """An HTTP route of the original system that sends one system a request (`POST /send_to_dms`): a
    `default_message_type` request, or the one the body's `message_type` names."""

    path: str
    target: str
    default_message_type: str
    #: the default request's payload model, for the OpenAPI document
    body_model: type[BaseModel]
    summary: str = ""
    #: the OpenAPI description; a generic one when not given
    description: str | None = None

    @property
    def name(self) -> str:
        """The operation's name: the path's words (`/send_to_dms` → `send_to_dms`)."""
        return self.path.strip("/").replace("/", "_").replace("-", "_")


@dataclass(frozen=True)
class Fake:
    """A demo and test stand-in for the system: an ASGI app built from the system's settings.

    It listens on the settings' `fake_port` (and `ESI_FAKE_HOST`); the system's `url` points at it by default.
    """

    service: str
    #: from the system's settings (its own `SystemSettings` subclass) to the app
    app: Callable[[Any], FastAPI]


class Systems(Protocol):
    """What a system's handlers may ask of the registry of every system (`esi.systems.registry.Registry`)."""

    def routed_to(self, system: System) -> frozenset[str]:
        """The message types arriving on `system`'s queue."""
        ...

    def business_keys(self, payload: Mapping[str, object] | None) -> list[str]:
        """The values of a payload that people search requests by."""
        ...

    def event(self, source: str, event_type: str) -> Event:
        """The declaration of `source`'s event `event_type`."""
        ...


class EventEmitter(Protocol):
    """How esi's own code emits an event exactly as the webhook does (`esi.events.sink.EventSink`): True when it is
    new, False for a change of a record already taken (the same id and version)."""

    async def emit(self, source: str, type: str, payload: Mapping[str, object]) -> bool: ...


@dataclass
class SystemContext:
    """What a system's handlers are built from, at start-up."""

    system: System
    #: the system's settings, read at the edge (None for a system without settings)
    settings: SystemSettings | None
    #: the system's client, behind its limiter and instrumentation (None for a system without a client); it
    #: answers every method of the client, so it stands for the handlers' protocol of the client (`DmsApi`)
    client: Guarded | None
    #: the store; a system's own tables are reached through `store.database` (see `System.tables`)
    store: Store
    events: EventRecorder
    #: every system esi runs with (what reaches this system's queue, the fields requests are searched by)
    registry: Systems
    #: emits events as the webhook does (for a poller: `System.background`); None where no store takes them
    sink: EventEmitter | None = None


@dataclass(frozen=True)
class System:
    """One external system, declared once."""

    code: str
    title: str
    handlers: Callable[[SystemContext], Mapping[str, Handler]]
    answers: tuple[Operation, ...] = ()
    #: requests this system sends to others (their replies come back to its queue)
    asks: tuple[str, ...] = ()
    settings: type[SystemSettings] | None = None
    #: builds the system's client from its settings (its own `SystemSettings` subclass); the client may have
    #: `check()` (readiness) and `aclose()`
    client: Callable[[Any], object] | None = None
    #: the name of its entry in /readyz ("creatio"); the code by default
    health_name: str | None = None
    fake: Fake | None = None
    key_fields: tuple[str, ...] = ()
    send_routes: tuple[SendRoute, ...] = ()
    service_name: str | None = None
    queue_name: str | None = None
    #: the origin (1C): its service hosts the HTTP API and the outbox relay, and every reply comes back to it
    origin: bool = False
    #: whether the adapter keeps an inbox of handled message ids (an origin only records answers: idempotent)
    inbox: bool = True
    #: free text for `esi systems` and the docs
    description: str = ""
    #: the system's own tables: their migrations, applied at start-up beside the core's (owner: the code)
    tables: Migrations | None = None
    #: the events it emits (`POST /events/<code>/<type>`, or esi's own code through `esi.events.sink.EventSink`)
    emits: tuple[Event, ...] = ()
    #: how its event webhook authenticates: an API client holding the scope `events:<code>` (HTTP Basic), or a
    #: signature of the body with the shared secret of its settings (fields `webhook_secret` and
    #: `webhook_tolerance`: `<PREFIX>WEBHOOK_SECRET`, as `DmsSettings` has them)
    event_auth: Literal["basic", "signed"] = "basic"
    #: the events it subscribes to by default, as `<source>.<type>` (`dms.policy_issued`); ESI_SUBSCRIPTIONS adds
    #: and removes subscriptions per site
    subscribes: tuple[str, ...] = ()
    #: the handlers of the events reaching its events queue, by `<source>.<type>` or `*` (any event); a system
    #: subscribed to anything needs one
    on_event: Callable[[SystemContext], Mapping[str, Handler]] | None = None
    #: a task the system's adapter runs beside its consumers (a poller), built at start-up; None: none
    background: Callable[[SystemContext], Callable[[], Coroutine[Any, Any, None]]] | None = None

    def __post_init__(self) -> None:
        if not CODE_PATTERN.fullmatch(self.code):
            raise ValueError(f"system code {self.code!r} must be 1-32 lower-case letters, digits or '_'")

    @property
    def service(self) -> str:
        """The service that runs its adapter (`esi run <service>`)."""
        return self.service_name or self.code

    @property
    def queue(self) -> str:
        return self.queue_name or f"{self.code}_queue"

    @property
    def health(self) -> str:
        return self.health_name or self.code

    @property
    def events_queue(self) -> str:
        """The queue its subscribed events wait in, apart from its requests and answers."""
        return f"{self.code}_events_queue"

    def operation(self, request: str) -> Operation | None:
        return next((op for op in self.answers if op.request == request), None)

    def event(self, event_type: str) -> Event | None:
        return next((e for e in self.emits if e.name == event_type), None)
