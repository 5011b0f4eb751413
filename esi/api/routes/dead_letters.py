"""Dead letters over HTTP, for operators: `GET /dlq`, `GET /dlq/{ident}`, `POST /dlq/replay`, `POST /dlq/purge`;
replays and purges go to the audit log with who made them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from esi.api.responses import (
    COUNT_CHANGED,
    DEAD_LETTERS_UNAVAILABLE,
    FORBIDDEN_OPERATOR,
    INVALID_EDIT,
    INVALID_FILTER,
    UNKNOWN_DEAD_LETTER,
    UNKNOWN_JOB,
)
from esi.api.routes.table import Param, Route
from esi.bus.dead_letters import DeadLetters, Filters
from esi.config import parse_duration
from esi.dlq.edit import EditRefused, edit_and_replay
from esi.dlq.ops import CountChanged, DeadLetterOps, start_job
from esi.errors import ApiError
from esi.messages import Catalog
from esi.security.masking import mask
from esi.security.scopes import DLQ_EDIT, Principal, require_operator, require_scope
from esi.store import Store
from esi.store.dead_letters import IndexFilter

__all__ = ["DeadLetterRoutes", "EditRequest", "JobRequest", "PurgeRequest", "ReplayRequest"]


#: every dead-letter route: the operator scope, and a service with access to the queues
_OPERATOR = (FORBIDDEN_OPERATOR, DEAD_LETTERS_UNAVAILABLE)


class ReplayRequest(BaseModel):
    """Which dead letters to replay: named ids, or `all` that match the filters."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=10_000)
    all: bool = False
    queue: str | None = None
    reason: str | None = None
    since: str | None = Field(default=None, description="90s, 15m, 2h, 7d")
    rate: float | None = Field(default=None, gt=0, le=10_000)
    dry_run: bool = False


class PurgeRequest(BaseModel):
    """Which dead letters to delete, and how many the caller expects (the confirmation)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=10_000)
    queue: str | None = None
    reason: str | None = None
    since: str | None = Field(default=None, description="90s, 15m, 2h, 7d")
    expect: int = Field(ge=0, description="how many the caller saw and confirms deleting")


class JobRequest(BaseModel):
    """A replay or purge job: which dead letters (the filters, or ids), how fast, and for a purge the count the
    caller saw (`expect`: the confirmation)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["replay", "purge"]
    ids: list[str] = Field(default_factory=list, max_length=10_000)
    queue: str | None = Field(default=None, max_length=64)
    system: str | None = Field(default=None, max_length=32)
    type: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=200)
    code: str | None = Field(default=None, max_length=64)
    key: str | None = Field(default=None, max_length=255)
    since: str | None = Field(default=None, max_length=40, description="a duration back from now (15m) or an ISO time")
    until: str | None = Field(default=None, max_length=40, description="a duration back from now (15m) or an ISO time")
    rate: int | None = Field(default=None, ge=1, le=10_000, description="messages per second, at most")
    expect: int | None = Field(default=None, ge=0, description="a purge: how many the caller saw and confirms")


class EditRequest(BaseModel):
    """A dead letter's corrected payload (its envelope stays as it was)."""

    model_config = ConfigDict(extra="forbid")

    payload: dict[str, Any]


