"""The console's core, which every page module uses: the Jinja2 environment and `page()` (a page with the security
headers and the CSRF cookie), the CSRF check of an action's form, the permission helpers, the redirect after an
action, the static files, and `html_errors` (an `ApiError` answered as an error page).

Each page is rendered in the request's language (esi.console.i18n: `Accept-Language`, else `ESI_LANG`): one Jinja2
environment per language, built once with that language's catalog installed (`jinja2.ext.i18n`), so rendering
shares no mutable state between requests.

It holds no page of its own: the pages and actions are in esi.console.overview, .requests, .dead_letters and
.systems, each over one `Console`; esi.console.router puts their routes together.
"""

from __future__ import annotations

import functools
import gettext
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, ParamSpec, Protocol
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData

from esi.api.auth import Authenticator
from esi.api.deps import ApiDeps
from esi.console.csrf import COOKIE, FIELD, CsrfTokens
from esi.console.i18n import LANGUAGES, N_, label, negotiate, translate, translations
from esi.errors import ApiError
from esi.security.scopes import Principal, require_operator
from esi.store import RequestRecord

__all__ = ["CSP", "SECURITY_HEADERS", "Console", "html_errors", "pretty_json"]

#: no inline script, no inline style, nothing from elsewhere; forms post only to esi itself
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    # htmx 2.0.11 (BSD Zero-Clause; htmx.LICENSE.txt), vendored from the npm registry: no CDN at run time
    "htmx.min.js": "text/javascript; charset=utf-8",
}
#: the notices after an action (`?done=`), worded by base.html (with the plural forms of the page's language)
NOTICES = ("replayed", "purged", "paused", "resumed", "replaying", "purging", "edited", "cancelled")

P = ParamSpec("P")


class _Pages(Protocol):
    """What `html_errors` needs of the object whose handler it wraps: the console it renders with."""

    console: Console


