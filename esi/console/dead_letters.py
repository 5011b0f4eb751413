"""The console's dead-letter pages and actions: the dead letters grouped by queue and code (/console/dlq), one dead
letter (/console/dlq/messages/{id}), and the replay and purge (with its confirmation page) of the selected ones or
of a whole group, through the same code as the JSON API (esi.api.routes.dead_letters), audit log included.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from esi.api.routes.dead_letters import DeadLetterRoutes, PurgeRequest, ReplayRequest
from esi.bus.dead_letters import DeadLetter, Filters
from esi.console.core import Console, html_errors, pretty_json
from esi.console.i18n import N_, Text
from esi.console.masking import mask
from esi.console.overview import Overview
from esi.console.views import group_code, group_dead_letters
from esi.errors import ApiError
from esi.security.scopes import Principal

__all__ = ["DeadLetterPages"]


def _request_of(letter: DeadLetter) -> str | None:
    """The request a dead letter belongs to (its envelope's `request_id`), if its body says."""
    try:
        body = orjson.loads(letter.body)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None


class DeadLetterPages:
    """The dead-letter pages and actions over a `Console`; an action makes the `Overview` read afresh."""

    def __init__(self, console: Console, overview: Overview) -> None:
        self.console = console
        self._deps = console.deps
        self._auth = console.auth
        self._overview = overview
        self._dead_letter_routes = DeadLetterRoutes(console.deps.dead_letters, console.deps.store)

    def _dead_letters(self) -> Any:
        if self._deps.dead_letters is None:
            raise ApiError(503, "unavailable", N_("dead-letter access is not configured on this service"))
        return self._deps.dead_letters

    @html_errors
    async def dead_letters(self, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        letters = await self._dead_letters().list()
        groups = group_dead_letters(letters)
        return self.console.page(
            request,
            principal,
            "dead_letters.html",
            title=N_("Dead letters"),
            groups=groups,
            total=len(letters),
            request_of=_request_of,
        )

    @html_errors
    async def dead_letter(self, ident: str, *, request: Request, principal: Principal) -> Response:
        self.console.require_viewer(principal)
        letter = await self._dead_letters().show(ident[:128])
        if letter is None:
            raise ApiError(404, "unknown_dead_letter", N_("no dead letter with id %(id)s", id=repr(ident)))
        detail = letter.detail()
        body: Any = detail["body"]
        try:
            body = pretty_json(mask(orjson.loads(letter.body), reveal=principal.is_operator or not self._auth.enabled))
        except orjson.JSONDecodeError:
            if self._auth.enabled and not principal.is_operator:
                body = N_("(not JSON: shown to operators only)")
        return self.console.page(
            request,
            principal,
            "dead_letter.html",
            title=N_("Dead letter %(id)s", id=letter.id),
            letter=letter,
            headers=detail["headers"],
            properties=detail["properties"],
            body=body,
            code=group_code(letter),
            request_id=_request_of(letter),
        )

    async def _chosen(self, form: FormData) -> tuple[str, list[str], Text]:
        """The dead letters an action names: `(queue, ids, what)`: the selected ids, or a whole group's (queue and
        code) as it stands now."""
        queue = str(form.get("queue") or "")
        if not queue:
            raise ApiError(422, "validation_error", N_("which queue?"))
        if form.get("scope") == "group":
            code = str(form.get("code") or "")
            try:
                letters = await self._dead_letters().list(Filters(queue=queue))
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
            what = N_("every dead letter of %(queue)s with %(code)s", queue=queue, code=code)
            return queue, [d.id for d in letters if group_code(d) == code], what
        ids = [str(i) for i in form.getlist("ids") if isinstance(i, str) and i][:10_000]
        if not ids:
            raise ApiError(422, "validation_error", N_("select the dead letters first"))
        return queue, ids, N_("the selected dead letters of %(queue)s", queue=queue)

    @html_errors
    async def replay(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        queue, ids, _ = await self._chosen(form)
        replayed = 0
        if ids:
            result = await self._dead_letter_routes.replay(request, principal, ReplayRequest(ids=ids, queue=queue))
            replayed = int(result["replayed"])
        self._overview.clear()
        return self.console.redirect("/console/dlq", done="replayed", n=replayed)

    @html_errors
    async def confirm_purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        queue, ids, what = await self._chosen(form)
        try:
            letters = await self._dead_letters().list(Filters(queue=queue, ids=tuple(ids)))
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        return self.console.page(
            request,
            principal,
            "confirm_purge.html",
            title=N_("Purge dead letters?"),
            queue=queue,
            letters=letters,
            what=what,
        )

    @html_errors
    async def purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self.console.action_form(request, principal)
        queue = str(form.get("queue") or "")
        ids = [str(i) for i in form.getlist("ids") if isinstance(i, str) and i][:10_000]
        expect = str(form.get("expect") or "")
        if not queue or not ids or not expect.isdigit():
            raise ApiError(422, "validation_error", N_("a purge names its queue, its dead letters and how many"))
        result = await self._dead_letter_routes.purge(
            request, principal, PurgeRequest(ids=ids, queue=queue, expect=int(expect))
        )
        self._overview.clear()
        return self.console.redirect("/console/dlq", done="purged", n=int(result["purged"]))
