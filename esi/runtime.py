"""Assembling and running the services: the edge where settings become plain values.

Every service comes from the registry of systems (`esi.systems.registry`):

    <system>      a system's adapter, e.g. `dms`: consumes its work queue, calls the system over its client
    onec          the origin's adapter (1C): the consumer of 1c_queue (answers to 1C), the HTTP API, the outbox relay
    fake-<name>   a system's fake server (demo and tests), e.g. `fake-dms`
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from esi import metrics
from esi.api.app import ApiDeps, create_app
from esi.api.ops import ReadyCheck, create_ops_app
from esi.bus.connection import Bus
from esi.bus.consumer import Consumer
from esi.bus.dead_letters import DeadLetters
from esi.bus.relay import OutboxRelay
from esi.bus.topology import Topology
from esi.config import Settings
from esi.health import Check, run_checks
from esi.messages import Handler
from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD, ClientRegistry, is_demo_registry, load_registry
from esi.security.tls import amqp_ssl_context_for_url, uvicorn_ssl_kwargs
from esi.store import Store
from esi.store.events import EventRecorder
from esi.store.retention import RetentionTask
from esi.systems.breaker import Breaker, State
from esi.systems.calls import Guarded, Limiter
from esi.systems.registry import Registry, RegistryError, activate
from esi.systems.registry import load_registry as load_systems
from esi.systems.spec import System, SystemContext, SystemSettings

log = logging.getLogger(__name__)

#: how often an adapter looks up its system's maintenance pause in the store (an operator's pause or resume
#: reaches every replica within this)
PAUSE_POLL_S = 0.5
#: this process among the replicas, in the breaker reports (`GET /systems`)
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


def registry_from(settings: Settings) -> Registry:
    """The systems this process runs with (built-in, installed, `ESI_SYSTEMS`), made the process's own."""
    registry = load_systems(settings.systems)
    activate(registry)
    return registry


class _Server(uvicorn.Server):
    """uvicorn inside our own event loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: FastAPI, *, host: str, port: int, name: str, ssl: dict[str, Any] | None = None) -> None:
        # a long keep-alive: 1C clients and proxies reuse connections, and a server closing an idle one just as the
        # client reuses it is a failed request for the client
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=10, timeout_keep_alive=75, **(ssl or {}))
        self.name = name
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name=f"http-{self.name}")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError(f"{self.name}: HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        log.info("%s listening on http://%s:%d", self.name, self.server.config.host, self.server.config.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


class SettingsError(ValueError):
    """A system's settings are invalid (the message names the variable); `esi run` exits with status 2."""


def topology_from(settings: Settings, registry: Registry) -> Topology:
    return registry.topology(retry_delays=settings.retry_delays, delivery_limit=settings.delivery_limit,
                             max_length=settings.queue_max_length)


def system_settings(system: System) -> SystemSettings | None:
    """A system's settings, read from the environment and `.env` (here, at the edge)."""
    if system.settings is None:
        return None
    try:
        return system.settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid settings of {system.code}: {exc}") from None


