"""`esi ...`: run the services and look at requests."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
import typer

from esi.config import Settings
from esi.contracts.cli import contracts_app

if TYPE_CHECKING:
    from esi.bus.dead_letters import DeadLetter, DeadLetters, Filters

_T = TypeVar("_T")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="esi — Enterprise System Integration bus")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the setting
        typer.echo(f"esi: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    services: Annotated[list[str] | None, typer.Argument(
        help="the adapters (onec dms crm ...) and fakes (fake-dms ...) to run; none: every adapter")] = None,
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
        typer.echo(f"esi: unknown service(s) {', '.join(unknown)}; choose from "
                   f"{' '.join([*registry.services, *registry.fakes])}", err=True)
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


UserOpt = Annotated[str | None, typer.Option("--user", envvar="ESI_API_USER",
                                                help="API client id (default in demo: demo)")]
PasswordOpt = Annotated[str | None, typer.Option("--password", envvar="ESI_API_PASSWORD",
                                                    help="its password (default in demo: demo)")]


def _auth(user: str | None, password: str | None) -> tuple[str, str] | None:
    if user:
        return (user, password or "")
    if _settings().env == "demo":
        from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD

        return (DEMO_CLIENT_ID, DEMO_PASSWORD)
    return None


@app.command()
def status(
    request_id: str,
    api: Annotated[str | None, typer.Option(help="the esi API (default: http://127.0.0.1:ESI_HTTP_PORT)")] = None,
    user: UserOpt = None, password: PasswordOpt = None,
) -> None:
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


@app.command()
def trace(
    request_id: str,
    api: Annotated[str | None, typer.Option(help="the esi API (default: http://127.0.0.1:ESI_HTTP_PORT)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the raw timeline as JSON")] = False,
    user: UserOpt = None, password: PasswordOpt = None,
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
        typer.echo(f"{event['at'][11:23]}  {event['service']:<6} {event['event']:<17} "
                   f"{event.get('message_type') or '':<22} {extra}".rstrip())


@app.command(hidden=False)
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
            except Exception as exc:
                problems.append(f"RabbitMQ does not answer at {redact(url)} ({type(exc).__name__}: {exc}).")
                continue
            await connection.close()
            return
        typer.echo("\n".join(problems) + "\nStart it with:  rabbitmq-server -detached   (or set ESI_AMQP_URL)",
                   err=True)
        raise typer.Exit(1) from None

    async def postgres() -> None:
        import asyncpg

        try:
            conn = await asyncio.wait_for(asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres"), 10)
        except Exception as exc:
            typer.echo(f"PostgreSQL does not answer on 127.0.0.1:5432 ({type(exc).__name__}: {exc}); the tests "
                       "need it.\nStart it with:  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
                       "main start", err=True)
            raise typer.Exit(1) from None
        await conn.close()

    checks = {"broker": broker, "postgres": postgres}
    if what not in checks:
        typer.echo(f"esi: check one of {', '.join(checks)}", err=True)
        raise typer.Exit(2)
    asyncio.run(checks[what]())


clients_app = typer.Typer(no_args_is_help=True, help="API clients: make entries for the clients file")
app.add_typer(clients_app, name="clients")


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT_ID")],
    send: Annotated[list[str] | None,
                    typer.Option("--send", help="target:message_type, e.g. dms:create_user or crm:*")] = None,
    read: Annotated[bool, typer.Option("--read/--no-read", help="may read the outcome of its requests")] = True,
    operator: Annotated[bool, typer.Option("--operator", help="may use /dlq and replay")] = False,
    api_key: Annotated[bool, typer.Option("--api-key", help="also generate an API key (printed once)")] = False,
    file: Annotated[str | None, typer.Option("--file", help="add to this clients file (created if missing)")] = None,
) -> None:
    """Hash a new client's password (asked for) and print, or add, its clients-file entry."""
    from esi.runtime import registry_from
    from esi.security import generate_api_key, make_client_entry

    registry_from(_settings())  # the scopes name the systems this deployment runs with
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    key = generate_api_key(client_id) if api_key else None
    entry = make_client_entry(client_id, password=password, api_key=key, send=send or [], read=read,
                              operator=operator)
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


SinceOpt = Annotated[str | None, typer.Option("--since", help="within this long: 90s, 15m, 2h, 7d")]

systems_app = typer.Typer(no_args_is_help=True, help="The systems: maintenance pauses and circuit breakers")
app.add_typer(systems_app, name="systems")

