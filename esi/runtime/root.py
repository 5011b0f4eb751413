"""The composition root: settings become objects here, and only here.

`run` reads the registry of systems (`registry_from`), the broker topology (`topology_from`) and the store, builds
the services a process was asked for (`esi.runtime.services`), hands each what it needs, and stops them in reverse
order on SIGTERM/SIGINT. Every service comes from the registry:

    <system>      a system's adapter, e.g. `dms`: consumes its work queue, calls the system over its client
    onec          the origin's adapter (1C): the consumer of 1c_queue (answers to 1C), the HTTP API, the outbox relay
    fake-<name>   a system's fake server (demo and tests), e.g. `fake-dms`
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel

from esi import metrics
from esi.api.health import ReadyCheck, create_health_app
from esi.bus.channels import short_lived_channel
from esi.bus.topology import Topology, build_topology
from esi.config import Settings
from esi.health import run_checks
from esi.messages.catalog import Catalog
from esi.runtime.http import HttpServer
from esi.runtime.services import FakeService, Service, Stoppable, SystemService, oidc_from
from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD, ClientRegistry, is_demo_registry, load_clients
from esi.security.throttle import SignInThrottle
from esi.store import Store
from esi.store.events import EventRecorder
from esi.systems.registry import Registry, RegistryError, load_registry

log = logging.getLogger(__name__)


def registry_from(settings: Settings) -> Registry:
    """The systems this process runs with: the installed ones (esi's built-in systems among them) and
    `ESI_SYSTEMS`."""
    return load_registry(settings.systems, subscriptions=settings.subscriptions)


def topology_from(settings: Settings, registry: Registry) -> Topology:
    """The broker topology of the registry's systems, with the retry ladder and limits of the settings."""
    return build_topology(
        registry.queues(),
        retry_delays=settings.retry_delays,
        delivery_limit=settings.delivery_limit,
        max_length=settings.queue_max_length,
    )


def clients_from(settings: Settings, catalog: Catalog) -> ClientRegistry | None:
    """Who may use the API. Demo without a clients file: the demo client, printed loudly."""
    if settings.auth == "off":
        log.warning("ESI_AUTH=off: the API accepts anyone, with every scope — for a demo on this machine only")
        return None
    registry = load_clients(
        clients_file=settings.clients_file,
        clients_json=settings.clients_json.get_secret_value() if settings.clients_json else None,
        production=settings.env == "production",
        catalog=catalog,
        cache_ttl=settings.auth_cache_ttl,
        throttle=SignInThrottle(
            max_failures=settings.auth_max_failures,
            window=settings.auth_failure_window_s,
            max_entries=settings.auth_throttle_entries,
        ),
    )
    if is_demo_registry(registry):
        log.warning(
            "DEMO CREDENTIALS: the API accepts the client %r with the password %r (HTTP Basic); "
            "set ESI_CLIENTS_FILE for real clients",
            DEMO_CLIENT_ID,
            DEMO_PASSWORD,
        )
    return registry


async def run(
    settings: Settings, services: Sequence[str], *, registry: Registry | None = None, stop: asyncio.Event | None = None
) -> None:
    """Start the services, wait for SIGTERM/SIGINT (or `stop`), then stop them in reverse order."""
    registry = registry or registry_from(settings)
    if settings.env == "production" and settings.uses_default_broker_credentials():
        log.warning(
            "ESI_ENV=production with RabbitMQ's default guest/guest credentials: create a user of esi's "
            "own (guest only works over loopback anyway)"
        )
    unknown = [name for name in services if name not in registry.services and name not in registry.fakes]
    if unknown:
        raise RegistryError(
            f"unknown service(s) {', '.join(unknown)}; choose from {' '.join([*registry.services, *registry.fakes])}"
        )
    if registry.origin.service in services:
        oidc_from(settings)  # the console's single sign-on: refused now, not once the broker is reached
    topology = topology_from(settings, registry)
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
                    store = await Store.open(
                        settings.database_url,
                        durable_commits=registry.origin.service in services,
                        migrations=registry.migrations,
                    )
                    events = EventRecorder(store.requests)
                    events.start()
                assert events is not None  # noqa: S101 - set just above when the store is; narrows for mypy
                service = SystemService(
                    system,
                    registry=registry,
                    settings=settings,
                    topology=topology,
                    store=store,
                    events=events,
                    readiness=readiness,
                    api_clients=clients_from(settings, registry.catalog) if system.origin else None,
                )
                adapters.append(service)
            if not await _unless_stopped(service.start(), stop):
                started.append(service)  # stopped while starting (waiting for the broker): stop what it opened
                return
            started.append(service)
        if adapters and not any(a.system.origin for a in adapters):
            # adapters without the 1C API still answer /livez (/healthz), /readyz and /metrics on a port of their own
            ops = HttpServer(
                create_health_app(readiness), host=settings.health_host, port=settings.health_port, name="health"
            )
            await ops.start()
            started.append(Stoppable("health", ops))
        if adapters:
            background.append(asyncio.create_task(_sample_depths(adapters, store), name="queue-depths"))
            if settings.readiness_interval_s > 0:
                background.append(
                    asyncio.create_task(_sample_readiness(readiness, settings.readiness_interval_s), name="readiness")
                )
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


async def _sample_readiness(readiness: ReadyCheck, interval: float) -> None:
    """Run the readiness checks every `interval` seconds, for `esi_dependency_ready` (set by `run_checks`): the
    alert on a dependency that stays down needs it even where nothing probes /readyz."""
    while True:
        await asyncio.sleep(interval)
        try:
            await readiness()
        except Exception as exc:  # noqa: BLE001 - sampling outlives any failure
            log.debug("readiness sampling failed: %s", exc)


async def _sample_depths(adapters: list[SystemService], store: Store | None, interval: float = 5.0) -> None:
    """Keep the queue-depth and outbox-backlog gauges current (a passive declare per queue), on one plain channel per
    connection kept from sample to sample (opened again when it was closed): not a robust channel each time
    (esi.bus.channels says why)."""
    channels: dict[int, AbstractChannel] = {}
    try:
        while True:
            for adapter in adapters:
                bus = adapter.bus
                if bus is None or not bus.connected:
                    continue
                names = []
                for work in (
                    bus.topology.queue_for(adapter.system.code),
                    bus.topology.events_queue_for(adapter.system.code),
                ):
                    if work is not None:
                        names += [work.name, work.dead_letter_queue, *(s.queue for s in work.retry_steps)]
                try:
                    channel = channels.get(id(bus))
                    if channel is None or channel.is_closed:
                        channel = channels[id(bus)] = await short_lived_channel(bus.connection)
                    for name in names:
                        declared = await channel.declare_queue(name, passive=True)
                        count = declared.declaration_result.message_count
                        if count is not None:
                            metrics.QUEUE_DEPTH.labels(name).set(count)
                    if adapter.system.origin and store is not None:
                        metrics.OUTBOX_BACKLOG.set(await store.outbox.backlog())
                        for subscriber in adapter.registry.subscriptions:  # the pull feeds' readers, how far behind
                            lag = await store.feed.lag(subscriber)
                            if lag["last"]:
                                metrics.FEED_LAG.labels(subscriber).set(lag["pending"])
                                metrics.FEED_LAG_SECONDS.labels(subscriber).set(lag["oldest_age_s"])
                except Exception as exc:  # noqa: BLE001 - sampling outlives any failure
                    log.debug("queue depth sampling failed: %s", exc)
            await asyncio.sleep(interval)
    finally:
        for channel in channels.values():
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