class Service:
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SystemService(Service):
    """A system's adapter: the consumer of its work queue over its client; for the origin (1C), also the HTTP API
    and the outbox relay."""

    def __init__(self, system: System, *, registry: Registry, settings: Settings, store: Store,
                 events: EventRecorder, readiness: ReadyCheck | None = None) -> None:
        self.system = system
        self.name = system.service
        self.registry = registry
        self.settings = settings
        self.system_settings = system_settings(system)
        self.store = store
        self.events = events
        self.process_readiness = readiness
        self.bus: Bus | None = None
        self.consumer: Consumer | None = None
        self.relay: OutboxRelay | None = None
        self.http: HttpServer | None = None
        self._api_clients: ClientRegistry | None = None
        #: the system's own client (its methods are looked up: `check`, `aclose`)
        self._client: object = None
        self.breaker: Breaker | None = None
        self._background: list[asyncio.Task[None]] = []

    def _handlers(self) -> Mapping[str, Handler]:
        system, config = self.system, self.system_settings
        guarded = None
        if system.client is not None:
            assert config is not None, f"{system.code} declares a client without settings"
            self._client = system.client(config)
            self.breaker = Breaker(system=system.code, probe=getattr(self._client, "check", None),
                                   failure_threshold=config.breaker_failures, probe_max=config.breaker_probe_max)
            limiter = Limiter(system=system.code, max_concurrency=config.max_concurrency,
                              rate_limit=config.rate_limit)
            guarded = Guarded(self._client, system=system.code, events=self.events, service=self.name,
                              limiter=limiter, breaker=self.breaker)
        handlers = system.handlers(SystemContext(system=system, settings=config, client=guarded, store=self.store,
                                                 events=self.events, registry=self.registry))
        self.registry.check_handlers(system, handlers)
        return handlers

    def checks(self) -> dict[str, Check]:
        """What this service needs to do its job, by name."""
        checks: dict[str, Check] = {f"broker ({self.name})": self.bus.check if self.bus else _down,
                                    "store": self.store.ping}
        check = getattr(self._client, "check", None)
        if check is not None:
            checks[self.system.health] = check
        return checks

    def circuits(self) -> dict[str, Any]:
        """The breaker's state for /readyz (an open breaker is the adapter doing its job, not being unready)."""
        if self.breaker is None:
            return {}
        report = self.breaker.report()
        # the same shape as a dependency's entry; "ok" only while closed (open / half_open / paused say which)
        entry = {"status": "ok" if report["state"] == "closed" else report["state"], "latency_ms": 0.0, **report}
        return {f"circuit ({self.system.code})": entry}
    async def start(self) -> None:
        s = self.settings
        topology = topology_from(s, self.registry)
        work = topology.queue_for(self.system.code)
        ssl_context = amqp_ssl_context_for_url(s.broker_url(), ca_file=s.amqp_ca_file, cert_file=s.amqp_cert_file,
                                               key_file=s.amqp_key_file)
        # the API's clients first: a configuration that production refuses fails before any connection is made
        self._api_clients = _clients(s) if self.system.origin else None
        # a process started while no broker node answers waits for one (ESI_CONNECT_TIMEOUT; 0: for ever)
        self.bus = await Bus.open(s.broker_urls(), topology=topology, prefetch=s.prefetch,
                                  publish_timeout=s.publish_timeout, name=f"esi-{self.name}",
                                  ssl_context=ssl_context, wait=s.connect_timeout or math.inf)
        self.consumer = Consumer(
            events=self.events, service=self.name, queue=work, channel=self.bus.consume_channel,
            publisher=self.bus.publisher, catalog=self.registry.catalog, handlers=self._handlers(),
            max_attempts=s.max_attempts, tracker=self.store, inbox=self.store if self.system.inbox else None,
            queue_arguments=topology.work_queue_arguments(work),
        )
        if self.system.origin:
            await self._start_api(topology)
        if self.breaker is not None:
            await self._follow_pauses_once()  # a replica started during a pause does not consume at all
            self.breaker.on_change(self._on_breaker_change)
            await self._follow_breaker()
            self._background.append(asyncio.create_task(self._follow_pauses(), name=f"pauses-{self.name}"))
        await self.consumer.start()
        self._background.append(asyncio.create_task(self._prune_forever(), name=f"prune-{self.name}"))
        if self.system.origin and s.request_retention_s > 0:
            retention = RetentionTask(store=self.store, retention_s=s.request_retention_s,
                                      interval_s=s.retention_interval_s,
                                      first_delay_s=min(10.0, s.retention_interval_s))
            self._background.append(asyncio.create_task(retention.run_forever(), name="retention"))

    # --- the breaker and maintenance pauses -------------------------------------------------------------------

    def _on_breaker_change(self, _old: State, _new: State) -> None:
        self._background.append(asyncio.get_running_loop().create_task(self._follow_breaker()))
        self._background = [t for t in self._background if not t.done()]

    async def _follow_breaker(self) -> None:
        """Consume while the breaker lets calls through; tell the store what this process sees."""
        breaker, consumer = self.breaker, self.consumer
        assert breaker is not None and consumer is not None
        try:
            if breaker.usable:
                await consumer.resume()
            else:
                await consumer.pause()
        except Exception as exc:  # the channel is being restored: the next transition or restore consumes again
            log.warning("could not follow the %s circuit on %s: %s", self.system.code, consumer.queue.name, exc)
        report = breaker.report()
        try:
            await self.store.report_breaker(system=self.system.code, instance=INSTANCE, state=str(report["state"]),
                                            since=str(report["since"]), reason=breaker.reason)
        except Exception as exc:
            log.warning("could not record the %s circuit's state: %s", self.system.code, exc)

    async def _follow_pauses_once(self) -> None:
        assert self.breaker is not None
        pause = (await self.store.system_pauses()).get(self.system.code)
        if pause is not None:
            until = f" until {pause.until}" if pause.until else ""
            self.breaker.pause(f"{pause.reason or 'maintenance'} (by {pause.paused_by}{until})")
        elif self.breaker.state.value == "paused":
            self.breaker.resume()

    async def _follow_pauses(self) -> None:
        """An operator's pause or resume, stored for every replica, reaches this one within `PAUSE_POLL_S`."""
        while True:
            await asyncio.sleep(PAUSE_POLL_S)
            try:
                await self._follow_pauses_once()
            except Exception as exc:  # the store is away: keep the state as it is
                log.debug("could not read the maintenance pauses: %s", exc)

    async def _start_api(self, topology: Topology) -> None:
        """The origin's edge: the outbox relay, and the HTTP API that accepts its requests."""
        s = self.settings
        assert self.bus is not None
        # a sweep leaves a row to the fast path of the process that committed it until that publish has ended
        self.relay = OutboxRelay(store=self.store, publisher=self.bus.publisher, exchange=topology.exchange,
                                 events=self.events, fresh_s=s.publish_timeout + 2)
        self.relay.start()
        app = create_app(ApiDeps(
            clients=self._api_clients, store=self.store, on_accepted=self.relay.submit, max_pdf_bytes=s.max_pdf_bytes,
            readiness=self.process_readiness, events=self.events,
            dead_letters=DeadLetters(self.bus.connection, topology), max_backlog=s.outbox_max_backlog,
            max_wait=s.max_wait_s, wait_recheck=s.wait_recheck_s, send_routes=self.registry.send_routes,
            console_secret=s.console_secret.get_secret_value().encode() if s.console_secret else None))
        self.http = HttpServer(app, host=s.http_host, port=s.http_port, name="api",
                               ssl=uvicorn_ssl_kwargs(s.tls_cert_file, s.tls_key_file,
                                                      client_ca_file=s.tls_client_ca_file))
        await self.http.start()

    async def _prune_forever(self) -> None:
        """Forget processed message ids (and sent outbox rows) after the retention time."""
        while True:
            try:
                cutoff = (datetime.now(UTC) - timedelta(seconds=self.settings.inbox_retention_s))
                inbox, outbox = await self.store.prune(cutoff.isoformat(timespec="microseconds"))
                if inbox or outbox:
                    log.info("pruned %d inbox ids and %d sent outbox rows older than %s", inbox, outbox, cutoff)
            except Exception as exc:
                log.warning("pruning the store failed: %s", exc)
            await asyncio.sleep(self.settings.prune_interval_s)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        if self.breaker is not None:
            await self.breaker.aclose()
            with contextlib.suppress(Exception):
                await self.store.forget_breakers(INSTANCE)
        if self.http is not None:
            self.store.settlements.close()  # long polls answer now, with the state as it stands
            await self.http.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.bus is not None:
            await self.bus.aclose()
        aclose = getattr(self._client, "aclose", None)
        if aclose is not None:
            await aclose()


