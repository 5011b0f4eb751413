"""`esi run` (the services) and `esi check broker|postgres|store|<system>|all` (the dependencies answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from esi.cli.common import _settings

if TYPE_CHECKING:
    from esi.systems.spec import System

#: how long one check waits for its dependency
CHECK_TIMEOUT_S = 10


def run(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="the adapters (onec dms crm ...) and fakes (fake-dms ...) to run; none: every adapter"),
    ] = None,
    with_fakes: Annotated[bool, typer.Option("--with-fakes", help="also start every system's fake")] = False,
    log_format: Annotated[str | None, typer.Option(help="json or text (default: ESI_LOG_FORMAT)")] = None,
) -> None:
    """Run services until SIGTERM/SIGINT; in-flight work is finished before exit."""
    from esi import runtime
    from esi.bus.connection import BrokerUnavailable
    from esi.bus.topology import QueueMismatch
    from esi.logs import setup_logging
    from esi.security import ClientsConfigError
    from esi.systems.registry import RegistryError

    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    try:
        registry = runtime.registry_from(settings)
    except RegistryError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None
    chosen = list(services or registry.services)
    unknown = [s for s in chosen if s not in registry.services and s not in registry.fakes]
    if unknown:
        typer.echo(
            f"esi: unknown service(s) {', '.join(unknown)}; choose from "
            f"{' '.join([*registry.services, *registry.fakes])}",
            err=True,
        )
        raise typer.Exit(2)
    if with_fakes:
        chosen += [f for f in registry.fakes if f not in chosen]
    from esi import tracing

    try:
        # OTEL_* variables; off unless they ask for it. The adapters name the process (esi-onec, esi-crm+dms)
        tracing.configure([s for s in chosen if s not in registry.fakes])
    except tracing.TracingConfigError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(runtime.run(settings, chosen, registry=registry))
    except BrokerUnavailable as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(3) from None
    except (ClientsConfigError, RegistryError, runtime.SettingsError, QueueMismatch) as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        tracing.shutdown()  # the spans still buffered are exported


def check(
    what: Annotated[
        str,
        typer.Argument(
            help="broker, postgres (the tests' local PostgreSQL), store (the configured ESI_DATABASE_URL), a "
            "system's code (its client's readiness check), or all: the broker, the store and every system"
        ),
    ],
) -> None:
    """Check that a dependency answers, with a clear message naming how to start it when it does not."""
    settings = _settings()

    async def broker() -> str | None:
        import aio_pika

        from esi.bus.connection import redact

        problems = []
        for url in settings.broker_urls():  # a cluster: any node answering will do
            try:
                connection = await asyncio.wait_for(aio_pika.connect(url), CHECK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is told to the user
                problems.append(f"RabbitMQ does not answer at {redact(url)} ({type(exc).__name__}: {exc}).")
                continue
            await connection.close()
            return None
        return "\n".join(problems) + "\nStart it with:  rabbitmq-server -detached   (or set ESI_AMQP_URL)"

    async def postgres() -> str | None:
        import asyncpg

        try:
            conn = await asyncio.wait_for(
                asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres"), CHECK_TIMEOUT_S
            )
        except Exception as exc:  # noqa: BLE001 - any failure to connect is told to the user
            return (
                f"PostgreSQL does not answer on 127.0.0.1:5432 ({type(exc).__name__}: {exc}); the tests "
                "need it.\nStart it with:  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
                "main start"
            )
        await conn.close()
        return None

    async def store() -> str | None:
        from esi.config import mask_url
        from esi.store.database import Database

        try:
            database = Database.open(settings.database_url)
            try:
                await asyncio.wait_for(database.ping(), CHECK_TIMEOUT_S)
            finally:
                await database.aclose()
        except Exception as exc:  # noqa: BLE001 - any failure to connect is told to the user
            return f"the store does not answer at {mask_url(settings.database_url)} ({type(exc).__name__}: {exc})"
        return None

    def system_check(system: System) -> Callable[[], Awaitable[str | None]]:
        async def probe() -> str | None:
            from esi.runtime.services import SettingsError, system_settings

            try:
                config = system_settings(system)
            except SettingsError as exc:
                return str(exc)
            if system.client is None or config is None:
                return None  # nothing of its own to reach
            client = system.client(config)
            check = getattr(client, "check", None)
            try:
                if check is not None:
                    await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the system is told to the user
                return f"{system.title} does not answer at {config.url} ({type(exc).__name__}: {exc})"
            finally:
                close = getattr(client, "aclose", None)
                if close is not None:
                    await close()
            return None

        return probe

    from esi import runtime
    from esi.systems.registry import RegistryError

    try:
        registry = runtime.registry_from(settings)
    except RegistryError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None
    systems = {s.code: system_check(s) for s in registry.systems if s.client is not None}
    checks: dict[str, Callable[[], Awaitable[str | None]]] = {
        "broker": broker,
        "postgres": postgres,
        "store": store,
        **systems,
    }
    if what == "all":
        chosen = ["broker", "store", *systems]
    elif what in checks:
        chosen = [what]
    else:
        typer.echo(f"esi: check one of {', '.join([*checks, 'all'])}", err=True)
        raise typer.Exit(2)

    async def run_all() -> list[tuple[str, str | None]]:
        results = await asyncio.gather(*(checks[name]() for name in chosen))
        return list(zip(chosen, results))

    failed = False
    for name, problem in asyncio.run(run_all()):
        if problem is None:
            if len(chosen) > 1:
                typer.echo(f"{name}: ok")
        else:
            failed = True
            typer.echo(f"{name}: {problem}" if len(chosen) > 1 else problem, err=True)
    if failed:
        raise typer.Exit(1)
