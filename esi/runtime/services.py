"""The services a process runs: a system's adapter (`SystemService`; for the origin, 1C, also the HTTP API and the
outbox relay) and a system's fake (`FakeService`). They are built by the composition root (`esi.runtime.root`)
from plain values; nothing here reads settings of its own but a system's (`system_settings`, at the edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from esi.api.app import ApiDeps, create_app
from esi.api.health import ReadyCheck
from esi.bus.connection import Bus
from esi.bus.consumer import Consumer
from esi.bus.dead_letters import DeadLetters
from esi.bus.relay import OutboxRelay
from esi.bus.topology import Topology
from esi.config import Settings
from esi.console import console_router
from esi.console.sso import SignInSettings
from esi.dlq.jobs import JobRunner
from esi.dlq.sweep import Sweep
from esi.events.ordering import in_order
from esi.events.sink import EventSink
from esi.health import Check
from esi.messages import Handler
from esi.runtime.http import HttpServer
from esi.security import ClientRegistry
from esi.security.oidc import OidcConfig, OidcConfigError, session_key_problem
from esi.security.quota import QuotaLimiter
from esi.security.tls import amqp_ssl_context_for_url, uvicorn_ssl_kwargs
from esi.store import Store
from esi.store.events import EventRecorder
from esi.store.retention import RetentionTask
from esi.systems.breaker import Breaker, State
from esi.systems.calls import Guarded, Limiter
from esi.systems.registry import Registry
from esi.systems.spec import System, SystemContext, SystemSettings

log = logging.getLogger(__name__)

#: how often an adapter looks up its system's maintenance pause in the store (an operator's pause or resume
#: reaches every replica within this)
PAUSE_POLL_S = 0.5
#: this process among the replicas, in the breaker reports (`GET /systems`)
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


class SettingsError(ValueError):
    """A system's settings are invalid (the message names the variable); `esi run` exits with status 2."""


def system_settings(system: System) -> SystemSettings | None:
    """A system's settings, read from the environment and `.env` (here, at the edge)."""
    if system.settings is None:
        return None
    try:
        return system.settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid settings of {system.code}: {exc}") from None


def oidc_from(settings: Settings) -> OidcConfig | None:
    """The console's single sign-on, validated (`SettingsError` naming the problem); None when no `ESI_OIDC_*`
    setting is given."""
    given = [
        settings.oidc_issuer,
        settings.oidc_client_id,
        settings.oidc_redirect_url,
        settings.oidc_roles,
        settings.oidc_client_secret,
    ]
    if not any(given):
        return None
    production = settings.env == "production"
    try:
        config = OidcConfig.build(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            redirect_url=settings.oidc_redirect_url,
            roles=settings.oidc_roles,
            client_secret=settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
            scopes=settings.oidc_scopes,
            groups_claim=settings.oidc_groups_claim,
            user_claim=settings.oidc_user_claim,
            ca_file=settings.oidc_ca_file,
            production=production,
        )
    except OidcConfigError as exc:
        raise SettingsError(str(exc)) from None
    if production:
        secret = settings.console_secret.get_secret_value().encode() if settings.console_secret else None
        problem = session_key_problem(secret)
        if problem:
            raise SettingsError(f"ESI_ENV=production with single sign-on: {problem}")
    return config


def sign_in_from(settings: Settings) -> SignInSettings:
    """How people sign in to the console: single sign-on when `ESI_OIDC_*` is set, Basic / API keys as
    `ESI_CONSOLE_BASIC` says (by default only without single sign-on)."""
    oidc = oidc_from(settings)
    secret = settings.console_secret.get_secret_value().encode() if settings.console_secret else None
    if oidc is not None:
        log.info("the console signs people in at %s (single sign-on)", oidc.issuer)
        if secret is None:
            log.warning(
                "single sign-on without ESI_CONSOLE_SECRET: this process draws its own session key, so a console "
                "session ends when it restarts and is unknown to the other API replicas"
            )
        if not settings.console_cookie_secure:
            log.warning("ESI_CONSOLE_COOKIE_SECURE=false: the console's session cookie also goes over plain HTTP")
    basic = settings.console_basic == "on" if settings.console_basic is not None else oidc is None
    return SignInSettings(
        oidc=oidc,
        basic=basic,
        session_lifetime_s=settings.console_session_lifetime_s,
        cookie_secure=settings.console_cookie_secure,
        secret=secret,
    )


