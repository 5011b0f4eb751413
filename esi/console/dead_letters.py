"""The console's dead-letter pages and actions, over the dead-letter index (esi.store.dead_letters): the dead letters
grouped by queue and code with a keyset-paginated list of those the URL's filters match (/console/dlq: system, type,
reason, code, business key, time; a link to a search can be shared), their counters and the jobs' progress updated
in place (htmx fragments: /console/dlq/live, /console/dlq/jobs), one dead letter (/console/dlq/messages/{id}, its
body read from its queue) with its edit form (scope dlq:edit), and the replay and purge (with its confirmation page)
of the selected ones, a group or the whole filter — as jobs run by the API service, through the same code as the JSON
API (esi.dlq), audit log included.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from esi.console.core import Console, html_errors, pretty_json
from esi.console.i18n import N_
from esi.console.masking import mask
from esi.console.overview import Overview
from esi.dlq.edit import EditRefused, edit_and_replay
from esi.dlq.entries import envelope_fields
from esi.dlq.ops import CountChanged, DeadLetterOps, start_job
from esi.errors import ApiError
from esi.security.scopes import DLQ_EDIT, Principal
from esi.store.dead_letters import IndexFilter

__all__ = ["DeadLetterPages"]

#: the filters a page's URL carries (and the forms' hidden fields repeat)
FILTERS = ("system", "type", "reason", "code", "key", "since", "until")
PAGE_SIZE = 50
GROUP_ROWS = 20


class DeadLetterPages:
    """The dead-letter pages and actions over a `Console`; an action makes the `Overview` read afresh."""

    def __init__(self, console: Console, overview: Overview) -> None:
        self.console = console
        self._deps = console.deps
        self._auth = console.auth
        self._overview = overview
        self._ops = DeadLetterOps(console.deps.dead_letters, console.deps.store)

    def _filter(self, given: dict[str, str], **more: Any) -> IndexFilter:
        try:
            return self._ops.filter(
                system=given.get("system"),
                message_type=given.get("type"),
                reason=given.get("reason"),
                code=given.get("code"),
                key=given.get("key"),
                since=given.get("since"),
                until=given.get("until"),
                **more,
            )
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None

    @staticmethod
    def _given(request: Request) -> dict[str, str]:
        return {name: request.query_params[name][:255] for name in FILTERS if request.query_params.get(name)}

    async def _counts(self, filters: IndexFilter) -> dict[str, Any]:
        groups = await self._ops.store.dead_letters.groups(filters)
        return {"groups": groups, "total": sum(g["count"] for g in groups)}

    @html_errors
    async def dead_letters(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        given = self._given(request)
        filters = self._filter(given)
        counts = await self._counts(filters)
        for group in counts["groups"][:20]:
            rows, _ = await self._ops.page(
                IndexFilter(**{**filters.__dict__, "queue": group["queue"], "code": group["code"]}), limit=GROUP_ROWS
            )
            group["letters"] = rows
        cursor = request.query_params.get("cursor", "")
        letters, next_cursor = await self._ops.page(
            filters, after=int(cursor) if cursor.isdigit() else None, limit=PAGE_SIZE
        )
        return self.console.page(
            request,
            principal,
            "dead_letters.html",
            title=N_("Dead letters"),
            given=given,
            query=urlencode(given),
            next_query=urlencode({**given, "cursor": next_cursor}) if next_cursor else None,
            letters=letters,
            jobs=await self._ops.store.dlq_jobs.recent(5),
            **counts,
        )

    @html_errors
    async def live(self, *, request: Request, principal: Principal) -> Response:
        """The counters of the filtered page, alone (htmx swaps them in place)."""
        self.console.require_viewer(principal)
        given = self._given(request)
        counts = await self._counts(self._filter(given))
        return self.console.fragment(request, principal, "_dlq_live.html", query=urlencode(given), **counts)

    @html_errors
    async def jobs(self, *, request: Request, principal: Principal) -> Response:
        """The latest jobs' progress, alone (htmx swaps it in place)."""
        self.console.require_viewer(principal)
        return self.console.fragment(
            request, principal, "_dlq_jobs.html", jobs=await self._ops.store.dlq_jobs.recent(5)
        )

    @html_errors
    async def dead_letter(self, ident: str, *, request: Request, principal: Principal) -> Response:
        return await self._letter_page(ident[:128], request=request, principal=principal)

    async def _letter_page(
        self,
        ident: str,
        *,
        request: Request,
        principal: Principal,
        edit_error: str | None = None,
        draft: str | None = None,
    ) -> Response:
        self.console.require_viewer(principal)
        if self._deps.dead_letters is None:
            raise ApiError(503, "unavailable", N_("dead-letter access is not configured on this service"))
        letter = await self._ops.open(ident)
        if letter is None:
            raise ApiError(404, "unknown_dead_letter", N_("no dead letter with id %(id)s", id=repr(ident)))
        row = await self._ops.indexed(ident)
        detail = letter.detail()
        reveal = principal.is_operator or not self._auth.enabled
        body: Any = detail["body"]
        try:
            body = pretty_json(mask(orjson.loads(letter.body), reveal=reveal))
        except orjson.JSONDecodeError:
            if self._auth.enabled and not principal.is_operator:
                body = N_("(not JSON: shown to operators only)")
        envelope = envelope_fields(letter.body)
        can_edit = DLQ_EDIT in principal.scopes and principal.is_operator and "payload" in envelope
        return self.console.page(
            request,
            principal,
            "dead_letter.html",
            status=422 if edit_error else 200,
            title=N_("Dead letter %(id)s", id=letter.id),
            letter=letter,
            headers=detail["headers"],
            properties=detail["properties"],
            body=body,
            code=row.reason_code if row is not None else (letter.error_class or "broker"),
            request_id=row.request_id if row is not None else envelope.get("request_id"),
            can_edit=can_edit,
            draft=draft if draft is not None else (pretty_json(envelope.get("payload")) if can_edit else ""),
            edit_error=edit_error,
        )

    @html_errors
    async def edit(self, ident: str, *, request: Request, principal: Principal) -> Response:
        """The corrected payload, checked against its schema, replayed; refused: the page again with the schema's
        message and the operator's text."""
        form = await self.console.action_form(request, principal)
        if DLQ_EDIT not in principal.scopes:
            raise ApiError(
                403, "forbidden", N_("client %(client)s lacks the dlq:edit scope", client=principal.client_id)
            )
        draft = str(form.get("payload") or "")
        try:
            payload = orjson.loads(draft)
        except orjson.JSONDecodeError as exc:
            return await self._letter_page(
                ident, request=request, principal=principal, edit_error=f"not JSON: {exc}", draft=draft
            )
        try:
            detail = await edit_and_replay(
                self._ops,
                self.console.registry.catalog,
                ident,
                payload,
                by=principal.client_id,
                mask=lambda value: mask(value, reveal=False),
            )
        except EditRefused as exc:
            if exc.status != 422:
                raise ApiError(exc.status, "unknown_dead_letter", exc.message) from None
            return await self._letter_page(
                ident, request=request, principal=principal, edit_error=exc.message, draft=draft
            )
        self._overview.clear()
        row = await self._ops.indexed(ident)
        if row is not None and row.request_id:
            return self.console.redirect(f"/console/requests/{row.request_id}", done="edited", n=1)
        return self.console.redirect("/console/dlq", done="edited", n=1, id=str(detail["id"]))

    def _chosen(self, form: FormData) -> tuple[IndexFilter, str]:
        """The letters an action names, as the index's filter: the selected ids, a group (queue and code) or the
        whole filter of the page; and what to call them."""
        given = {name: str(form.get(name) or "")[:255] for name in FILTERS if form.get(name)}
        queue = str(form.get("queue") or "")
        scope = form.get("scope")
        if scope == "group":
            code = str(form.get("code") or "")
            filters = self._filter(given, queue=queue or None)
            return IndexFilter(**{**filters.__dict__, "code": code or None}), N_(
                "every dead letter of %(queue)s with %(code)s", queue=queue, code=code
            )
        if scope == "filter":
            return self._filter(given), N_("every dead letter the filter matches")
        ids = [str(i) for i in form.getlist("ids") if isinstance(i, str) and i][:10_000]
        if not ids:
            raise ApiError(422, "validation_error", N_("select the dead letters first"))
        return self._filter({}, queue=queue or None, ids=ids), N_("the selected dead letters")

    @html_errors
    async def replay(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        filters, _ = self._chosen(form)
        job = await start_job(self._ops.store, "replay", filters, by=principal.client_id, rate=_rate(form))
        self._overview.clear()
        return self.console.redirect("/console/dlq", done="replaying", n=job.total, job=job.id)

    @html_errors
    async def confirm_purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        filters, what = self._chosen(form)
        letters, _ = await self._ops.page(filters, limit=200)
        return self.console.page(
            request,
            principal,
            "confirm_purge.html",
            title=N_("Purge dead letters?"),
            what=what,
            letters=letters,
            count=await self._ops.count(filters),
            chosen=filters.as_dict(),
        )

    @html_errors
    async def purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        expect = str(form.get("expect") or "")
        chosen = str(form.get("chosen") or "")
        if not expect.isdigit() or not chosen:
            raise ApiError(422, "validation_error", N_("a purge names its dead letters and how many"))
        try:
            filters = IndexFilter.from_dict(orjson.loads(chosen))
            job = await start_job(
                self._ops.store, "purge", filters, by=principal.client_id, rate=_rate(form), expect=int(expect)
            )
        except CountChanged as exc:
            raise ApiError(
                409,
                "count_changed",
                N_("%(now)s dead letters match now, not %(expect)s; look again", now=exc.now, expect=expect),
            ) from None
        except (orjson.JSONDecodeError, TypeError, ValueError):
            raise ApiError(422, "validation_error", N_("a purge names its dead letters and how many")) from None
        self._overview.clear()
        return self.console.redirect("/console/dlq", done="purging", n=job.total, job=job.id)

    @html_errors
    async def cancel(self, job_id: int, *, request: Request, principal: Principal) -> Response:
        await self.console.action_form(request, principal)
        job = await self._ops.store.dlq_jobs.cancel(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", N_("no dead-letter job %(id)s", id=job_id))
        await self._ops.store.audit.record(
            "dlq.job.cancel", client_id=principal.client_id, subject=f"job {job_id}", count=job.remaining
        )
        return self.console.redirect("/console/dlq", done="cancelled", n=job_id)


def _rate(form: FormData) -> int | None:
    rate = str(form.get("rate") or "")
    return min(int(rate), 10_000) if rate.isdigit() and int(rate) > 0 else None
