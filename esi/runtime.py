"""Assembling and running the services: the edge where settings become plain values.

    onec          the HTTP API for 1C, the outbox relay, and the consumer of 1c_queue (answers to 1C)
    dms           the DMS adapter: consumes dms_queue, calls the DMS over HTTP
    crm           the CRM adapter: consumes crm_queue, calls Creatio over HTTP
    fake-creatio  a fake Creatio server (demo and tests)
    fake-dms      a fake DMS server (demo and tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

import uvicorn
from fastapi import FastAPI

from esi import metrics
from esi.api.app import ApiDeps, create_app
from esi.api.routes import ORIGINAL_SEND_ROUTES
from esi.api.ops import ReadyCheck, create_ops_app
from esi.bus.connection import Bus
from esi.bus.consumer import Consumer, Handler
from esi.bus.dead_letters import DeadLetters
from esi.bus.relay import OutboxRelay
from esi.bus.topology import Topology, build_topology
from esi.config import Settings
from esi.health import Check, run_checks
from esi.messages import CATALOG
from esi.metrics import Instrumented
from esi.systems.http import fast_transport
from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD, ClientRegistry, is_demo_registry, load_registry
from esi.security.tls import amqp_ssl_context_for_url, uvicorn_ssl_kwargs
from esi.store import Store
from esi.store.events import EventRecorder

log = logging.getLogger(__name__)

ADAPTERS = ("onec", "dms", "crm")
FAKES = ("fake-creatio", "fake-dms")
SERVICES = ADAPTERS + FAKES


class _Server(uvicorn.Server):
    """uvicorn inside our own event loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: FastAPI, *, host: str, port: int, name: str, ssl: dict | None = None) -> None:
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


def topology_from(settings: Settings) -> Topology:
    return build_topology(retry_delays=settings.retry_delays, delivery_limit=settings.delivery_limit,
                          max_length=settings.queue_max_length)


class Service:
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class AdapterService(Service):
    """A consumer of one system's work queue, and (for onec) the HTTP API and the outbox relay."""

    def __init__(self, name: str, settings: Settings, store: Store, *, events: EventRecorder,
                 readiness: ReadyCheck | None = None) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.events = events
        self.process_readiness = readiness
        self.system = {"onec": "1c"}.get(name, name)
        self.bus: Bus | None = None
        self.consumer: Consumer | None = None
        self.relay: OutboxRelay | None = None
        self.http: HttpServer | None = None
        self._client: object | None = None
        self._pruner: asyncio.Task[None] | None = None

    def _handlers(self) -> dict[str, Handler]:
        s = self.settings
        if self.name == "dms":
            from esi.systems.dms.client import DmsClient
            from esi.systems.dms.handlers import dms_handlers

            limit = s.dms_max_concurrency
            client = DmsClient(base_url=s.dms_url, timeout=s.dms_timeout, max_connections=limit,
                               verify=s.dms_ca_bundle or True,
                               transport=fast_transport(verify=s.dms_ca_bundle or True, max_connections=limit),
                               api_key=s.dms_api_key.get_secret_value() if s.dms_api_key else None)
            self._client = client
            return dms_handlers(Instrumented(client, system="dms", events=self.events, service="dms",
                                             max_concurrency=limit))
        if self.name == "crm":
            from esi.systems.crm.client import CreatioClient
            from esi.systems.crm.handlers import crm_handlers

            limit = s.creatio_max_concurrency
            client = CreatioClient(base_url=s.creatio_url, username=s.creatio_username,
                                   password=s.creatio_password.get_secret_value(), odata_path=s.creatio_odata_path,
                                   timeout=s.creatio_timeout, max_connections=limit,
                                   verify=s.creatio_ca_bundle or True,
                                   transport=fast_transport(verify=s.creatio_ca_bundle or True,
                                                            max_connections=limit))
            self._client = client
            return crm_handlers(Instrumented(client, system="crm", events=self.events, service="crm",
                                             max_concurrency=limit),
                                max_pdf_bytes=s.max_pdf_bytes)
        from esi.systems.onec.handlers import onec_handlers

        return onec_handlers(self.store, events=self.events)

    def checks(self) -> dict[str, Check]:
        """What this service needs to do its job, by name."""
        checks: dict[str, Check] = {f"broker ({self.name})": self.bus.check if self.bus else _down,
                                    "store": self.store.ping}
        check = getattr(self._client, "check", None)
        if check is not None:
            checks[{"dms": "dms", "crm": "creatio"}[self.name]] = check
        return checks

    async def start(self) -> None:
        s = self.settings
        topology = topology_from(s)
        ssl_context = amqp_ssl_context_for_url(s.broker_url(), ca_file=s.amqp_ca_file, cert_file=s.amqp_cert_file,
                                               key_file=s.amqp_key_file)
        self.bus = await Bus.open(s.broker_url(), topology=topology, prefetch=s.prefetch,
                                  publish_timeout=s.publish_timeout, name=f"esi-{self.name}",
                                  ssl_context=ssl_context)
        handlers = self._handlers()
        self.consumer = Consumer(
            events=self.events,
            service=self.name, queue=topology.queue_for(self.system), channel=self.bus.consume_channel,
            publisher=self.bus.publisher, catalog=CATALOG, handlers=handlers, max_attempts=s.max_attempts,
            # 1C's side only records answers, which is idempotent by nature: no inbox to consult or write
            tracker=self.store, inbox=None if self.name == "onec" else self.store,
            queue_arguments=topology.work_queue_arguments(topology.queue_for(self.system)),
        )
        if self.name == "onec":
            self.relay = OutboxRelay(store=self.store, publisher=self.bus.publisher, exchange=topology.exchange,
                                     events=self.events)
            self.relay.start()
            app = create_app(ApiDeps(
                clients=_clients(s),store=self.store, on_accepted=self.relay.submit,
                                     max_pdf_bytes=s.max_pdf_bytes, readiness=self.process_readiness,
                                     events=self.events,
                                     dead_letters=DeadLetters(self.bus.connection, topology),
                                     max_backlog=s.outbox_max_backlog, max_wait=s.max_wait_s,
                                     wait_recheck=s.wait_recheck_s, send_routes=ORIGINAL_SEND_ROUTES))
            self.http = HttpServer(app, host=s.http_host, port=s.http_port, name="api",
                                   ssl=uvicorn_ssl_kwargs(s.tls_cert_file, s.tls_key_file,
                                                          client_ca_file=s.tls_client_ca_file))
            await self.http.start()
        await self.consumer.start()
        self._pruner = asyncio.create_task(self._prune_forever(), name=f"prune-{self.name}")

    async def _prune_forever(self) -> None:
        """Forget processed message ids (and sent outbox rows) after the retention time."""
        while True:
            try:
                cutoff = (datetime.now(timezone.utc) - timedelta(seconds=self.settings.inbox_retention_s))
                inbox, outbox = await self.store.prune(cutoff.isoformat(timespec="microseconds"))
                if inbox or outbox:
                    log.info("pruned %d inbox ids and %d sent outbox rows older than %s", inbox, outbox, cutoff)
            except Exception as exc:
                log.warning("pruning the store failed: %s", exc)
            await asyncio.sleep(self.settings.prune_interval_s)

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
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
    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        if name == "fake-creatio":
            from esi.fakes.creatio import create_app as fake_app

            app, port = fake_app(username=settings.creatio_username,
                                 password=settings.creatio_password.get_secret_value()), settings.fake_creatio_port
        else:
            from esi.fakes.dms import create_app as fake_app

            key = settings.dms_api_key.get_secret_value() if settings.dms_api_key else None
            app, port = fake_app(api_key=key), settings.fake_dms_port
        self.http = HttpServer(app, host=settings.fake_host, port=port, name=name)

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


