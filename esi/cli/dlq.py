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
    from esi.runtime import registry_from

    settings = _settings()
    return asyncio.run(_with_dead_letters_async(settings, registry_from(settings), action))


async def _with_dead_letters_async(settings: Any, registry: Any, action: Callable[[DeadLetters], Awaitable[_T]]) -> _T:
    """`action(dead_letters)` on a connection of its own (the first broker node that answers)."""
    import aio_pika

    from esi.bus.connection import redact
    from esi.bus.dead_letters import DeadLetters
    from esi.runtime import topology_from

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


SystemOpt = Annotated[str | None, typer.Option("--system", help="the system whose DLQ (dms, crm, ...)")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="the message type (create_user, ...)")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="a business key the message carries (an order id, ...)")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="dead-lettered before: an ISO time or a duration ago")]


def _with_store(action: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run `action(ops)` over the store alone (the index: no broker connection). The store is not migrated here:
    the services migrate it when they start (a command that only reads the index need not pay for the check)."""
    from esi.dlq.ops import DeadLetterOps
    from esi.store import Database, Store

    settings = _settings()

    async def go() -> _T:
        from sqlalchemy.exc import DBAPIError

        store = Store(Database.open(settings.database_url))
        try:
            return await action(DeadLetterOps(None, store))
        except ValueError as exc:
            typer.echo(f"esi: {exc}", err=True)
            raise typer.Exit(2) from None
        except DBAPIError as exc:  # no index yet: a store no esi service of this version has started on
            first = str(exc).splitlines()[0]
            hint = "has an esi service migrated this store?"
            typer.echo(f"esi: cannot read the dead-letter index ({hint}): {first}", err=True)
            raise typer.Exit(3) from None
        finally:
            await store.aclose()

    return asyncio.run(go())


def _index_filter(ops: Any, **given: Any) -> Any:
    try:
        return ops.filter(**given)
    except ValueError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None


def _time_opt(text: str | None, name: str) -> str | None:
    """An ISO time from an option's ISO time or duration back from now; exits 2 naming a bad one."""
    if not text:
        return None
    from esi.dlq.ops import parse_time

    try:
        return parse_time(text, name=name)
    except ValueError as exc:
        typer.echo(f"esi: {exc}", err=True)
        raise typer.Exit(2) from None


def _index_table(letters: Iterable[Any]) -> None:
    rows = [("ID", "SYSTEM", "TYPE", "REASON", "KEYS", "ATTEMPTS", "AGE")]
    for d in letters:
        reason = f"{d.reason_code}: {d.reason}"
        reason = reason if len(reason) <= 60 else reason[:57] + "..."
        rows.append(
            (d.letter_id, d.system, d.message_type, reason, ",".join(d.keys)[:30], str(d.attempts), _age(d.age_s))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())


@dlq_app.command("list")
def dlq_list(
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    system: SystemOpt = None,
    message_type: TypeOpt = None,
    key: KeyOpt = None,
    until: UntilOpt = None,
    cursor: Annotated[int | None, typer.Option("--cursor", help="the next page: the cursor the last one gave")] = None,
) -> None:
    """List dead letters from the index, newest first (nothing is read from the queues)."""
    since, until = _time_opt(since, "--since"), _time_opt(until, "--until")

    async def page(ops: Any) -> tuple[list[Any], int | None, int]:
        filters = _index_filter(
            ops, queue=queue, reason=reason, since=since, until=until, system=system, message_type=message_type, key=key
        )
        letters, next_cursor = await ops.page(filters, after=cursor, limit=limit)
        return letters, next_cursor, await ops.count(filters)

    letters, next_cursor, total = _with_store(page)
    if as_json:
        for d in letters:
            typer.echo(json.dumps(d.summary(), ensure_ascii=False))
        return
    _index_table(letters)
    more = f"; next page: --cursor {next_cursor}" if next_cursor else ""
    typer.echo(f"{len(letters)} of {total} dead letter(s){more}", err=True)


@dlq_app.command("show")
def dlq_show(ident: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Headers and body of one dead letter (it stays in its queue)."""
    letter = _with_dead_letters(lambda dl: dl.show(ident))
    if letter is None:
        typer.echo(f"esi: no dead letter with id {ident}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(letter.detail(), ensure_ascii=False, indent=2))


RateOpt = Annotated[str | None, typer.Option("--rate", help="at most this many messages a second: 50/s or 50")]
FollowOpt = Annotated[
    bool, typer.Option("--follow/--no-follow", help="show the job's progress until it ends (Ctrl-C leaves it running)")
]
HereOpt = Annotated[
    bool, typer.Option("--here", help="run the job in this process (no esi API service runs jobs at this site)")
]


def _rate(text: str | None) -> int | None:
    if not text:
        return None
    number = text.strip().lower().removesuffix("/s")
    if not number.isdigit() or not 1 <= int(number) <= 10_000:
        typer.echo(f"esi: --rate must be messages a second, 1 to 10000 (50/s or 50): {text!r}", err=True)
        raise typer.Exit(2)
    return int(number)


def _progress_line(job: Any) -> str:
    p = job.progress()
    width = 30
    filled = int(width * (p["done"] + p["failed"]) / p["total"]) if p["total"] else width
    rate = f"{p['rate']}/s" if p["rate"] is not None else "-"
    eta = f"{p['eta_s']:.0f}s" if p["eta_s"] is not None else "-"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] job {p['id']} {p['state']}: {p['done']} done, {p['failed']} failed,"
        f" {p['remaining']} remaining, {rate}, ETA {eta}"
    )


def _follow(store: Any, job_id: int, *, here: bool) -> Any:
    """Show the job's progress until it ends; with `here`, run it in this process."""
    import sys
    import time

    settings = _settings()

    async def watch() -> Any:
        started = time.monotonic()
        warned = False
        while True:
            job = await store.dlq_jobs.get(job_id)
            sys.stderr.write("\r" + _progress_line(job))
            if job.finished:
                sys.stderr.write("\n")
                return job
            if job.state == "pending" and not warned and time.monotonic() - started > 10:
                typer.echo(
                    "\nesi: no esi API service has taken the job yet (is one running? --here runs it here)", err=True
                )
                warned = True
            await asyncio.sleep(0.5)

    if here:
        from esi.dlq.jobs import JobRunner
        from esi.runtime import registry_from, topology_from

        async def run() -> Any:
            import aio_pika

            connection = await aio_pika.connect(
                settings.broker_urls()[0], client_properties={"connection_name": "esi-dlq"}
            )
            try:
                runner = JobRunner(
                    connection=connection,
                    store=store,
                    topology=topology_from(settings, registry_from(settings)),
                    lease_s=settings.dlq_job_lease_s,
                )
                job = await store.dlq_jobs.claim(runner.owner, settings.dlq_job_lease_s, job_id=job_id)
                if job is None:  # an API service took it first: follow it there
                    return await watch()
                task = asyncio.create_task(runner.run(job))
                while not task.done():
                    await asyncio.sleep(0.5)
                    current = await store.dlq_jobs.get(job_id)
                    sys.stderr.write("\r" + _progress_line(current))
                await task
                return await store.dlq_jobs.get(job_id)
            finally:
                await connection.close()

        return run()

    return watch()


def _start_job(kind: str, filters_given: dict[str, Any], *, rate: int | None, follow: bool, here: bool) -> None:
    import getpass

    from esi.dlq.ops import start_job

    async def go(ops: Any) -> Any:
        filters = _index_filter(ops, **filters_given)
        job = await start_job(ops.store, kind, filters, by=f"cli:{getpass.getuser()}", rate=rate)
        typer.echo(f"job {job.id}: {kind} {job.total} dead letter(s)", err=True)
        if not follow and not here:
            return job
        return await _follow(ops.store, job.id, here=here)

    job = _with_store(go)
    if not follow and not here:
        typer.echo(json.dumps(job.progress(), ensure_ascii=False))
        return
    verb = "replayed" if kind == "replay" else "purged"
    typer.echo(f"{verb} {job.done} message(s); job {job.id} {job.state}, {job.failed} failed")
    if job.state != "done" or job.failed:
        raise typer.Exit(1)


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID ...]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter matching the filters")] = False,
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    rate: RateOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be replayed")] = False,
    system: SystemOpt = None,
    message_type: TypeOpt = None,
    key: KeyOpt = None,
    until: UntilOpt = None,
    follow: FollowOpt = True,
    here: HereOpt = False,
) -> None:
    """Replay dead letters to their original routing key, attempt count reset, as a job run by the esi API
    service (throttled with --rate; its progress with --follow, or `esi dlq job ID`)."""
    if not ids and not all_:
        typer.echo("esi: name the IDs to replay, or --all (with filters) for every match", err=True)
        raise typer.Exit(2)
    given = {
        "queue": queue,
        "reason": reason,
        "since": _time_opt(since, "--since"),
        "until": _time_opt(until, "--until"),
        "system": system,
        "message_type": message_type,
        "key": key,
        "ids": ids or (),
    }
    per_second = _rate(rate)
    if dry_run:
        total = _with_store(lambda ops: ops.count(_index_filter(ops, **given)))
        typer.echo(f"would replay {total} message(s)")
        return
    _start_job("replay", given, rate=per_second, follow=follow, here=here)