class Service:
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SystemService(Service):
    """A system's adapter: the consumer of its work queue over its client; for the origin (1C), also the HTTP API
    and the outbox relay."""

    def __init__(
        self,
        system: System,
        *,
        registry: Registry,
        settings: Settings,
        topology: Topology,
        store: Store,
        events: EventRecorder,
        readiness: ReadyCheck | None = None,
        api_clients: ClientRegistry | None = None,
    ) -> None:
        self.system = system
        self.name = system.service
        self.registry = registry
        self.settings = settings
        self.topology = topology
        self.system_settings = system_settings(system)
        self.store = store
        self.events = events
        self.process_readiness = readiness
        self.bus: Bus | None = None
        self.consumer: Consumer | None = None
        self.relay: OutboxRelay | None = None
        self.http: HttpServer | None = None
        #: the API's clients (the origin's service only; None: authentication off)
        self._api_clients = api_clients
        #: the system's own client (its methods are looked up: `check`, `aclose`)
        self._client: object = None
        self.breaker: Breaker | None = None
        self._background: list[asyncio.Task[None]] = []
        #: the consumer of the system's events queue (a subscriber's copy of the events it subscribes to)
        self.events_consumer: Consumer | None = None
        #: takes events in (the origin's webhook, a system's poller); None in a service that takes none
        self.sink: EventSink | None = None

    def _context(self) -> SystemContext:
        """What the system's handlers (and its background task) are built from: its client behind the limiter and
        the breaker, the store, the registry, the event sink."""
        system, config = self.system, self.system_settings
        guarded = None
        if system.client is not None:
            if config is None:  # an outside package's mistake: say so even under python -O
                raise TypeError(f"{system.code} declares a client without settings")
            self._client = system.client(config)
            self.breaker = Breaker(
                system=system.code,
                probe=getattr(self._client, "check", None),
                failure_threshold=config.breaker_failures,
                probe_max=config.breaker_probe_max,
            )
            limiter = Limiter(system=system.code, max_concurrency=config.max_concurrency, rate_limit=config.rate_limit)
            guarded = Guarded(
                self._client,
                system=system.code,
                events=self.events,
                service=self.name,
                limiter=limiter,
                breaker=self.breaker,
            )
        return SystemContext(
            system=system,
            settings=config,
            client=guarded,
            store=self.store,
            events=self.events,
            registry=self.registry,
            sink=self.sink,
        )

    def _handlers(self, context: SystemContext) -> Mapping[str, Handler]:
        handlers = self.system.handlers(context)
        self.registry.check_handlers(self.system, handlers)
        return handlers

    def _event_handlers(self, context: SystemContext) -> Mapping[str, Handler]:
        """The handlers of the events the system subscribes to, each behind the per-record order check."""
        declared = self.system.on_event(context) if self.system.on_event is not None else {}
        return in_order(
            self.system.code,
            self.registry.event_handlers(self.system, declared),
            registry=self.registry,
            versions=self.store.event_log,
            timeline=self.events,
            service=self.name,
        )

    def checks(self) -> dict[str, Check]:
        """What this service needs to do its job, by name."""
        checks: dict[str, Check] = {
            f"broker ({self.name})": self.bus.check if self.bus else _down,
            "store": self.store.ping,
        }
        check = getattr(self._client, "check", None)
        # not the origin's: 1C reaching the API must not depend on esi reaching 1C's own HTTP service (deliveries into
        # it ride an outage out behind its breaker, which /readyz shows as its circuit)
        if check is not None and not self.system.origin:
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
        s, topology = self.settings, self.topology
        work = topology.queue_for(self.system.code)
        ssl_context = amqp_ssl_context_for_url(
            s.broker_url(), ca_file=s.amqp_ca_file, cert_file=s.amqp_cert_file, key_file=s.amqp_key_file
        )
        # a process started while no broker node answers waits for one (ESI_CONNECT_TIMEOUT; 0: for ever)
        self.bus = await Bus.open(
            s.broker_urls(),
            topology=topology,
            prefetch=s.prefetch,
            publish_timeout=s.publish_timeout,
            name=f"esi-{self.name}",
            ssl_context=ssl_context,
            wait=s.connect_timeout or math.inf,
        )
        if self.system.origin or self.system.background is not None:
            # the origin's API and a system's own event source (a poller) take events: their relay publishes them
            self.relay = OutboxRelay(
                store=self.store.outbox,
                publisher=self.bus.publisher,
                exchange=topology.exchange,
                events=self.events,
                fresh_s=s.publish_timeout + 2,
            )
            self.relay.start()
            self.sink = EventSink(
                registry=self.registry, log=self.store.event_log, on_accepted=self.relay.submit, timeline=self.events
            )
        context = self._context()
        self.consumer = Consumer(
            events=self.events,
            service=self.name,
            queue=work,
            channel=self.bus.consume_channel,
            publisher=self.bus.publisher,
            catalog=self.registry.catalog,
            handlers=self._handlers(context),
            max_attempts=s.max_attempts,
            tracker=self.store.requests,
            inbox=self.store.inbox if self.system.inbox else None,
            queue_arguments=topology.work_queue_arguments(work),
            keys=self.registry.business_keys,
        )
        events_queue = topology.events_queue_for(self.system.code)
        if events_queue is not None:
            # the subscriber's copy of each event, apart from its requests: one slow or failing never holds the other
            self.events_consumer = Consumer(
                events=self.events,
                service=f"{self.name}-events",
                queue=events_queue,
                channel=await self.bus.consume_channel_of_its_own(s.prefetch),
                publisher=self.bus.publisher,
                catalog=self.registry.catalog,
                handlers=self._event_handlers(context),
                max_attempts=s.max_attempts,
                inbox=self.store.inbox,
                queue_arguments=topology.work_queue_arguments(events_queue),
            )
        if self.system.origin:
            await self._start_api(topology)
        if self.breaker is not None:
            await self._follow_pauses_once()  # a replica started during a pause does not consume at all
            self.breaker.on_change(self._on_breaker_change)
            await self._follow_breaker()
            self._background.append(asyncio.create_task(self._follow_pauses(), name=f"pauses-{self.name}"))
        await self.consumer.start()
        if self.events_consumer is not None:
            await self.events_consumer.start()
        if self.system.background is not None:
            task = self.system.background(context)
            self._background.append(asyncio.create_task(task(), name=f"background-{self.name}"))
        self._background.append(asyncio.create_task(self._prune_forever(), name=f"prune-{self.name}"))
        if self.system.origin and s.request_retention_s > 0:
            retention = RetentionTask(
                store=self.store,
                retention_s=s.request_retention_s,
                interval_s=s.retention_interval_s,
                first_delay_s=min(10.0, s.retention_interval_s),
            )
            self._background.append(asyncio.create_task(retention.run_forever(), name="retention"))

    # --- the breaker and maintenance pauses -------------------------------------------------------------------

    def _on_breaker_change(self, _old: State, _new: State) -> None:
        self._background.append(asyncio.get_running_loop().create_task(self._follow_breaker()))
        self._background = [t for t in self._background if not t.done()]

    async def _follow_breaker(self) -> None:
        """Consume while the breaker lets calls through; tell the store what this process sees."""
        breaker, consumer = self.breaker, self.consumer
        assert breaker is not None  # noqa: S101 - set in start(); narrows for mypy
        assert consumer is not None  # noqa: S101 - set in start(); narrows for mypy
        # the consumers that call the system: the origin's work queue only records answers, its events queue calls
        followers = [c for c in (self.events_consumer, None if self.system.origin else consumer) if c is not None]
        try:
            for follower in followers:
                if breaker.usable:
                    await follower.resume()
                else:
                    await follower.pause()
        except Exception as exc:  # noqa: BLE001 - the channel is being restored: the next transition or restore consumes again
            log.warning("could not follow the %s circuit on %s: %s", self.system.code, consumer.queue.name, exc)
        report = breaker.report()
        try:
            await self.store.pauses.report_breaker(
                system=self.system.code,
                instance=INSTANCE,
                state=str(report["state"]),
                since=str(report["since"]),
                reason=breaker.reason,
            )
        except Exception as exc:  # noqa: BLE001 - recording is best effort; the breaker goes on
            log.warning("could not record the %s circuit's state: %s", self.system.code, exc)

    async def _follow_pauses_once(self) -> None:
        assert self.breaker is not None  # noqa: S101 - set in start(); narrows for mypy
        pause = (await self.store.pauses.system_pauses()).get(self.system.code)
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
            except Exception as exc:  # noqa: BLE001 - the store is away: keep the state as it is
                log.debug("could not read the maintenance pauses: %s", exc)

    async def _start_api(self, topology: Topology) -> None:
        """The origin's edge: the outbox relay, and the HTTP API that accepts its requests."""
        s = self.settings
        assert self.bus is not None  # noqa: S101 - set in start(); narrows for mypy
        assert self.relay is not None  # noqa: S101 - the origin's relay, started first; narrows for mypy
        dead_letters = DeadLetters(self.bus.connection, topology)
        deps = ApiDeps(
            registry=self.registry,
            topology=topology,
            clients=self._api_clients,
            store=self.store,
            on_accepted=self.relay.submit,
            max_pdf_bytes=s.max_pdf_bytes,
            readiness=self.process_readiness,
            events=self.events,
            dead_letters=dead_letters,
            max_backlog=s.outbox_max_backlog,
            max_wait=s.max_wait_s,
            wait_recheck=s.wait_recheck_s,
            console_secret=s.console_secret.get_secret_value().encode() if s.console_secret else None,
            trusted_proxies=tuple(s.trusted_proxies),
            quotas=QuotaLimiter(replicas=s.api_replicas),
            sink=self.sink,
            system_settings={code: system_settings(self.registry.system(code)) for code in self.registry.codes},
        )
        app = create_app(deps)
        # the operator console at /console, beside the API, in the site's language unless the browser asks another
        app.include_pages(functools.partial(console_router, lang=s.console_lang, sign_in=sign_in_from(s)), deps)
        self.http = HttpServer(
            app,
            host=s.http_host,
            port=s.http_port,
            name="api",
            ssl=uvicorn_ssl_kwargs(s.tls_cert_file, s.tls_key_file, client_ca_file=s.tls_client_ca_file),
        )
        await self.http.start()
        # replay and purge jobs run here, one at a time; a job left by a process that died resumes once its lease
        # runs out (esi.dlq.jobs)
        runner = JobRunner(
            connection=self.bus.connection, store=self.store, topology=topology, lease_s=s.dlq_job_lease_s
        )
        self._background.append(asyncio.create_task(runner.run_forever(), name="dlq-jobs"))
        if s.dlq_sweep_interval_s > 0:
            sweep = Sweep(
                dead_letters=dead_letters,
                store=self.store,
                topology=topology,
                keys=self.registry.business_keys,
                max_messages=s.dlq_sweep_max,
            )
            self._background.append(asyncio.create_task(sweep.run_forever(s.dlq_sweep_interval_s), name="dlq-sweep"))

    async def _prune_forever(self) -> None:
        """Forget processed message ids (and sent outbox rows) after the retention time."""
        while True:
            try:
                cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.inbox_retention_s)
                older_than = cutoff.isoformat(timespec="microseconds")
                inbox = await self.store.inbox.prune(older_than)
                outbox = await self.store.outbox.prune_sent(older_than)
                if self.system.origin:  # the pull feeds' acknowledged entries (kept until acknowledged, then this)
                    await self.store.feed.prune_acked(older_than)
                    if self.settings.request_retention_s > 0:  # the events taken, as long as requests are kept
                        kept = datetime.now(UTC) - timedelta(seconds=self.settings.request_retention_s)
                        await self.store.event_log.prune(kept.isoformat(timespec="microseconds"))
                letters = await self.store.dead_letters.prune(older_than)  # settled rows of the dead-letter index
                if inbox or outbox or letters:
                    log.info(
                        "pruned %d inbox ids, %d sent outbox rows and %d settled dead-letter rows older than %s",
                        inbox,
                        outbox,
                        letters,
                        cutoff,
                    )
            except Exception as exc:  # noqa: BLE001 - pruning outlives any failure: the next interval tries again
                log.warning("pruning the store failed: %s", exc)
            await asyncio.sleep(self.settings.prune_interval_s)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        # a background task's own clean-up (the Creatio poller releases its leases) runs while the store is open
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        if self.breaker is not None:
            await self.breaker.aclose()
            with contextlib.suppress(Exception):
                await self.store.pauses.forget_breakers(INSTANCE)
        if self.http is not None:
            self.store.requests.settlements.close()  # long polls answer now, with the state as it stands
            await self.http.stop()
        if self.events_consumer is not None:
            await self.events_consumer.stop()
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
        assert system.fake is not None  # noqa: S101 - only built for a system with a fake; narrows for mypy
        self.name = system.fake.service
        config = system_settings(system)
        if config is None:  # an outside package's mistake: say so even under python -O
            raise TypeError(f"{system.code} declares a fake without settings")
        self.http = HttpServer(system.fake.app(config), host=settings.fake_host, port=config.fake_port, name=self.name)

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()


async def _down() -> None:
    raise ConnectionError("not connected")


class Stoppable(Service):
    def __init__(self, name: str, server: HttpServer) -> None:
        self.name = name
        self._server = server

    async def stop(self) -> None:
        await self._server.stop()