ApiOpt = Annotated[str | None, typer.Option(help="the esi API (default: http://127.0.0.1:ESI_HTTP_PORT)")]


def _call_api(method: str, path: str, *, api: str | None, user: str | None, password: str | None,
              **kwargs: Any) -> dict[str, Any]:
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


@systems_app.command("status")
def systems_status(api: ApiOpt = None, user: UserOpt = None, password: PasswordOpt = None,
                   as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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
def systems_pause(code: Annotated[str, typer.Argument(metavar="SYSTEM")],
                  for_: Annotated[str | None, typer.Option("--for", help="90s, 15m, 2h, 7d (default: until "
                                                                             "resumed)")] = None,
                  reason: Annotated[str | None, typer.Option("--reason")] = None,
                  api: ApiOpt = None, user: UserOpt = None, password: PasswordOpt = None) -> None:
    """Pause a system for maintenance: every adapter replica stops taking its messages, which wait in its queue."""
    body = _call_api("POST", f"/systems/{code}/pause", api=api, user=user, password=password,
                     json={"for": for_, "reason": reason})
    until = body["paused"]["until"]
    typer.echo(f"{body['system']} paused" + (f" until {until}" if until else " until resumed"))


@systems_app.command("resume")
def systems_resume(code: Annotated[str, typer.Argument(metavar="SYSTEM")], api: ApiOpt = None,
                   user: UserOpt = None, password: PasswordOpt = None) -> None:
    """Lift a system's pause: every replica takes its messages again."""
    body = _call_api("POST", f"/systems/{code}/resume", api=api, user=user, password=password)
    typer.echo(f"{body['system']} resumed" + ("" if body["was_paused"] else " (it was not paused)"))


@app.command("audit")
def audit(action: Annotated[str | None, typer.Option(help="dlq.replay, dlq.purge, system.pause, ...")] = None,
          since: SinceOpt = None, limit: Annotated[int, typer.Option()] = 50, api: ApiOpt = None,
          user: UserOpt = None, password: PasswordOpt = None,
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What operators did, newest first: who, when, what, how many."""
    params = {k: v for k, v in {"action": action, "since": since, "limit": limit}.items() if v is not None}
    body = _call_api("GET", "/audit", api=api, user=user, password=password, params=params)
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    for entry in body["entries"]:
        count = f" ×{entry['count']}" if entry["count"] is not None else ""
        typer.echo(f"{entry['at'][:19]}  {entry['client_id']:<16} {entry['action']:<14} {entry['subject'] or ''}"
                   f"{count}".rstrip())


app.add_typer(contracts_app, name="contracts")

dlq_app = typer.Typer(no_args_is_help=True, help="Inspect, replay and purge dead letters (nothing is lost by looking)")
app.add_typer(dlq_app, name="dlq")


def _filters(queue: str | None, reason: str | None, since: str | None, ids: Sequence[str] = ()) -> Filters:
    from esi.bus.dead_letters import Filters, parse_duration

    try:
        return Filters(queue=queue, reason=reason, since=parse_duration(since) if since else None, ids=tuple(ids))
    except ValueError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None


def _with_dead_letters(action: Callable[[DeadLetters], Awaitable[_T]]) -> _T:
    """Run `action(dead_letters)` on a connection of its own."""
    from esi.bus.dead_letters import DeadLetters
    from esi.runtime import registry_from, topology_from

    settings = _settings()
    registry = registry_from(settings)

    async def go() -> _T:
        import aio_pika

        from esi.bus.connection import redact

        connection, problems = None, []
        for url in settings.broker_urls():  # a cluster: the first node that answers (one may be down)
            try:
                connection = await aio_pika.connect(url, client_properties={"connection_name": "esi-dlq"})
                break
            except Exception as exc:
                problems.append(f"{redact(url)}: {exc}")
        if connection is None:
            typer.echo(f"esi: cannot connect to RabbitMQ: {'; '.join(problems)}", err=True)
            raise typer.Exit(3) from None
        try:
            return await action(DeadLetters(connection, topology_from(settings, registry)))
        except ValueError as exc:
            typer.echo(f"esi: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            await connection.close()

    return asyncio.run(go())


def _audit_cli(action: str, *, subject: str | None, count: int, detail: dict[str, Any]) -> None:
    """What an operator did from the command line goes to the audit log too, as `cli:<user>`."""
    import getpass

    from esi.store import Store

    async def write() -> None:
        store = await Store.open(_settings().database_url)
        try:
            await store.audit.record(action, client_id=f"cli:{getpass.getuser()}", subject=subject, count=count,
                              detail=detail)
        finally:
            await store.aclose()

    try:
        asyncio.run(write())
    except Exception as exc:  # the messages moved already: say so, do not fail the command
        typer.echo(f"esi: could not write the audit log ({exc})", err=True)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _table(letters: Iterable[DeadLetter]) -> None:
    rows = [("ID", "QUEUE", "ROUTING KEY", "REASON", "ATTEMPTS", "AGE")]
    for d in letters:
        reason = d.reason if len(d.reason) <= 60 else d.reason[:57] + "..."
        rows.append((d.id, d.queue, d.routing_key, reason, str(d.attempts), _age(d.age_s)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())


QueueOpt = Annotated[str | None, typer.Option("--queue", help="a DLQ (dms_dead_letter_queue) or its system (dms)")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="text the reason or error class contains")]


@dlq_app.command("list")
def dlq_list(queue: QueueOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
             limit: Annotated[int | None, typer.Option("--limit")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False) -> None:
    """List dead letters (they stay in their queue)."""
    filters = _filters(queue, reason, since)
    letters = _with_dead_letters(lambda dl: dl.list(filters, limit=limit))
    if as_json:
        for d in letters:
            typer.echo(json.dumps(d.summary(), ensure_ascii=False))
    else:
        _table(letters)


@dlq_app.command("show")
def dlq_show(ident: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Headers and body of one dead letter (it stays in its queue)."""
    letter = _with_dead_letters(lambda dl: dl.show(ident))
    if letter is None:
        typer.echo(f"esi: no dead letter with id {ident}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(letter.detail(), ensure_ascii=False, indent=2))


@dlq_app.command("replay")
def dlq_replay(ids: Annotated[list[str] | None, typer.Argument(metavar="[ID ...]")] = None,
               all_: Annotated[bool, typer.Option("--all", help="every dead letter matching the filters")] = False,
               queue: QueueOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
               rate: Annotated[float | None, typer.Option("--rate", help="at most N messages per second")] = None,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be replayed")] = False) -> None:
    """Republish dead letters to their original routing key, attempt count reset."""
    if not ids and not all_:
        typer.echo("esi: name the IDs to replay, or --all (with filters) for every match", err=True)
        raise typer.Exit(2)
    filters = _filters(queue, reason, since, ids or ())
    letters = _with_dead_letters(lambda dl: dl.replay(filters, rate=rate, dry_run=dry_run))
    if not dry_run:
        _audit_cli("dlq.replay", subject=queue, count=len(letters),
                   detail={"ids": [d.id for d in letters][:1000], "reason": reason, "since": since})
    _table(letters)
    typer.echo(f"{'would replay' if dry_run else 'replayed'} {len(letters)} message(s)")


@dlq_app.command("purge")
def dlq_purge(queue: QueueOpt = None, reason: ReasonOpt = None, since: SinceOpt = None,
              yes: Annotated[bool, typer.Option("--yes", help="really delete them")] = False) -> None:
    """Delete dead letters for good (needs --yes)."""
    if not yes:
        typer.echo("esi: purge deletes messages for good; add --yes to confirm (see them first with esi dlq list)",
                   err=True)
        raise typer.Exit(2)
    filters = _filters(queue, reason, since)
    letters = _with_dead_letters(lambda dl: dl.purge(filters))
    _audit_cli("dlq.purge", subject=queue, count=len(letters),
               detail={"ids": [d.id for d in letters][:1000], "reason": reason, "since": since})
    typer.echo(f"purged {len(letters)} message(s)")


retention_app = typer.Typer(no_args_is_help=True, help="Delete requests kept longer than ESI_REQUEST_RETENTION")
app.add_typer(retention_app, name="retention")


@retention_app.command("run")
def retention_run(
    older_than: Annotated[str | None, typer.Option(
        help="delete what settled before this long ago (30d, 12h, seconds); default: ESI_REQUEST_RETENTION")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """One retention pass now, in batches: requests in a final state, their business keys and timelines."""
    from esi.config import parse_duration
    from esi.store import Store
    from esi.store.retention import run_pass

    settings = _settings()
    try:
        retention_s = (parse_duration(older_than, name="--older-than") if older_than is not None
                       else settings.request_retention_s)
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
    typer.echo(f"deleted {counts['requests']} requests, {counts['keys']} business keys, {counts['events']} timeline "
               f"events, {counts['outbox']} outbox rows settled before {counts['cutoff']} "
               f"({counts['batches']} batches, {counts['seconds']} s)")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