@dlq_app.command("purge")
def dlq_purge(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID ...]")] = None,
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="really delete them")] = False,
    system: SystemOpt = None,
    message_type: TypeOpt = None,
    key: KeyOpt = None,
    until: UntilOpt = None,
    rate: RateOpt = None,
    follow: FollowOpt = True,
    here: HereOpt = False,
) -> None:
    """Delete dead letters for good (needs --yes), as a job run by the esi API service."""
    given = {
        "queue": queue,
        "reason": reason,
        "since": _time_opt(since, "--since"),
        "until": _time_opt(until, "--until"),
        "system": system,
        "message_type": message_type,
        "key": key,
        "ids": ids or (),
    }
    if not yes:
        typer.echo(
            "esi: purge deletes messages for good; add --yes to confirm (see them first with esi dlq list)", err=True
        )
        raise typer.Exit(2)
    _start_job("purge", given, rate=_rate(rate), follow=follow, here=here)


@dlq_app.command("jobs")
def dlq_jobs(limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20) -> None:
    """The latest replay and purge jobs with their progress."""
    for job in _with_store(lambda ops: ops.store.dlq_jobs.recent(limit)):
        typer.echo(_progress_line(job))


@dlq_app.command("job")
def dlq_job(
    job_id: Annotated[int, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", help="until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One job's progress: done, failed, remaining, rate, ETA."""

    async def show(ops: Any) -> Any:
        job = await ops.store.dlq_jobs.get(job_id)
        if job is not None and follow:
            job = await _follow(ops.store, job_id, here=False)
        return job

    job = _with_store(show)
    if job is None:
        typer.echo(f"esi: no dead-letter job {job_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(job.progress(), ensure_ascii=False) if as_json else _progress_line(job))


@dlq_app.command("cancel")
def dlq_cancel(job_id: Annotated[int, typer.Argument(metavar="JOB")]) -> None:
    """Stop a job; the letters it has not reached stay parked."""
    job = _with_store(lambda ops: ops.store.dlq_jobs.cancel(job_id))
    if job is None:
        typer.echo(f"esi: no dead-letter job {job_id}", err=True)
        raise typer.Exit(1)
    _audit_cli("dlq.job.cancel", subject=f"job {job_id}", count=job.remaining, detail={"job": job_id})
    typer.echo(_progress_line(job))


@dlq_app.command("edit")
def dlq_edit(ident: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Correct a dead letter's payload in $EDITOR, then replay it (checked against its message type's JSON
    Schema first; the audit log keeps the payload before and after)."""
    import getpass
    import os
    import shlex
    import subprocess
    import tempfile

    from esi.dlq.edit import EditRefused, edit_and_replay
    from esi.dlq.entries import envelope_fields
    from esi.dlq.ops import DeadLetterOps
    from esi.runtime import registry_from
    from esi.security.masking import mask
    from esi.store import Store

    settings = _settings()
    registry = registry_from(settings)

    async def with_ops(action: Callable[[DeadLetterOps], Awaitable[_T]]) -> _T:
        store = await Store.open(settings.database_url)
        try:
            return await _with_dead_letters_async(settings, registry, lambda dl: action(DeadLetterOps(dl, store)))
        finally:
            await store.aclose()

    letter = asyncio.run(with_ops(lambda ops: ops.open(ident)))
    if letter is None:
        typer.echo(f"esi: no dead letter with id {ident}", err=True)
        raise typer.Exit(1)
    envelope = envelope_fields(letter.body)
    if "payload" not in envelope:
        typer.echo("esi: only a message with an esi envelope can be edited", err=True)
        raise typer.Exit(1)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"esi-dlq-{ident[:12]}-", delete=False) as f:
        f.write(json.dumps(envelope["payload"], ensure_ascii=False, indent=2) + "\n")
        path = f.name
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    if subprocess.run([*shlex.split(editor), path], check=False).returncode != 0:  # noqa: S603 - the operator's editor
        typer.echo(f"esi: the editor failed; nothing was replayed (your edit is in {path})", err=True)
        raise typer.Exit(1)
    try:
        with open(path, encoding="utf-8") as edited:
            payload = json.load(edited)
    except json.JSONDecodeError as exc:
        typer.echo(f"esi: the edit is not JSON ({exc}); nothing was replayed (it is in {path})", err=True)
        raise typer.Exit(1) from None
    if payload == envelope["payload"]:
        typer.echo("esi: nothing changed; nothing was replayed", err=True)
        raise typer.Exit(1)
    try:
        detail = asyncio.run(
            with_ops(
                lambda ops: edit_and_replay(
                    ops,
                    registry.catalog,
                    ident,
                    payload,
                    by=f"cli:{getpass.getuser()}",
                    mask=lambda value: mask(value, reveal=False),
                )
            )
        )
    except EditRefused as exc:
        typer.echo(f"esi: {exc.message}; nothing was replayed (your edit is in {path})", err=True)
        raise typer.Exit(1) from None
    os.unlink(path)
    typer.echo(f"edited and replayed {detail['id']} ({detail['message_type']})")


@dlq_app.command("export")
def dlq_export(
    output: Annotated[str, typer.Option("--output", "-o", help="the JSON Lines file (- : standard output)")] = "-",
    queue: QueueOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    system: SystemOpt = None,
    message_type: TypeOpt = None,
    key: KeyOpt = None,
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID ...]")] = None,
) -> None:
    """Write dead letters as JSON Lines (headers, properties, body); they stay in their queues."""
    import sys

    from esi.dlq.transfer import export_lines
    from esi.runtime import registry_from
    from esi.store import Store

    given = {
        "queue": queue,
        "reason": reason,
        "since": _time_opt(since, "--since"),
        "until": _time_opt(until, "--until"),
        "system": system,
        "message_type": message_type,
        "key": key,
        "ids": ids or (),
    }
    settings = _settings()

    async def go(dead_letters: Any) -> int:
        from esi.dlq.ops import DeadLetterOps

        store = await Store.open(settings.database_url)
        out = sys.stdout.buffer if output == "-" else open(output, "wb")  # noqa: SIM115, ASYNC230 - closed below
        count = 0
        try:
            ops = DeadLetterOps(dead_letters, store)
            async for line in export_lines(ops, _index_filter(ops, **given)):
                out.write(line)
                count += 1
        finally:
            out.flush()
            if out is not sys.stdout.buffer:
                out.close()
            await store.aclose()
        return count

    count = asyncio.run(_with_dead_letters_async(settings, registry_from(settings), go))
    typer.echo(f"exported {count} dead letter(s)", err=True)


@dlq_app.command("import")
def dlq_import(
    path: Annotated[str, typer.Argument(metavar="FILE", help="JSON Lines from esi dlq export (- : standard input)")],
    replay: Annotated[
        bool, typer.Option("--replay", help="publish each to its original routing key instead of its DLQ")
    ] = False,
) -> None:
    """Put exported dead letters back: into their DLQ (indexed), or replayed with --replay."""
    import sys

    from esi.dlq.ops import DeadLetterOps
    from esi.dlq.transfer import load_lines
    from esi.runtime import registry_from, topology_from
    from esi.store import Store

    settings = _settings()
    registry = registry_from(settings)
    data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()  # noqa: SIM115 - read at once

    async def go(dead_letters: Any) -> int:
        store = await Store.open(settings.database_url)
        try:
            return await load_lines(
                data.splitlines(),
                connection=dead_letters._connection,
                ops=DeadLetterOps(dead_letters, store),
                topology=topology_from(settings, registry),
                replay=replay,
                keys=registry.business_keys,
            )
        finally:
            await store.aclose()

    count = asyncio.run(_with_dead_letters_async(settings, registry, go))
    _audit_cli("dlq.import", subject=path, count=count, detail={"replay": replay})
    typer.echo(f"{'replayed' if replay else 'imported'} {count} dead letter(s)")
