"""`esi clients add`: a new API client's entry for the clients file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from esi.cli.common import _settings

clients_app = typer.Typer(no_args_is_help=True, help="API clients: make entries for the clients file")


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT_ID")],
    send: Annotated[
        list[str] | None, typer.Option("--send", help="target:message_type, e.g. dms:create_user or crm:*")
    ] = None,
    read: Annotated[bool, typer.Option("--read/--no-read", help="may read the outcome of its requests")] = True,
    operator: Annotated[bool, typer.Option("--operator", help="may use /dlq and replay")] = False,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", help="a source whose events it may hand in (the scope events:<source>), e.g. crm"),
    ] = None,
    feeds: Annotated[
        list[str] | None, typer.Option("--feeds", help="a pull feed it may read (the scope feed:<subscriber>), e.g. 1c")
    ] = None,
    api_key: Annotated[bool, typer.Option("--api-key", help="also generate an API key (printed once)")] = False,
    file: Annotated[str | None, typer.Option("--file", help="add to this clients file (created if missing)")] = None,
    rate: Annotated[
        str | None,
        typer.Option("--rate", help='requests per second (default 200), or "unlimited" for a trusted client'),
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", min=1, help="requests at once after a pause (default: twice the rate)")
    ] = None,
    in_flight: Annotated[
        str | None,
        typer.Option("--in-flight", help='POSTs under way at once (default 256), or "unlimited"'),
    ] = None,
) -> None:
    """Hash a new client's password (asked for) and print, or add, its clients-file entry."""
    from esi.runtime import registry_from
    from esi.security import generate_api_key, make_client_entry

    catalog = registry_from(_settings()).catalog  # the scopes name the systems this deployment runs with
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    key = generate_api_key(client_id) if api_key else None
    entry = make_client_entry(
        client_id,
        password=password,
        api_key=key,
        send=send or [],
        read=read,
        operator=operator,
        rate=_number(rate, "--rate", float),
        burst=burst,
        in_flight=_whole(_number(in_flight, "--in-flight", int)),
        catalog=catalog,
    )
    entry.update(
        {name: [v.strip().lower() for v in values] for name, values in (("events", events), ("feeds", feeds)) if values}
    )
    if file:
        from pathlib import Path

        path = Path(file)
        data = json.loads(path.read_text()) if path.exists() else {"clients": []}
        data["clients"] = [c for c in data["clients"] if c.get("id") != client_id] + [entry]
        path.write_text(json.dumps(data, indent=2) + "\n")
        typer.echo(f"{client_id} written to {path}")
    else:
        typer.echo(json.dumps(entry, indent=2))
    if key:
        typer.echo(f"API key (shown once, send it as X-API-Key): {key}", err=True)


def _number(value: str | None, option: str, kind: type[float] | type[int]) -> float | int | str | None:
    """A quota option: a number, "unlimited", or None (the default)."""
    if value is None or value.strip().lower() == "unlimited":
        return None if value is None else "unlimited"
    try:
        number = kind(value)
    except ValueError:
        raise typer.BadParameter(f'{value!r} is not a number nor "unlimited"', param_hint=option) from None
    if number <= 0:
        raise typer.BadParameter("must be positive", param_hint=option)
    return number


def _whole(value: float | int | str | None) -> int | str | None:
    return int(value) if isinstance(value, float) else value
