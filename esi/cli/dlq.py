"""`esi dlq list|show|replay|purge`: the dead letters, straight from RabbitMQ; replays and purges are audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from esi.cli.common import SinceOpt, _duration, _settings

if TYPE_CHECKING:
    from esi.bus.dead_letters import DeadLetter, DeadLetters, Filters

_T = TypeVar("_T")

dlq_app = typer.Typer(no_args_is_help=True, help="Inspect, replay and purge dead letters (nothing is lost by looking)")


def _filters(queue: str | None, reason: str | None, since: str | None, ids: Sequence[str] = ()) -> Filters:
    """The filters of the options; a bad `--since` exits 2 before anything connects."""
    from esi.bus.dead_letters import Filters

    return Filters(
        queue=queue, reason=reason, since=_duration(since, name="--since") if since else None, ids=tuple(ids)
    )


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
            except Exception as exc:  # noqa: BLE001 - any failure to connect: try the next node, report them all
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
            await store.audit.record(
                action, client_id=f"cli:{getpass.getuser()}", subject=subject, count=count, detail=detail
            )
        finally:
            await store.aclose()

    try:
        asyncio.run(write())
    except Exception as exc:  # noqa: BLE001 - the messages moved already: say so, do not fail the command
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
def dlq_list(
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int | None, typer.Option("--limit")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
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
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID ...]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter matching the filters")] = False,
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    rate: Annotated[float | None, typer.Option("--rate", help="at most N messages per second")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be replayed")] = False,
) -> None:
    """Republish dead letters to their original routing key, attempt count reset."""
    if not ids and not all_:
        typer.echo("esi: name the IDs to replay, or --all (with filters) for every match", err=True)
        raise typer.Exit(2)
    filters = _filters(queue, reason, since, ids or ())
    letters = _with_dead_letters(lambda dl: dl.replay(filters, rate=rate, dry_run=dry_run))
    if not dry_run:
        _audit_cli(
            "dlq.replay",
            subject=queue,
            count=len(letters),
            detail={"ids": [d.id for d in letters][:1000], "reason": reason, "since": since},
        )
    _table(letters)
    typer.echo(f"{'would replay' if dry_run else 'replayed'} {len(letters)} message(s)")


@dlq_app.command("purge")
def dlq_purge(
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="really delete them")] = False,
) -> None:
    """Delete dead letters for good (needs --yes)."""
    if not yes:
        typer.echo(
            "esi: purge deletes messages for good; add --yes to confirm (see them first with esi dlq list)", err=True
        )
        raise typer.Exit(2)
    filters = _filters(queue, reason, since)
    letters = _with_dead_letters(lambda dl: dl.purge(filters))
    _audit_cli(
        "dlq.purge",
        subject=queue,
        count=len(letters),
        detail={"ids": [d.id for d in letters][:1000], "reason": reason, "since": since},
    )
    typer.echo(f"purged {len(letters)} message(s)")
