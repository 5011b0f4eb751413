"""`esi contracts export DIR` and `esi contracts check DIR`: the contract as files, and the guard on its changes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from esi.systems.registry import Registry

contracts_app = typer.Typer(
    no_args_is_help=True, help="The bus's contract: AsyncAPI document and JSON Schemas, and its breaking changes"
)

DirArg = Annotated[Path, typer.Argument(help="the snapshot's directory (the repository's is contracts/)")]


def _registry() -> Registry:
    """The systems of this deployment: built-in, installed, and ESI_SYSTEMS."""
    from esi.config import Settings
    from esi.systems.registry import RegistryError, load_registry

    try:
        return load_registry(Settings().systems)
    except (RegistryError, ValueError) as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None


@contracts_app.command("export")
def export(directory: DirArg) -> None:
    """Write DIR/asyncapi.json and DIR/schemas/<name>.json (sorted keys, trailing newline: diffs stay clean)."""
    from esi.contracts.compat import live_contract, write_contract

    contract = live_contract(_registry())
    written = write_contract(contract, directory)
    typer.echo(
        f"wrote {len(written)} files to {directory}/ ({len(contract.asyncapi['channels'])} channels, "
        f"{len(contract.asyncapi['components']['messages'])} messages)"
    )


@contracts_app.command("check")
def check(
    directory: DirArg,
    strict: Annotated[
        bool, typer.Option("--strict", help="also fail when the snapshot is merely out of date (additive changes)")
    ] = False,
) -> None:
    """Compare the live contract with the snapshot in DIR: exit 1 on a breaking change, 0 on additive ones."""
    from esi.contracts.compat import ASYNCAPI_FILE, compare, live_contract, load_contract

    try:
        snapshot = load_contract(directory)
    except FileNotFoundError:
        typer.echo(
            f"esi: no {ASYNCAPI_FILE} in {directory}/: write one with `esi contracts export {directory}`", err=True
        )
        raise typer.Exit(2) from None
    report = compare(snapshot, live_contract(_registry()))
    for finding in report.findings:
        typer.echo(str(finding))
    if report.breaking:
        typer.echo(
            f"esi: {len(report.breaking)} breaking change(s) against {directory}/. Keep the contract (restore "
            f"the field, the type, the message), or raise the message's version and give it an upcaster from "
            f"the previous one; then `esi contracts export {directory}` and commit it.",
            err=True,
        )
        raise typer.Exit(1)
    if report.findings or not report.identical:
        typer.echo(
            f"the contract changed compatibly; the snapshot is out of date: run "
            f"`esi contracts export {directory}` and commit it"
        )
        if strict:
            raise typer.Exit(1)
        return
    typer.echo(
        f"contract unchanged: {len(snapshot.asyncapi.get('channels', {}))} channels, {len(snapshot.schemas)} schemas"
    )
