"""`esi retention run`: one pass of the request retention now."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from esi.cli.common import _settings

retention_app = typer.Typer(no_args_is_help=True, help="Delete requests kept longer than ESI_REQUEST_RETENTION")


@retention_app.command("run")
def retention_run(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="delete what settled before this long ago (30d, 12h, seconds); default: ESI_REQUEST_RETENTION"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """One retention pass now, in batches: requests in a final state, their business keys and timelines."""
    from esi.config import parse_duration
    from esi.store import Store
    from esi.store.retention import run_pass

    settings = _settings()
    try:
        retention_s = (
            parse_duration(older_than, name="--older-than") if older_than is not None else settings.request_retention_s
        )
    except ValueError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None
    if retention_s <= 0:
        typer.echo("esi: retention is off (ESI_REQUEST_RETENTION=0); pass --older-than to delete anyway", err=True)
        raise typer.Exit(2)

    async def go() -> dict[str, int | float | str]:
        store = await Store.open(settings.database_url)
        try:
            return (await run_pass(store, retention_s=retention_s)).as_dict()
        finally:
            await store.aclose()

    counts = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps(counts))
        return
    typer.echo(
        f"deleted {counts['requests']} requests, {counts['keys']} business keys, {counts['events']} timeline "
        f"events, {counts['outbox']} outbox rows settled before {counts['cutoff']} "
        f"({counts['batches']} batches, {counts['seconds']} s)"
    )