class DeadLetterRoutes:
    """The operator's view of the dead-letter queues; `dead_letters` is None where the service has no broker access
    for it (503)."""

    def __init__(
        self, dead_letters: DeadLetters | None, store: Store | None = None, catalog: Catalog | None = None
    ) -> None:
        self._dead_letters = dead_letters
        #: the message types' schemas an edit is checked against
        self._catalog = catalog
        #: where replays and purges are audited
        self._store = store

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/dlq",
                "list_dead_letters",
                self.list_letters,
                "Dead letters (they stay where they are)",
                params=(
                    Param("queue", str | None, Query(None, max_length=64)),
                    Param("reason", str | None, Query(None, max_length=200)),
                    Param("since", str | None, Query(None, max_length=16)),
                    Param("limit", int | None, Query(None, ge=1, le=10_000)),
                    Param("system", str | None, Query(None, max_length=32)),
                    Param("type", str | None, Query(None, max_length=64)),
                    Param("code", str | None, Query(None, max_length=64)),
                    Param("key", str | None, Query(None, max_length=255)),
                    Param("cursor", int | None, Query(None, ge=1)),
                ),
                refusals=(*_OPERATOR, INVALID_FILTER),
            ),
            Route(
                "POST",
                "/dlq/jobs",
                "start_dead_letter_job",
                self.start_job,
                "Start a replay or purge job (it runs in the service, throttled, resumable)",
                params=(Param("body", JobRequest),),
                status_code=202,
                refusals=(*_OPERATOR, INVALID_FILTER, COUNT_CHANGED),
            ),
            Route(
                "GET",
                "/dlq/jobs",
                "list_dead_letter_jobs",
                self.list_jobs,
                "The latest replay and purge jobs with their progress",
                params=(Param("limit", int, Query(20, ge=1, le=200)),),
                refusals=_OPERATOR,
            ),
            Route(
                "GET",
                "/dlq/jobs/{job_id}",
                "show_dead_letter_job",
                self.show_job,
                "A job's progress: done, failed, remaining, rate and ETA",
                params=(Param("job_id", int, Path(ge=1, le=2**31 - 1)),),
                refusals=(*_OPERATOR, UNKNOWN_JOB),
            ),
            Route(
                "POST",
                "/dlq/jobs/{job_id}/cancel",
                "cancel_dead_letter_job",
                self.cancel_job,
                "Stop a job (the letters it has not reached stay parked)",
                params=(Param("job_id", int, Path(ge=1, le=2**31 - 1)),),
                refusals=(*_OPERATOR, UNKNOWN_JOB),
            ),
            Route(
                "GET",
                "/dlq/{ident}",
                "show_dead_letter",
                self.show,
                "One dead letter with its headers and body",
                params=(Param("ident", str, Path(max_length=128)),),
                refusals=(*_OPERATOR, UNKNOWN_DEAD_LETTER),
            ),
            Route(
                "POST",
                "/dlq/{ident}/edit",
                "edit_dead_letter",
                self.edit,
                "Correct a dead letter's payload and replay it (scope dlq:edit; checked against its JSON Schema)",
                params=(Param("ident", str, Path(max_length=128)), Param("body", EditRequest)),
                refusals=(*_OPERATOR, UNKNOWN_DEAD_LETTER, INVALID_EDIT),
            ),
            Route(
                "POST",
                "/dlq/replay",
                "replay_dead_letters",
                self.replay,
                "Replay dead letters to their original routing key",
                params=(Param("body", ReplayRequest),),
                refusals=(*_OPERATOR, INVALID_FILTER),
            ),
            Route(
                "POST",
                "/dlq/purge",
                "purge_dead_letters",
                self.purge,
                "Delete dead letters for good (needs the count it expects: a confirmation)",
                params=(Param("body", PurgeRequest),),
                refusals=(*_OPERATOR, INVALID_FILTER, COUNT_CHANGED),
            ),
        ]

    async def list_letters(
        self,
        request: Request,
        principal: Principal,
        queue: str | None,
        reason: str | None,
        since: str | None,
        limit: int | None,
        system: str | None = None,
        type: str | None = None,
        code: str | None = None,
        key: str | None = None,
        cursor: int | None = None,
    ) -> dict[str, Any]:
        """Filter by queue (`dms` or `dms_dead_letter_queue`), system, message type, reason text or code, business
        key and age (`since=15m`); read from the index, a page at a time (`cursor`: the `next_cursor` of the page
        before), newest first."""
        ops = self._ops(principal)
        filters = index_filter(
            ops, queue=queue, reason=reason, since=since, system=system, message_type=type, code=code, key=key
        )
        letters, next_cursor = await ops.page(filters, after=cursor, limit=limit or 100)
        return {
            "count": len(letters),
            "total": await ops.count(filters),
            "next_cursor": next_cursor,
            "messages": [d.summary() for d in letters],
        }

    async def show(self, request: Request, principal: Principal, ident: str) -> dict[str, Any]:
        letter = await self._ops(principal).open(ident)
        if letter is None:
            raise ApiError(404, "unknown_dead_letter", f"no dead letter with id {ident!r}")
        return letter.detail()

    async def replay(self, request: Request, principal: Principal, body: ReplayRequest) -> dict[str, Any]:
        """Each message leaves its DLQ only once its republish is confirmed."""
        if not body.ids and not body.all:
            raise ApiError(422, "validation_error", "name the ids to replay, or set all=true (with filters)")
        try:
            letters = await self._for(principal).replay(
                _filters(body.queue, body.reason, body.since, body.ids), rate=body.rate, dry_run=body.dry_run
            )
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        if not body.dry_run:
            if self._store is not None:  # the index follows what left the queues
                await self._store.dead_letters.settle_letters([(d.queue, d.id) for d in letters], "replayed")
            await self._audit(
                principal,
                "dlq.replay",
                body.queue,
                len(letters),
                {"ids": [d.id for d in letters][:1000], "reason": body.reason, "since": body.since},
            )
        return {
            "replayed": 0 if body.dry_run else len(letters),
            "dry_run": body.dry_run,
            "messages": [d.summary() for d in letters],
        }

    async def purge(self, request: Request, principal: Principal, body: PurgeRequest) -> dict[str, Any]:
        """Deletes exactly what the filters match, and only if that is as many as `expect` says: the caller saw the
        count it confirms (409 otherwise, with the count now)."""
        dead_letters = self._for(principal)
        filters = _filters(body.queue, body.reason, body.since, body.ids)
        try:
            matching = await dead_letters.list(filters)
            if len(matching) != body.expect:
                raise ApiError(
                    409,
                    "count_changed",
                    f"{len(matching)} dead letters match now, not {body.expect}; look again and confirm that count",
                )
            purged = await dead_letters.purge(filters)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        if self._store is not None:  # the index follows what left the queues
            await self._store.dead_letters.settle_letters([(d.queue, d.id) for d in purged], "purged")
        await self._audit(
            principal,
            "dlq.purge",
            body.queue,
            len(purged),
            {"ids": [d.id for d in purged][:1000], "reason": body.reason, "since": body.since},
        )
        return {"purged": len(purged), "messages": [d.summary() for d in purged]}

    async def _audit(
        self, principal: Principal, action: str, subject: str | None, count: int, detail: dict[str, Any]
    ) -> None:
        if self._store is not None:
            await self._store.audit.record(
                action, client_id=principal.client_id, subject=subject, count=count, detail=detail
            )

    async def edit(self, request: Request, principal: Principal, ident: str, body: EditRequest) -> dict[str, Any]:
        """The audit log keeps the payload before and after (personal data masked); the request's timeline shows
        the edit."""
        ops = self._ops(principal)
        require_scope(principal, DLQ_EDIT)
        if self._catalog is None:
            raise ApiError(503, "unavailable", "dead-letter access is not configured on this service")
        try:
            detail = await edit_and_replay(
                ops,
                self._catalog,
                ident,
                body.payload,
                by=principal.client_id or "anonymous",
                mask=lambda value: mask(value, reveal=False),
            )
        except EditRefused as exc:
            code = {404: "unknown_dead_letter", 422: "invalid_edit"}.get(exc.status, "unavailable")
            raise ApiError(exc.status, code, exc.message) from None
        return {"edited": True, **detail}

    async def start_job(self, request: Request, principal: Principal, body: JobRequest) -> dict[str, Any]:
        """The job is in the audit log with who started it, its filter and how many letters it chose; its progress
        is at `GET /dlq/jobs/{id}`."""
        ops = self._ops(principal)
        filters = index_filter(
            ops,
            queue=body.queue,
            reason=body.reason,
            since=body.since,
            until=body.until,
            system=body.system,
            message_type=body.type,
            code=body.code,
            key=body.key,
            ids=body.ids,
        )
        if body.kind == "purge" and body.expect is None:
            raise ApiError(422, "validation_error", "a purge job needs `expect`: the count you saw and confirm")
        try:
            job = await start_job(
                ops.store, body.kind, filters, by=principal.client_id or "anonymous", rate=body.rate, expect=body.expect
            )
        except CountChanged as exc:
            raise ApiError(
                409, "count_changed", f"{exc.now} dead letters match now, not {body.expect}; look again and confirm"
            ) from None
        return job.progress()

    async def list_jobs(self, request: Request, principal: Principal, limit: int = 20) -> dict[str, Any]:
        ops = self._ops(principal)
        return {"jobs": [job.progress() for job in await ops.store.dlq_jobs.recent(limit)]}

    async def show_job(self, request: Request, principal: Principal, job_id: int) -> dict[str, Any]:
        job = await self._ops(principal).store.dlq_jobs.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no dead-letter job {job_id}")
        return job.progress()

    async def cancel_job(self, request: Request, principal: Principal, job_id: int) -> dict[str, Any]:
        """A running job stops within a batch; the audit log says who cancelled it."""
        ops = self._ops(principal)
        job = await ops.store.dlq_jobs.cancel(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no dead-letter job {job_id}")
        await self._audit(principal, "dlq.job.cancel", f"job {job_id}", job.remaining, {"job": job_id})
        return job.progress()

    def _ops(self, principal: Principal) -> DeadLetterOps:
        require_operator(principal)
        if self._dead_letters is None or self._store is None:
            raise ApiError(503, "unavailable", "dead-letter access is not configured on this service")
        return DeadLetterOps(self._dead_letters, self._store)

    def _for(self, principal: Principal) -> DeadLetters:
        require_operator(principal)
        if self._dead_letters is None:
            raise ApiError(503, "unavailable", "dead-letter access is not configured on this service")
        return self._dead_letters


def index_filter(
    ops: DeadLetterOps,
    *,
    queue: str | None = None,
    reason: str | None = None,
    since: str | None = None,
    until: str | None = None,
    system: str | None = None,
    message_type: str | None = None,
    code: str | None = None,
    key: str | None = None,
    ids: list[str] | None = None,
) -> IndexFilter:
    """The index's filter of a request's parameters (`since`: a duration or an ISO time); 422 naming a bad one."""
    try:
        return ops.filter(
            queue=queue,
            reason=reason,
            since=since,
            until=until,
            system=system,
            message_type=message_type,
            code=code,
            key=key,
            ids=ids,
        )
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None


def _filters(queue: str | None, reason: str | None, since: str | None, ids: list[str] | None = None) -> Filters:
    try:
        within = timedelta(seconds=parse_duration(since, name="since")) if since else None
        return Filters(queue=queue, reason=reason, since=within, ids=tuple(ids or ()))
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
