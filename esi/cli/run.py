"""`esi run` (the services) and `esi check broker|postgres` (the dependencies answer)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from esi.cli.common import _settings


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


def check(what: Annotated[str, typer.Argument(help="broker or postgres")]) -> None:
    """Check that a dependency answers, with a clear message naming how to start it when it does not."""
    settings = _settings()

    async def broker() -> None:
        import aio_pika

        from esi.bus.connection import redact

        problems = []
        for url in settings.broker_urls():  # a cluster: any node answering will do
            try:
                connection = await asyncio.wait_for(aio_pika.connect(url), 10)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is told to the user
                problems.append(f"RabbitMQ does not answer at {redact(url)} ({type(exc).__name__}: {exc}).")
                continue
            await connection.close()
            return
        typer.echo(
            "\n".join(problems) + "\nStart it with:  rabbitmq-server -detached   (or set ESI_AMQP_URL)", err=True
        )
        raise typer.Exit(1) from None

    async def postgres() -> None:
        import asyncpg

        try:
            conn = await asyncio.wait_for(asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres"), 10)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is told to the user
            typer.echo(
                f"PostgreSQL does not answer on 127.0.0.1:5432 ({type(exc).__name__}: {exc}); the tests "
                "need it.\nStart it with:  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
                "main start",
                err=True,
            )
            raise typer.Exit(1) from None
        await conn.close()

    checks = {"broker": broker, "postgres": postgres}
    if what not in checks:
        typer.echo(f"esi: check one of {', '.join(checks)}", err=True)
        raise typer.Exit(2)
    asyncio.run(checks[what]())