class FakeService(Service):
    """A system's fake server (demo and tests), on `ESI_FAKE_HOST` and the system's `fake_port`."""

    def __init__(self, system: System, settings: Settings) -> None:
        assert system.fake is not None
        self.name = system.fake.service
        config = system_settings(system)
        assert config is not None, f"{system.code} declares a fake without settings"
        self.http = HttpServer(system.fake.app(config), host=settings.fake_host, port=config.fake_port,
                               name=self.name)

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()


def _clients(settings: Settings) -> ClientRegistry | None:
    """Who may use the API. Demo without a clients file: the demo client, printed loudly."""
    if settings.auth == "off":
        log.warning("ESI_AUTH=off: the API accepts anyone, with every scope — for a demo on this machine only")
        return None
    registry = load_registry(
        clients_file=settings.clients_file,
        clients_json=settings.clients_json.get_secret_value() if settings.clients_json else None,
        production=settings.env == "production", cache_ttl=settings.auth_cache_ttl)
    if is_demo_registry(registry):
        log.warning("DEMO CREDENTIALS: the API accepts the client %r with the password %r (HTTP Basic); "
                    "set ESI_CLIENTS_FILE for real clients", DEMO_CLIENT_ID, DEMO_PASSWORD)
    return registry


async def _down() -> None:
    raise ConnectionError("not connected")


