"""`esi systems status|pause|resume` (maintenance pauses, circuit breakers) and `esi audit`, through the API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from esi.cli.common import ApiOpt, PasswordOpt, SinceOpt, UserOpt, _call_api

systems_app = typer.Typer(no_args_is_help=True, help="The systems: maintenance pauses and circuit breakers")


@systems_app.command("status")
def systems_status(
    api: ApiOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Each system: paused or not (for every replica), and the breakers its adapter processes report."""
    body = _call_api("GET", "/systems", api=api, user=user, password=password)
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    for system in body["systems"]:
        if system["origin"]:
            continue
        pause = system["paused"]
        state = "paused" if pause else "running"
        if pause:
            state += f" by {pause['paused_by']}" + (f" until {pause['until']}" if pause["until"] else "")
            state += f" ({pause['reason']})" if pause["reason"] else ""
        breakers = ", ".join(f"{b['instance']}: {b['state']} since {b['since']}" for b in system["breakers"])
        typer.echo(f"{system['code']:<10} {state}" + (f"; breakers {breakers}" if breakers else ""))


@systems_app.command("pause")
def systems_pause(
    code: Annotated[str, typer.Argument(metavar="SYSTEM")],
    for_: Annotated[str | None, typer.Option("--for", help="90s, 15m, 2h, 7d (default: until resumed)")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    api: ApiOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
) -> None:
    """Pause a system for maintenance: every adapter replica stops taking its messages, which wait in its queue."""
    body = _call_api(
        "POST", f"/systems/{code}/pause", api=api, user=user, password=password, json={"for": for_, "reason": reason}
    )
    until = body["paused"]["until"]
    typer.echo(f"{body['system']} paused" + (f" until {until}" if until else " until resumed"))


@systems_app.command("resume")
def systems_resume(
    code: Annotated[str, typer.Argument(metavar="SYSTEM")],
    api: ApiOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
) -> None:
    """Lift a system's pause: every replica takes its messages again."""
    body = _call_api("POST", f"/systems/{code}/resume", api=api, user=user, password=password)
    typer.echo(f"{body['system']} resumed" + ("" if body["was_paused"] else " (it was not paused)"))


def audit(
    action: Annotated[str | None, typer.Option(help="dlq.replay, dlq.purge, system.pause, ...")] = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option()] = 50,
    api: ApiOpt = None,
    user: UserOpt = None,
    password: PasswordOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What operators did, newest first: who, when, what, how many."""
    params = {k: v for k, v in {"action": action, "since": since, "limit": limit}.items() if v is not None}
    body = _call_api("GET", "/audit", api=api, user=user, password=password, params=params)
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    for entry in body["entries"]:
        count = f" ×{entry['count']}" if entry["count"] is not None else ""
        typer.echo(
            f"{entry['at'][:19]}  {entry['client_id']:<16} {entry['action']:<14} {entry['subject'] or ''}"
            f"{count}".rstrip()
        )