async def run(settings: Settings, services: Sequence[str], *, stop: asyncio.Event | None = None) -> None:
    """Start the services, wait for SIGTERM/SIGINT (or `stop`), then stop them in reverse order."""
    if settings.env == "production" and settings.uses_default_broker_credentials():
        log.warning("ESI_ENV=production with RabbitMQ's default guest/guest credentials: create a user of esi's "
                    "own (guest only works over loopback anyway)")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    adapters: list[AdapterService] = []
    store: Store | None = None
    events: EventRecorder | None = None
    background: list[asyncio.Task[None]] = []

    async def readiness() -> tuple[bool, dict]:
        checks: dict[str, Check] = {}
        for adapter in adapters:
            checks.update(adapter.checks())
        return await run_checks(checks)

    try:
        # fakes first, so that adapters find their external systems
        for name in sorted(services, key=lambda n: n not in FAKES):
            if name in FAKES:
                service: Service = FakeService(name, settings)
            else:
                if store is None:
                    # full durability where 1C's requests and answers are committed (see Store.open)
                    store = await Store.open(settings.database_url, durable_commits="onec" in services)
                    events = EventRecorder(store)
                    events.start()
                assert events is not None
                service = AdapterService(name, settings, store, events=events, readiness=readiness)
                adapters.append(service)
            await service.start()
            started.append(service)
        if adapters and not any(a.name == "onec" for a in adapters):
            # adapters without the 1C API still answer /healthz, /readyz and /metrics on a port of their own
            ops = HttpServer(create_ops_app(readiness), host=settings.health_host, port=settings.health_port,
                             name="health")
            await ops.start()
            started.append(_Stoppable("health", ops))
        if adapters:
            background.append(asyncio.create_task(_sample_depths(adapters, store), name="queue-depths"))
        # what start-up built (modules, apps, connections, caches) lives as long as the process: frozen, a full
        # collection no longer walks it. Measured here: 110,000 objects after import, 120 ms a full collection,
        # every one of them an event loop stopped for that long (the ingress p99 showed 2-s windows at 267 ms)
        gc.collect()
        gc.freeze()
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


class _Stoppable(Service):
    def __init__(self, name: str, server: HttpServer) -> None:
        self.name = name
        self._server = server

    async def stop(self) -> None:
        await self._server.stop()


async def _sample_depths(adapters: list[AdapterService], store: Store | None, interval: float = 5.0) -> None:
    """Keep the queue-depth and outbox-backlog gauges current (a passive declare per queue)."""
    while True:
        for adapter in adapters:
            bus = adapter.bus
            if bus is None or not bus.connected:
                continue
            work = bus.topology.queue_for(adapter.system)
            names = [work.name, work.dead_letter_queue, *(s.queue for s in work.retry_steps)]
            try:
                channel = await bus.connection.channel()
                try:
                    for name in names:
                        declared = await channel.declare_queue(name, passive=True)
                        metrics.QUEUE_DEPTH.labels(name).set(declared.declaration_result.message_count)
                finally:
                    await channel.close()
                if adapter.name == "onec" and store is not None:
                    metrics.OUTBOX_BACKLOG.set(await store.outbox_backlog())
            except Exception as exc:
                log.debug("queue depth sampling failed: %s", exc)
        await asyncio.sleep(interval)