async def run(settings: Settings, services: Sequence[str], *, registry: Registry | None = None,
              stop: asyncio.Event | None = None) -> None:
    """Start the services, wait for SIGTERM/SIGINT (or `stop`), then stop them in reverse order."""
    registry = registry or registry_from(settings)
    if settings.env == "production" and settings.uses_default_broker_credentials():
        log.warning("ESI_ENV=production with RabbitMQ's default guest/guest credentials: create a user of esi's "
                    "own (guest only works over loopback anyway)")
    unknown = [name for name in services if name not in registry.services and name not in registry.fakes]
    if unknown:
        raise RegistryError(f"unknown service(s) {', '.join(unknown)}; "
                            f"choose from {' '.join([*registry.services, *registry.fakes])}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    adapters: list[SystemService] = []
    store: Store | None = None
    events: EventRecorder | None = None
    background: list[asyncio.Task[None]] = []

    async def readiness() -> tuple[bool, dict[str, Any]]:
        # each adapter's checks on their own, so that esi_dependency_ready{service,dependency} names the service
        results = await asyncio.gather(*(run_checks(adapter.checks(), service=adapter.name) for adapter in adapters))
        report: dict[str, Any] = {}
        for _, checks in results:
            report.update(checks)
        for adapter in adapters:
            report.update(adapter.circuits())
        return all(ready for ready, _ in results), report

    try:
        # fakes first, so that adapters find their external systems
        for name in sorted(services, key=lambda n: n not in registry.fakes):
            if name in registry.fakes:
                service: Service = FakeService(registry.fakes[name], settings)
            else:
                system = registry.by_service(name)
                if store is None:
                    # full durability where 1C's requests and answers are committed (see Store.open)
                    store = await Store.open(settings.database_url, durable_commits=registry.origin.service in services)
                    events = EventRecorder(store)
                    events.start()
                assert events is not None
                service = SystemService(system, registry=registry, settings=settings, store=store, events=events,
                                        readiness=readiness)
                adapters.append(service)
            if not await _unless_stopped(service.start(), stop):
                started.append(service)  # stopped while starting (waiting for the broker): stop what it opened
                return
            started.append(service)
        if adapters and not any(a.system.origin for a in adapters):
            # adapters without the 1C API still answer /livez (/healthz), /readyz and /metrics on a port of their own
            ops = HttpServer(create_ops_app(readiness), host=settings.health_host, port=settings.health_port,
                             name="health")
            await ops.start()
            started.append(_Stoppable("health", ops))
        if adapters:
            background.append(asyncio.create_task(_sample_depths(adapters, store), name="queue-depths"))
            if settings.readiness_interval_s > 0:
                background.append(asyncio.create_task(_sample_readiness(readiness, settings.readiness_interval_s),
                                                      name="readiness"))
        settle_heap(settings.gc_threshold)
        log.info("esi running: %s", ", ".join(s.name for s in started))
        await stop.wait()
        log.info("stopping: finishing in-flight work")
    finally:
        for task in background:
            task.cancel()
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %s", service.name)
        if events is not None:
            await events.stop()
        if store is not None:
            await store.aclose()
        log.info("esi stopped")


def settle_heap(young_threshold: int) -> None:
    """Once start-up is done: freeze what it built and space out the young collections.

    What start-up built (modules, apps, connections, caches) lives as long as the process: frozen, a full collection
    no longer walks it, stopping the event loop. At Python's default threshold (700 net allocations) the messages in
    flight alone crossed it: a young collection every few messages that found almost nothing to free, 4-6% of an
    adapter's CPU under load (docs/performance.md). The older generations keep their thresholds.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it and return False): a service waiting for the broker
    at start-up still ends on SIGTERM."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


class _Stoppable(Service):
    def __init__(self, name: str, server: HttpServer) -> None:
        self.name = name
        self._server = server

    async def stop(self) -> None:
        await self._server.stop()


async def _sample_readiness(readiness: ReadyCheck, interval: float) -> None:
    """Run the readiness checks every `interval` seconds, for `esi_dependency_ready` (set by `run_checks`): the
    alert on a dependency that stays down needs it even where nothing probes /readyz."""
    while True:
        await asyncio.sleep(interval)
        try:
            await readiness()
        except Exception as exc:
            log.debug("readiness sampling failed: %s", exc)


async def _sample_depths(adapters: list[SystemService], store: Store | None, interval: float = 5.0) -> None:
    """Keep the queue-depth and outbox-backlog gauges current (a passive declare per queue)."""
    while True:
        for adapter in adapters:
            bus = adapter.bus
            if bus is None or not bus.connected:
                continue
            work = bus.topology.queue_for(adapter.system.code)
            names = [work.name, work.dead_letter_queue, *(s.queue for s in work.retry_steps)]
            try:
                channel = await bus.connection.channel()
                try:
                    for name in names:
                        declared = await channel.declare_queue(name, passive=True)
                        count = declared.declaration_result.message_count
                        if count is not None:
                            metrics.QUEUE_DEPTH.labels(name).set(count)
                finally:
                    await channel.close()
                if adapter.system.origin and store is not None:
                    metrics.OUTBOX_BACKLOG.set(await store.outbox_backlog())
            except Exception as exc:
                log.debug("queue depth sampling failed: %s", exc)
        await asyncio.sleep(interval)