def html_errors(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """An `ApiError` raised by a page or an action is answered as a page with the same status.

    For the methods of a page module's class (its `console` renders the error page), called with keywords
    `request` and `principal`."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            pages: _Pages = args[0]  # type: ignore[assignment]
            request: Request = kwargs["request"]  # type: ignore[assignment]
            principal: Principal | None = kwargs.get("principal")  # type: ignore[assignment]
            return pages.console.page(request, principal, "error.html", status=exc.status, error=exc, title=N_("Error"))

    return wrapper


def pretty_json(value: Any) -> str:
    """A value as indented JSON (the `json` filter of the templates)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


def _shorten(value: str, room: int) -> str:
    """A text cut to `room` characters, an ellipsis at the end when cut (a label on a drawing)."""
    return value if len(value) <= room else f"{value[: room - 1]}…"


def _environment(lang: str) -> Environment:
    """The templates' environment for one language, its catalog installed (newstyle gettext: `_()` escapes and
    formats `%(name)s` itself)."""
    catalog: gettext.NullTranslations = translations(lang)
    env = Environment(
        loader=PackageLoader("esi.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(catalog, newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = _when
    env.filters["json"] = pretty_json
    env.filters["shorten"] = _shorten
    env.filters["t"] = lambda value: translate(value, catalog)
    env.filters["label"] = lambda value: translate(label(value), catalog)
    env.globals["lang"] = lang
    return env


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


class Console:
    """The console over the API's dependencies: what every page and action renders, checks and answers with."""

    def __init__(self, deps: ApiDeps, auth: Authenticator, *, lang: str = LANGUAGES[0]) -> None:
        if lang not in LANGUAGES:
            raise ValueError(f"the console speaks {', '.join(LANGUAGES)}, not {lang!r}")
        self.deps = deps
        self.store = deps.store
        self.registry = deps.registry
        self.auth = auth
        #: the language of a request whose Accept-Language names no language of the console (ESI_LANG)
        self.lang = lang
        self._csrf = CsrfTokens(deps.console_secret)
        self._envs = {language: _environment(language) for language in LANGUAGES}
        static = resources.files("esi.console") / "static"
        self._static = {name: (static / name).read_bytes() for name in STATIC_TYPES}

    # --- rendering, tokens, permissions -----------------------------------------------------------------------------

    def page(
        self, request: Request, principal: Principal | None, template: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A page with the security headers; the CSRF cookie is (re)set when the client has no valid one."""
        cookie = request.cookies.get(COOKIE)
        token = None
        if principal is not None:
            valid = self._csrf.valid_for(cookie, principal.client_id)
            token = cookie if valid and cookie else self._csrf.issue(principal.client_id)
        query = request.query_params
        notice = None
        if query.get("done") in NOTICES:
            notice = {
                "done": query["done"],
                "n": int(query["n"][:9]) if query.get("n", "").isdigit() else 0,
                "system": query.get("system", "")[:32],
                "job": int(query["job"][:9]) if query.get("job", "").isdigit() else None,
            }
        lang = self.language(request)
        html = (
            self._envs[lang]
            .get_template(template)
            .render(
                principal=principal,
                operator=principal is not None and principal.is_operator,
                csrf_field=FIELD,
                csrf=token or "",
                auth_on=self.auth.enabled,
                notice=notice,
                path=request.url.path,
                refresh=None,
                **context,
            )
        )
        response = HTMLResponse(
            html,
            status_code=status,
            headers={**SECURITY_HEADERS, "Content-Language": lang, "Vary": "Accept-Language"},
        )
        if token is not None and token != cookie:
            response.set_cookie(
                COOKIE, token, httponly=True, samesite="strict", path="/console", secure=request.url.scheme == "https"
            )
        return response

    def fragment(self, request: Request, principal: Principal | None, template: str, **context: Any) -> HTMLResponse:
        """A piece of a page, for htmx to swap in place (no layout; the page's CSRF token, no new cookie)."""
        cookie = request.cookies.get(COOKIE)
        valid = principal is not None and cookie is not None and self._csrf.valid_for(cookie, principal.client_id)
        html = (
            self._envs[self.language(request)]
            .get_template(template)
            .render(
                principal=principal,
                operator=principal is not None and principal.is_operator,
                csrf_field=FIELD,
                csrf=cookie if valid else "",
                **context,
            )
        )
        return HTMLResponse(html, headers={**SECURITY_HEADERS, "Vary": "Accept-Language"})

    def language(self, request: Request) -> str:
        """The language of the page: the best match of the request's Accept-Language, else the console's."""
        return negotiate(request.headers.get("accept-language"), self.lang)

    async def action_form(self, request: Request, principal: Principal) -> FormData:
        """The form of an action: 403 without the operator scope or without this client's CSRF token."""
        require_operator(principal)
        form = await request.form(max_files=0, max_fields=10_100)
        token = form.get(FIELD)
        if not self._csrf.check(
            token if isinstance(token, str) else None, request.cookies.get(COOKIE), principal.client_id
        ):
            raise ApiError(
                403,
                "csrf_failed",
                N_("the form is stale or did not come from the console: reload the page and try again"),
            )
        return form

    @staticmethod
    def require_viewer(principal: Principal) -> None:
        if not (principal.can_read or principal.is_operator):
            raise ApiError(
                403, "forbidden", N_("client %(client)s may not use the console", client=repr(principal.client_id))
            )

    def sees_all(self, principal: Principal) -> bool:
        return not self.auth.enabled or principal.is_operator

    def may_read(self, principal: Principal, record: RequestRecord) -> bool:
        """Whether the client may read the request's personal data: as `GET /requests/{id}` would let it."""
        return not self.auth.enabled or (principal.can_read and record.client_id == principal.client_id)

    @staticmethod
    def redirect(path: str, **query: str | int) -> RedirectResponse:
        return RedirectResponse(
            f"{path}?{urlencode(query)}" if query else path, status_code=303, headers=SECURITY_HEADERS
        )

    async def static(self, name: str) -> Response:
        if name not in self._static:
            raise ApiError(404, "not_found", N_("no such file"))
        return Response(
            self._static[name],
            media_type=STATIC_TYPES[name],
            headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"},
        )
