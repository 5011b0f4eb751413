"""What several command groups share: the settings, the API's address and credentials, `--since`, and durations."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import httpx
import typer

from esi.config import Settings, parse_duration

UserOpt = Annotated[
    str | None, typer.Option("--user", envvar="ESI_API_USER", help="API client id (default in demo: demo)")
]
PasswordOpt = Annotated[
    str | None, typer.Option("--password", envvar="ESI_API_PASSWORD", help="its password (default in demo: demo)")
]
ApiOpt = Annotated[str | None, typer.Option(help="the esi API (default: http://127.0.0.1:ESI_HTTP_PORT)")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="within this long: 90s, 15m, 2h, 7d")]


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the setting
        typer.echo(f"esi: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


def _duration(text: str, *, name: str) -> timedelta:
    """`esi.config.parse_duration` for an option (90s, 15m, 2h, 7d, 1w); exits 2 naming the problem."""
    try:
        return timedelta(seconds=parse_duration(text, name=name))
    except ValueError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None


def _auth(user: str | None, password: str | None) -> tuple[str, str] | None:
    if user:
        return (user, password or "")
    if _settings().env == "demo":
        from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD

        return (DEMO_CLIENT_ID, DEMO_PASSWORD)
    return None


def _call_api(
    method: str, path: str, *, api: str | None, user: str | None, password: str | None, **kwargs: Any
) -> dict[str, Any]:
    """One call to the API as an operator; exits 3 when it cannot be reached, 1 on an error answer."""
    base = api or f"http://127.0.0.1:{_settings().http_port}"
    try:
        response = httpx.request(method, f"{base}{path}", timeout=30, auth=_auth(user, password), **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"esi: cannot reach the API at {base}: {exc}", err=True)
        raise typer.Exit(3) from None
    body: dict[str, Any] = response.json()
    if response.status_code >= 400:
        typer.echo(f"esi: {json.dumps(body.get('error', body), ensure_ascii=False)}", err=True)
        raise typer.Exit(1)
    return body
