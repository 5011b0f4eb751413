"""The operator console's routes: pages under /console, served by the 1C API from the same store and broker.

Who is looking: the person signed in through single sign-on, or a client with Basic or an API key, as configured
(esi.console.sso, which also serves the sign-in, its callback and the sign-out under /console/auth).

Read pages (overview, requests, a request, dead letters, systems) need the `read` or the `operator` scope; the
actions (replay, purge, pause, resume) need `operator`, are POSTs carrying a CSRF token (esi.console.csrf), and go
to the audit log through the same code as the JSON API (esi.api.routes.dead_letters, esi.api.routes.systems).

What a client sees: an operator every request, with personal data masked unless it sent the request itself; any
other reader only the requests it sent (as `GET /requests/{id}` allows it). With authentication off, everything.

Nothing here is on the API's hot path: these routes are plain FastAPI routes the fast path (esi.api.hot) never
answers, and they add no middleware.

This module only puts the routes together: the pages and actions are in esi.console.overview, .requests,
.dead_letters and .systems, over the rendering, CSRF and permission plumbing of esi.console.core.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from esi.api.auth import Authenticator
from esi.api.deps import ApiDeps
from esi.console.core import Console
from esi.console.dead_letters import DeadLetterPages
from esi.console.events import EventPages
from esi.console.overview import Overview
from esi.console.requests import RequestPages
from esi.console.sso import ConsoleSignIn, SignInSettings
from esi.console.systems import SystemPages
from esi.security.scopes import Principal

__all__ = ["console_router"]


def console_router(
    deps: ApiDeps, auth: Authenticator, *, lang: str = "en", sign_in: SignInSettings | None = None
) -> APIRouter:
    """The console's routes, added beside the API by the composition root (`Api.include_pages`).

    `lang`: the pages' language when a request's Accept-Language names neither English nor Russian (`ESI_LANG`,
    read by the composition root); `sign_in`: how people sign in (esi.console.sso: single sign-on, Basic), by
    default as the API's clients do."""
    console = Console(deps, auth, lang=lang)
    sso = ConsoleSignIn(console, auth, sign_in or SignInSettings(secret=deps.console_secret))
    overview_pages = Overview(console)
    request_pages = RequestPages(console)
    dead_letter_pages = DeadLetterPages(console, overview_pages)
    system_pages = SystemPages(console, overview_pages)
    event_pages = EventPages(console)

    router = APIRouter(prefix="/console", include_in_schema=False)
    principal = Depends(sso.principal)

    async def login(request: Request) -> Response:
        return await sso.login(request=request)

    async def callback(request: Request) -> Response:
        return await sso.callback(request=request)

    async def logout(request: Request) -> Response:
        return await sso.logout(request=request)

    async def signed_out(request: Request) -> Response:
        return await sso.signed_out(request=request)

    async def overview(request: Request, principal: Principal = principal) -> Response:
        return await overview_pages.overview(request=request, principal=principal)

    async def overview_live(request: Request, principal: Principal = principal) -> Response:
        return await overview_pages.live(request=request, principal=principal)

    async def dlq_live(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.live(request=request, principal=principal)

    async def dlq_jobs(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.jobs(request=request, principal=principal)

    async def edit(ident: str, request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.edit(ident[:128], request=request, principal=principal)

    async def cancel(job_id: int, request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.cancel(job_id, request=request, principal=principal)

    async def requests(request: Request, principal: Principal = principal) -> Response:
        return await request_pages.requests(request=request, principal=principal)

    async def request_page(request_id: str, request: Request, principal: Principal = principal) -> Response:
        return await request_pages.request_page(request_id, request=request, principal=principal)

    async def dead_letters(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.dead_letters(request=request, principal=principal)

    async def dead_letter(ident: str, request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.dead_letter(ident, request=request, principal=principal)

    async def replay(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.replay(request=request, principal=principal)

    async def confirm_purge(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.confirm_purge(request=request, principal=principal)

    async def purge(request: Request, principal: Principal = principal) -> Response:
        return await dead_letter_pages.purge(request=request, principal=principal)

    async def systems(request: Request, principal: Principal = principal) -> Response:
        return await system_pages.systems(request=request, principal=principal)

    async def pause(code: str, request: Request, principal: Principal = principal) -> Response:
        return await system_pages.pause(code, request=request, principal=principal)

    async def resume(code: str, request: Request, principal: Principal = principal) -> Response:
        return await system_pages.resume(code, request=request, principal=principal)

    async def events(request: Request, principal: Principal = principal) -> Response:
        return await event_pages.events(request=request, principal=principal)

    router.add_api_route("", overview, methods=["GET"], name="console_overview")
    router.add_api_route("/requests", requests, methods=["GET"], name="console_requests")
    router.add_api_route("/requests/{request_id}", request_page, methods=["GET"], name="console_request")
    router.add_api_route("/overview/live", overview_live, methods=["GET"], name="console_overview_live")
    router.add_api_route("/dlq", dead_letters, methods=["GET"], name="console_dead_letters")
    router.add_api_route("/dlq/live", dlq_live, methods=["GET"], name="console_dlq_live")
    router.add_api_route("/dlq/jobs", dlq_jobs, methods=["GET"], name="console_dlq_jobs")
    router.add_api_route("/dlq/jobs/{job_id}/cancel", cancel, methods=["POST"], name="console_dlq_cancel")
    router.add_api_route("/dlq/messages/{ident}/edit", edit, methods=["POST"], name="console_dlq_edit")
    router.add_api_route("/dlq/messages/{ident}", dead_letter, methods=["GET"], name="console_dead_letter")
    router.add_api_route("/dlq/replay", replay, methods=["POST"], name="console_replay")
    router.add_api_route("/dlq/purge/confirm", confirm_purge, methods=["POST"], name="console_confirm_purge")
    router.add_api_route("/dlq/purge", purge, methods=["POST"], name="console_purge")
    router.add_api_route("/systems", systems, methods=["GET"], name="console_systems")
    router.add_api_route("/systems/{code}/pause", pause, methods=["POST"], name="console_pause")
    router.add_api_route("/systems/{code}/resume", resume, methods=["POST"], name="console_resume")
    router.add_api_route("/events", events, methods=["GET"], name="console_events")
    router.add_api_route("/auth/login", login, methods=["GET"], name="console_login")
    router.add_api_route("/auth/callback", callback, methods=["GET"], name="console_callback")
    router.add_api_route("/auth/logout", logout, methods=["GET"], name="console_logout")
    router.add_api_route("/auth/signed-out", signed_out, methods=["GET"], name="console_signed_out")
    router.add_api_route("/static/{name}", console.static, methods=["GET"], name="console_static")
    return router
