"""`esi ...`: run the services and look at requests."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Optional

import httpx
import typer

from esi.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="esi — Enterprise System Integration bus")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the setting
        typer.echo(f"esi: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    services: Annotated[Optional[list[str]], typer.Argument(
        help="onec dms crm fake-creatio fake-dms (none: the three adapters)")] = None,
    with_fakes: Annotated[bool, typer.Option("--with-fakes", help="also start the fake Creatio and fake DMS")] = False,
    log_format: Annotated[Optional[str], typer.Option(help="json or text (default: ESI_LOG_FORMAT)")] = None,
) -> None:
    """Run services until SIGTERM/SIGINT; in-flight work is finished before exit."""
    from esi import runtime
    from esi.bus.connection import BrokerUnavailable
    from esi.logs import setup_logging

    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    chosen = list(services or runtime.ADAPTERS)
    unknown = [s for s in chosen if s not in runtime.SERVICES]
    if unknown:
        typer.echo(f"esi: unknown service(s) {', '.join(unknown)}; choose from {' '.join(runtime.SERVICES)}", err=True)
        raise typer.Exit(2)
    if with_fakes:
        chosen += [f for f in runtime.FAKES if f not in chosen]
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(runtime.run(settings, chosen))
    except BrokerUnavailable as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(3) from None
    except KeyboardInterrupt:  # pragma: no cover
        pass


@app.command()
def status(
    request_id: str,
    api: Annotated[Optional[str], typer.Option(help="the esi API (default: http://127.0.0.1:ESI_HTTP_PORT)")] = None,
) -> None:
    """Print the state of a request as JSON."""
    base = api or f"http://127.0.0.1:{_settings().http_port}"
    try:
        response = httpx.get(f"{base}/requests/{request_id}", timeout=10)
    except httpx.HTTPError as exc:
        typer.echo(f"esi: cannot reach the API at {base}: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(response.json(), ensure_ascii=False, indent=2))
    if response.status_code == 404:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
