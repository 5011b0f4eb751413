"""`esi ...`: run the services and look at requests — the root command, one module per group of commands."""

from __future__ import annotations

from typing import Annotated

import typer

from esi.cli import clients, config, contracts, dlq, requests, retention, run, systems, topology

__all__ = ["app", "main"]

# completion on: `esi --install-completion bash` (or zsh, fish, powershell) installs it; docs/install.md
app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="esi — Enterprise System Integration bus",
)


def _version(value: bool) -> None:
    if value:
        import esi

        typer.echo(f"esi {esi.version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="print the installed version and exit"),
    ] = False,
) -> None:
    """esi — Enterprise System Integration bus"""


# the order of `esi --help`: the commands, then the groups
app.command("run")(run.run)
app.command("status")(requests.status)
app.command("trace")(requests.trace)
app.command("find")(requests.find)
app.command("check")(run.check)
app.command("audit")(systems.audit)
app.add_typer(config.config_app, name="config")
app.add_typer(clients.clients_app, name="clients")
app.add_typer(systems.systems_app, name="systems")
app.add_typer(contracts.contracts_app, name="contracts")
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(retention.retention_app, name="retention")
app.add_typer(topology.topology_app, name="topology")


def main() -> None:  # pragma: no cover
    app()
