"""`esi status`, `esi trace` and `esi find`: one request's state and its timeline, the requests of a business key,
from the API."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer

from esi.cli.common import ApiOpt, PasswordOpt, UserOpt, _auth, _settings


def status(request_id: str, api: ApiOpt = None, user: UserOpt = None, password: PasswordOpt = None) -> None:
    """Print the state of a request as JSON."""
    base = api or f"http://127.0.0.1:{_settings().http_port}"
    try:
        response = httpx.get(f"{base}/requests/{request_id}", timeout=10, auth=_auth(user, password))
    except httpx.HTTPError as exc:
        typer.echo(f"esi: cannot reach the API at {base}: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(response.json(), ensure_ascii=False, indent=2))
    if response.status_code == 404:
        raise typer.Exit(1)


def trace(
    request_id: str,
    api: ApiOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="the raw timeline as JSON")] = False,
    user: UserOpt = None,
    password: PasswordOpt = None,
) -> None:
    """Every hop of a request: accepted, published, consumed, external calls, retries, answers, the end."""
    base = api or f"http://127.0.0.1:{_settings().http_port}"
    try:
        response = httpx.get(f"{base}/requests/{request_id}/timeline", timeout=10, auth=_auth(user, password))
    except httpx.HTTPError as exc:
        typer.echo(f"esi: cannot reach the API at {base}: {exc}", err=True)
        raise typer.Exit(3) from None
    body = response.json()
    if response.status_code != 200:
        typer.echo(json.dumps(body, ensure_ascii=False), err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    typer.echo(f"request {request_id}: {body['status']}")
    for event in body["events"]:
        detail = event.get("detail") or {}
        extra = " ".join(f"{k}={v}" for k, v in detail.items())
        typer.echo(
            f"{event['at'][11:23]}  {event['service']:<6} {event['event']:<17} "
            f"{event.get('message_type') or '':<22} {extra}".rstrip()
        )


def find(
    key: str,
    api: ApiOpt = None,
    limit: Annotated[int, typer.Option(help="requests per page (1-1000)", min=1, max=1000)] = 50,
    after: Annotated[str | None, typer.Option(help="the page after this cursor (the `next:` of a page)")] = None,
    every: Annotated[bool, typer.Option("--all", help="every page, one after another")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per request")] = False,
    user: UserOpt = None,
    password: PasswordOpt = None,
) -> None:
    """The requests that carry a business key (order, user, DMS user, policy), newest first, a page at a time."""
    base = api or f"http://127.0.0.1:{_settings().http_port}"
    params: dict[str, str | int] = {"key": key, "limit": limit}
    if after:
        params["after"] = after
    while True:
        try:
            response = httpx.get(f"{base}/requests", params=params, timeout=30, auth=_auth(user, password))
        except httpx.HTTPError as exc:
            typer.echo(f"esi: cannot reach the API at {base}: {exc}", err=True)
            raise typer.Exit(3) from None
        body = response.json()
        if response.status_code != 200:
            typer.echo(json.dumps(body, ensure_ascii=False), err=True)
            raise typer.Exit(1)
        for record in body["requests"]:
            if as_json:
                typer.echo(json.dumps(record, ensure_ascii=False))
            else:
                typer.echo(
                    f"{record['created_at'][:23]}  {record['request_id']:<40} {record['status']:<14} "
                    f"{record['target']}/{record['message_type']}"
                )
        following = body.get("next")
        if following is None:
            return
        if not every:
            typer.echo(f"next: {following}", err=True)
            return
        params["after"] = following
