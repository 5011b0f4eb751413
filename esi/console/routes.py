"""The operator console's routes: pages under /console, served by the 1C API from the same store and broker.

Read pages (overview, requests, a request, dead letters, systems) need the `read` or the `operator` scope; the
actions (replay, purge, pause, resume) need `operator`, are POSTs carrying a CSRF token (esi.console.csrf), and go
to the audit log through the same code as the JSON API (esi.api.routes.dead_letters, esi.api.routes.operations).

What a client sees: an operator every request, with personal data masked unless it sent the request itself; any
other reader only the requests it sent (as `GET /requests/{id}` allows it). With authentication off, everything.

Nothing here is on the API's hot path: these routes are plain FastAPI routes the fast path (esi.api.hot) never
answers, and they add no middleware.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, ParamSpec
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData

from esi.api.auth import Authenticator
from esi.api.deps import ApiDeps
from esi.api.routes.dead_letters import DeadLetterRoutes, PurgeRequest, ReplayRequest
from esi.api.routes.operations import OperationsRoutes, PauseRequest
from esi.bus.dead_letters import DeadLetter, Filters
from esi.config import parse_duration
from esi.console.csrf import COOKIE, FIELD, CsrfTokens
from esi.console.masking import mask
from esi.console.views import OUTCOMES, group_code, group_dead_letters, minute_chart, sequence
from esi.errors import ApiError
from esi.security.scopes import Principal, require_operator
from esi.store import RequestRecord, RequestStatus

__all__ = ["CSP", "Console", "console_router"]

log = logging.getLogger(__name__)

#: no inline script, no inline style, nothing from elsewhere; forms post only to esi itself
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGE_SIZE = 50
#: the overview refreshes itself this often (seconds); what it reads is kept as long (one query per replica)
REFRESH_S = 10
OVERVIEW_TTL_S = 5.0
#: how long the overview waits for the broker's queue depths and the readiness checks
SLOW_PART_TIMEOUT_S = 3.0
STATIC_TYPES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
NOTICES = {
    "replayed": "Replayed {n} dead letter(s): each left its dead-letter queue once its republish was confirmed.",
    "purged": "Purged {n} dead letter(s) for good.",
    "paused": "Paused {system}.",
    "resumed": "Resumed {system}.",
}

P = ParamSpec("P")


def _html_errors(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """An `ApiError` raised by a page or an action is answered as a page with the same status."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            console: Console = args[0]  # type: ignore[assignment]
            request: Request = kwargs["request"]  # type: ignore[assignment]
            principal: Principal | None = kwargs.get("principal")  # type: ignore[assignment]
            return console.page(request, principal, "error.html", status=exc.status, error=exc, title="Error")

    return wrapper


def _utc(value: str | None) -> str | None:
    """A `datetime-local` field (no zone: read as UTC) as the store keeps times; None when empty."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "validation_error", f"not a date and time: {value!r}") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


def _when(value: datetime | str | None) -> str:
    """A time as people read it on the page: `2026-11-25 10:00:00.123 UTC`."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _request_of(letter: DeadLetter) -> str | None:
    """The request a dead letter belongs to (its envelope's `request_id`), if its body says."""
    try:
        body = orjson.loads(letter.body)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None


class _Cached:
    """A value computed at most every `ttl` seconds, whoever asks."""

    def __init__(self, compute: Callable[[], Awaitable[dict[str, Any]]], ttl: float) -> None:
        self._compute = compute
        self._ttl = ttl
        self._value: dict[str, Any] | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._at >= self._ttl:
                self._value = await self._compute()
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        self._value = None


