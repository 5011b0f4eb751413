"""`esi topology export`: the broker topology esi declares, as a RabbitMQ definitions file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

topology_app = typer.Typer(no_args_is_help=True, help="The broker topology esi declares")

DEFINITIONS_FILE = "deploy/rabbitmq/definitions.json"
#: the command that regenerates the repository's definitions file (the deployment test names it when they differ)
EXPORT_COMMAND = f"esi topology export --output {DEFINITIONS_FILE}"


def definitions_text() -> str:
    """The definitions document of the topology of esi's default settings (not the environment's), as text."""
    from esi import runtime
    from esi.bus.definitions import definitions, render
    from esi.config import Settings

    settings = Settings.model_construct()  # the defaults: no environment, no .env
    registry = runtime.registry_from(settings)
    return render(definitions(runtime.topology_from(settings, registry)))


@topology_app.command("export")
def export(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file (default: stdout)")] = None,
) -> None:
    """Print (or write) the RabbitMQ definitions of the queues, exchanges and bindings esi declares with its default
    settings: deploy/rabbitmq/definitions.json, which docker compose imports into the broker."""
    text = definitions_text()
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")