class Console:
    """The console over the API's dependencies; `router()` gives its routes."""

    def __init__(self, deps: ApiDeps, auth: Authenticator) -> None:
        self._deps = deps
        self._store = deps.store
        self._registry = deps.registry
        self._auth = auth
        self._csrf = CsrfTokens(deps.console_secret)
        self._dead_letter_routes = DeadLetterRoutes(deps.dead_letters, deps.store)
        self._operations = OperationsRoutes(deps.store, deps.registry)
        self._overview = _Cached(self._overview_data, OVERVIEW_TTL_S)
        self._env = Environment(loader=PackageLoader("esi.console", "templates"),
                                autoescape=select_autoescape(default=True, default_for_string=True),
                                undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._env.filters["when"] = _when
        self._env.filters["json"] = _json
        static = resources.files("esi.console") / "static"
        self._static = {name: (static / name).read_bytes() for name in STATIC_TYPES}

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/console", include_in_schema=False)
        principal = Depends(self._auth.dependency)

        async def overview(request: Request, principal: Principal = principal) -> Response:
            return await self.overview(request=request, principal=principal)

        async def requests(request: Request, principal: Principal = principal) -> Response:
            return await self.requests(request=request, principal=principal)

        async def request_page(request_id: str, request: Request, principal: Principal = principal) -> Response:
            return await self.request_page(request_id, request=request, principal=principal)

        async def dead_letters(request: Request, principal: Principal = principal) -> Response:
            return await self.dead_letters(request=request, principal=principal)

        async def dead_letter(ident: str, request: Request, principal: Principal = principal) -> Response:
            return await self.dead_letter(ident, request=request, principal=principal)

        async def replay(request: Request, principal: Principal = principal) -> Response:
            return await self.replay(request=request, principal=principal)

        async def confirm_purge(request: Request, principal: Principal = principal) -> Response:
            return await self.confirm_purge(request=request, principal=principal)

        async def purge(request: Request, principal: Principal = principal) -> Response:
            return await self.purge(request=request, principal=principal)

        async def systems(request: Request, principal: Principal = principal) -> Response:
            return await self.systems(request=request, principal=principal)

        async def pause(code: str, request: Request, principal: Principal = principal) -> Response:
            return await self.pause(code, request=request, principal=principal)

        async def resume(code: str, request: Request, principal: Principal = principal) -> Response:
            return await self.resume(code, request=request, principal=principal)

        router.add_api_route("", overview, methods=["GET"], name="console_overview")
        router.add_api_route("/requests", requests, methods=["GET"], name="console_requests")
        router.add_api_route("/requests/{request_id}", request_page, methods=["GET"], name="console_request")
        router.add_api_route("/dlq", dead_letters, methods=["GET"], name="console_dead_letters")
        router.add_api_route("/dlq/messages/{ident}", dead_letter, methods=["GET"], name="console_dead_letter")
        router.add_api_route("/dlq/replay", replay, methods=["POST"], name="console_replay")
        router.add_api_route("/dlq/purge/confirm", confirm_purge, methods=["POST"], name="console_confirm_purge")
        router.add_api_route("/dlq/purge", purge, methods=["POST"], name="console_purge")
        router.add_api_route("/systems", systems, methods=["GET"], name="console_systems")
        router.add_api_route("/systems/{code}/pause", pause, methods=["POST"], name="console_pause")
        router.add_api_route("/systems/{code}/resume", resume, methods=["POST"], name="console_resume")
        router.add_api_route("/static/{name}", self.static, methods=["GET"], name="console_static")
        return router

    # --- rendering, tokens, permissions -----------------------------------------------------------------------------

    def page(self, request: Request, principal: Principal | None, template: str, *, status: int = 200,
             **context: Any) -> HTMLResponse:
        """A page with the security headers; the CSRF cookie is (re)set when the client has no valid one."""
        cookie = request.cookies.get(COOKIE)
        token = None
        if principal is not None:
            valid = self._csrf.valid_for(cookie, principal.client_id)
            token = cookie if valid and cookie else self._csrf.issue(principal.client_id)
        query = request.query_params
        notice = None
        if query.get("done") in NOTICES:
            notice = NOTICES[query["done"]].format(n=int(query.get("n", "0")) if query.get("n", "").isdigit() else 0,
                                                   system=query.get("system", "")[:32])
        html = self._env.get_template(template).render(
            principal=principal, operator=principal is not None and principal.is_operator, csrf_field=FIELD,
            csrf=token or "", auth_on=self._auth.enabled, notice=notice, path=request.url.path, refresh=None,
            **context)
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if token is not None and token != cookie:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/console",
                                secure=request.url.scheme == "https")
        return response

    async def _action_form(self, request: Request, principal: Principal) -> FormData:
        """The form of an action: 403 without the operator scope or without this client's CSRF token."""
        require_operator(principal)
        form = await request.form(max_files=0, max_fields=10_100)
        token = form.get(FIELD)
        if not self._csrf.check(token if isinstance(token, str) else None, request.cookies.get(COOKIE),
                                principal.client_id):
            raise ApiError(403, "csrf_failed", "the form is stale or did not come from the console: reload the page "
                                               "and try again")
        return form

    @staticmethod
    def _require_viewer(principal: Principal) -> None:
        if not (principal.can_read or principal.is_operator):
            raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not use the console")

    def _sees_all(self, principal: Principal) -> bool:
        return not self._auth.enabled or principal.is_operator

    def _may_read(self, principal: Principal, record: RequestRecord) -> bool:
        """Whether the client may read the request's personal data: as `GET /requests/{id}` would let it."""
        return not self._auth.enabled or (principal.can_read and record.client_id == principal.client_id)

    def _dead_letters(self) -> Any:
        if self._deps.dead_letters is None:
            raise ApiError(503, "unavailable", "dead-letter access is not configured on this service")
        return self._deps.dead_letters

    @staticmethod
    def _redirect(path: str, **query: str | int) -> RedirectResponse:
        return RedirectResponse(f"{path}?{urlencode(query)}" if query else path, status_code=303,
                                headers=SECURITY_HEADERS)

    async def static(self, name: str) -> Response:
        if name not in self._static:
            raise ApiError(404, "not_found", "no such file")
        return Response(self._static[name], media_type=STATIC_TYPES[name],
                        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"})

    # --- overview ---------------------------------------------------------------------------------------------------

    async def _overview_data(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        since = (now - timedelta(minutes=60)).isoformat(timespec="microseconds")
        counts = await self._store.requests_per_minute(since)
        pauses = await self._store.system_pauses()
        breakers = await self._store.breaker_states()
        backlog = await self._store.outbox_backlog()
        depths: dict[str, dict[str, int]] | None = None
        depth_error = None
        if self._deps.dead_letters is not None:
            try:
                async with asyncio.timeout(SLOW_PART_TIMEOUT_S):
                    depths = await self._deps.dead_letters.depths()
            except Exception as exc:  # the broker is away: the page says so, and shows the rest
                depth_error = f"{type(exc).__name__}: {exc}"[:200] or "unavailable"
        ready: bool | None = None
        checks: dict[str, Any] = {}
        if self._deps.readiness is not None:
            try:
                async with asyncio.timeout(SLOW_PART_TIMEOUT_S):
                    ready, checks = await self._deps.readiness()
            except Exception as exc:
                ready, checks = False, {"readiness": {"status": "down", "error": f"{type(exc).__name__}: {exc}"}}
        systems = []
        for system in self._registry.systems:
            mine = [(minute, status, n) for target, minute, status, n in counts
                    if system.origin or target == system.code]
            systems.append({
                "code": system.code, "title": system.title, "service": system.service, "origin": system.origin,
                "chart": minute_chart(mine, now=now),
                "depth": (depths or {}).get(system.code),
                "paused": pauses.get(system.code),
                "breakers": [b for b in breakers if b.system == system.code],
                "checks": {name: check for name, check in checks.items()
                           if name.endswith(f"({system.service})") or name.endswith(f"({system.code})")
                           or name == system.health},
            })
        return {"systems": systems, "backlog": backlog, "depth_error": depth_error, "ready": ready,
                "checks": checks, "at": now}

    @_html_errors
    async def overview(self, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        data = await self._overview.get()
        return self.page(request, principal, "overview.html", title="Overview", outcomes=OUTCOMES,
                         refresh_s=REFRESH_S, **data)

    # --- requests ---------------------------------------------------------------------------------------------------

    @_html_errors
    async def requests(self, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        query = request.query_params
        text = (query.get("q") or "").strip()[:255]
        status = query.get("status") or None
        if status is not None and status not in {s.value for s in RequestStatus}:
            raise ApiError(422, "validation_error", f"unknown status {status!r}")
        message_type = (query.get("type") or "").strip()[:64] or None
        since, until = _utc(query.get("from")), _utc(query.get("to"))
        page = int(query["page"]) if query.get("page", "").isdigit() else 1
        page = max(1, min(page, 10_000))
        records = await self._store.search_requests(
            text=text or None, status=status, message_type=message_type, since=since, until=until,
            client_id=None if self._sees_all(principal) else principal.client_id,
            limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        form = {"q": text, "status": status or "", "type": message_type or "", "from": query.get("from") or "",
                "to": query.get("to") or ""}
        link = {k: v for k, v in form.items() if v}
        return self.page(
            request, principal, "requests.html", title="Requests", records=records[:PAGE_SIZE], form=form,
            statuses=[s.value for s in RequestStatus], message_types=sorted(s.message_type for s in
                                                                            self._registry.catalog.specs),
            page=page, previous=urlencode({**link, "page": page - 1}) if page > 1 else None,
            next=urlencode({**link, "page": page + 1}) if len(records) > PAGE_SIZE else None,
            searched=bool(link))

    @_html_errors
    async def request_page(self, request_id: str, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        record = await self._store.get(request_id[:128])
        if record is None or not (self._sees_all(principal) or record.client_id == principal.client_id):
            raise ApiError(404, "unknown_request", f"no request with request_id {request_id!r}")
        reveal = self._may_read(principal, record)
        envelope: dict[str, Any] | None = None
        body = await self._store.request_message(record.request_id)
        if body is not None:
            try:
                parsed = orjson.loads(body)
                envelope = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                envelope = None
        events = await self._store.timeline(record.request_id)
        settled = record.status in (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.DEAD_LETTERED)
        return self.page(
            request, principal, "request.html", title=f"Request {record.request_id}", record=record,
            reveal=reveal, payload=mask(envelope.get("payload"), reveal=reveal) if envelope else None,
            envelope=envelope, response=mask(record.response, reveal=reveal) if record.response else None,
            diagram=sequence(self._registry, events), settled=settled)

    # --- dead letters -----------------------------------------------------------------------------------------------

    @_html_errors
    async def dead_letters(self, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        letters = await self._dead_letters().list()
        groups = group_dead_letters(letters)
        return self.page(request, principal, "dead_letters.html", title="Dead letters", groups=groups,
                         total=len(letters), request_of=_request_of)

    @_html_errors
    async def dead_letter(self, ident: str, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        letter = await self._dead_letters().show(ident[:128])
        if letter is None:
            raise ApiError(404, "unknown_dead_letter", f"no dead letter with id {ident!r}")
        detail = letter.detail()
        body: Any = detail["body"]
        try:
            body = _json(mask(orjson.loads(letter.body), reveal=principal.is_operator or not self._auth.enabled))
        except orjson.JSONDecodeError:
            if self._auth.enabled and not principal.is_operator:
                body = "(not JSON: shown to operators only)"
        return self.page(request, principal, "dead_letter.html", title=f"Dead letter {letter.id}", letter=letter,
                         headers=detail["headers"], properties=detail["properties"], body=body,
                         code=group_code(letter), request_id=_request_of(letter))

    async def _chosen(self, form: FormData) -> tuple[str, list[str], str]:
        """The dead letters an action names: `(queue, ids, what)`: the selected ids, or a whole group's (queue and
        code) as it stands now."""
        queue = str(form.get("queue") or "")
        if not queue:
            raise ApiError(422, "validation_error", "which queue?")
        if form.get("scope") == "group":
            code = str(form.get("code") or "")
            try:
                letters = await self._dead_letters().list(Filters(queue=queue))
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
            return queue, [d.id for d in letters if group_code(d) == code], f"every dead letter of {queue} with {code}"
        ids = [str(i) for i in form.getlist("ids") if isinstance(i, str) and i][:10_000]
        if not ids:
            raise ApiError(422, "validation_error", "select the dead letters first")
        return queue, ids, f"the selected dead letters of {queue}"

    @_html_errors
    async def replay(self, *, request: Request, principal: Principal) -> Response:
        form = await self._action_form(request, principal)
        queue, ids, _ = await self._chosen(form)
        replayed = 0
        if ids:
            result = await self._dead_letter_routes.replay(request, principal, ReplayRequest(ids=ids, queue=queue))
            replayed = int(result["replayed"])
        self._overview.clear()
        return self._redirect("/console/dlq", done="replayed", n=replayed)

    @_html_errors
    async def confirm_purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self._action_form(request, principal)
        queue, ids, what = await self._chosen(form)
        try:
            letters = await self._dead_letters().list(Filters(queue=queue, ids=tuple(ids)))
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        return self.page(request, principal, "confirm_purge.html", title="Purge dead letters?", queue=queue,
                         letters=letters, what=what)

    @_html_errors
    async def purge(self, *, request: Request, principal: Principal) -> Response:
        form = await self._action_form(request, principal)
        queue = str(form.get("queue") or "")
        ids = [str(i) for i in form.getlist("ids") if isinstance(i, str) and i][:10_000]
        expect = str(form.get("expect") or "")
        if not queue or not ids or not expect.isdigit():
            raise ApiError(422, "validation_error", "a purge names its queue, its dead letters and how many")
        result = await self._dead_letter_routes.purge(request, principal,
                                                      PurgeRequest(ids=ids, queue=queue, expect=int(expect)))
        self._overview.clear()
        return self._redirect("/console/dlq", done="purged", n=int(result["purged"]))

    # --- systems ----------------------------------------------------------------------------------------------------

    @_html_errors
    async def systems(self, *, request: Request, principal: Principal) -> Response:
        self._require_viewer(principal)
        pauses = await self._store.system_pauses()
        breakers = await self._store.breaker_states()
        systems = [{"code": s.code, "title": s.title, "service": s.service, "paused": pauses.get(s.code),
                    "breakers": [b for b in breakers if b.system == s.code]}
                   for s in self._registry.systems if not s.origin]
        audit = await self._store.audit_log(limit=20) if principal.is_operator else []
        return self.page(request, principal, "systems.html", title="Systems", systems=systems, audit=audit)

    @_html_errors
    async def pause(self, code: str, *, request: Request, principal: Principal) -> Response:
        form = await self._action_form(request, principal)
        duration = str(form.get("for") or "").strip() or None
        reason = str(form.get("reason") or "").strip()[:500] or None
        if duration is not None:
            try:
                parse_duration(duration, name="for")
            except ValueError as exc:
                raise ApiError(422, "validation_error", str(exc)) from None
        result = await self._operations.pause(request, principal, code, PauseRequest(**{"for": duration,
                                                                                       "reason": reason}))
        self._overview.clear()
        return self._redirect("/console/systems", done="paused", system=str(result["system"]))

    @_html_errors
    async def resume(self, code: str, *, request: Request, principal: Principal) -> Response:
        await self._action_form(request, principal)
        result = await self._operations.resume(request, principal, code)
        self._overview.clear()
        return self._redirect("/console/systems", done="resumed", system=str(result["system"]))


def console_router(deps: ApiDeps, auth: Authenticator) -> APIRouter:
    """The console's routes, for `app.include_router` in the API (esi.api.app)."""
    return Console(deps, auth).router()
