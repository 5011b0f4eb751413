"""Single sign-on to the console in a real browser: Playwright driving Debian's chromium through esi (processes:
the API with single sign-on, both adapters, both fakes) and the test's OpenID Connect provider (tests/oidc_provider.py,
a real server on a free port: discovery, JWKS, a sign-in form, code + PKCE, ID tokens with groups, end session).

An operator signs in at the provider and replays a dead letter with the console's replay action; a viewer is
refused the action (403), a person in no mapped group the console (403); signing out ends the session here and at
the provider, so the next page asks for a sign-in again. The session cookie's flags are read from the browser.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from esi.security import make_client_entry
from esi.testing import EsiSystem, Vhost, wait_until
from tests.oidc_provider import Provider, User, running_provider
from tests.support import unique

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
OPS = ("ops", "ops-sso-pw")
CLIENTS = {"clients": [make_client_entry(OPS[0], password=OPS[1], send=["*"], read=True, operator=True)]}
USERS = {
    "olga": User("olga-pw", ["esi-operators"], name="Ольга Операторова"),
    "vera": User("vera-pw", ["esi-viewers"]),
    "petr": User("petr-pw", ["accounting"]),
}
ROLES = {"esi-operators": ["operator"], "esi-viewers": ["read"]}
LIFETIME_S = 2 * 3600

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    idp = Provider(client_id="esi-console", client_secret=unique("client-secret"), users=USERS)
    with running_provider(idp) as running:
        yield running


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[EsiSystem]:
    workdir = tmp_path_factory.mktemp("console-sso")
    secret_file = workdir / "oidc-client-secret"
    secret_file.write_text(provider.client_secret + "\n")
    vhost = Vhost()
    esi = EsiSystem(workdir=workdir, amqp_url=vhost.url, database_url=f"sqlite:///{workdir}/esi.db")
    callback = f"{esi.api_url}/console/auth/callback"
    provider.redirect_uris.append(callback)
    provider.post_logout_redirect_uris.append(f"{esi.api_url}/console/auth/signed-out")
    esi.extra_env.update(
        {
            "ESI_AUTH": "on",
            "ESI_CLIENTS_JSON": json.dumps(CLIENTS),
            "ESI_CONSOLE_SECRET": unique("browser-sso-console-secret"),
            "ESI_OIDC_ISSUER": provider.issuer,
            "ESI_OIDC_CLIENT_ID": provider.client_id,
            "ESI_OIDC_CLIENT_SECRET_FILE": str(secret_file),  # read from a file, as secrets are
            "ESI_OIDC_REDIRECT_URL": callback,
            "ESI_OIDC_ROLES": json.dumps(ROLES),
            "ESI_CONSOLE_SESSION_LIFETIME": f"{LIFETIME_S}s",
            # the default, kept although the test speaks plain HTTP: chromium takes 127.0.0.1 as a secure context
            "ESI_CONSOLE_COOKIE_SECURE": "true",
        }
    )
    try:
        esi.start_all()
        yield esi
        codes = esi.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, esi.logs()[-3000:])
    except BaseException:
        print(esi.logs()[-6000:])
        esi.kill_all()
        raise
    finally:
        vhost.delete()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = "the browser tests drive Debian's chromium: apt-get install -y --no-install-recommends chromium"
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def tab(browser: Any, system: EsiSystem) -> Iterator[Any]:
    """A fresh browser context (no cookies, no Basic credentials) and its page; fails on any script error."""
    context = browser.new_context(base_url=system.api_url, extra_http_headers={"Accept-Language": "en"})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    # the refusals (403 pages) log their status in the console: only script errors count
    assert not [e for e in errors if "status of 403" not in e], errors


def sign_in(page: Any, provider: Provider, user: str, path: str = "/console") -> Any:
    """Open `path`, get sent to the provider, sign in there as `user`; the response esi gave at the end."""
    page.goto(path)
    assert page.url.startswith(f"{provider.issuer}/authorize?"), page.url
    page.fill("#username", user)
    page.fill("#password", USERS[user].password)
    with page.expect_navigation() as navigation:
        page.click("#submit")
    return navigation.value


def dead_letter(system: EsiSystem) -> str:
    """A create_user request the fake DMS refuses for good (HTTP 400: dead-lettered on the first try)."""
    system.fault("dms", {"status": 400})
    try:
        body = {"request_id": unique("SSO"), "user_id": unique("U"), "name": "Единый Вход", "email": "sso@example.com"}
        response = httpx.post(f"{system.api_url}/send_to_dms", json=body, auth=OPS, timeout=30)
        assert response.status_code == 202, response.text
        request_id = str(response.json()["request_id"])
        wait_until(lambda: status(system, request_id) == "dead_lettered", timeout=30, what="the dead letter")
    finally:
        system.fault("dms", {})
    return request_id


def status(system: EsiSystem, request_id: str) -> str:
    response = httpx.get(f"{system.api_url}/requests/{request_id}", params={"wait": 2}, auth=OPS, timeout=10)
    return str(response.json()["status"])


def replay(page: Any) -> Any:
    """The console's replay action on the group of the DMS's 400s, posted as its form does (the CSRF token of the
    page's cookie, which the form repeats)."""
    page.goto("/console/dlq")
    [token] = [c["value"] for c in page.context.cookies() if c["name"] == "esi_console_csrf"]
    form = {"csrf_token": token, "queue": "dms", "scope": "group", "code": "http_400"}
    return page.context.request.post("/console/dlq/replay", form=form, max_redirects=0)


def test_an_operator_signs_in_at_the_provider_and_replays_a_dead_letter(
    system: EsiSystem, provider: Provider, tab: Any
) -> None:
    request_id = dead_letter(system)
    landed = sign_in(tab, provider, "olga", "/console/systems")
    assert landed.url == f"{system.api_url}/console/systems"
    assert landed.status == 200
    assert tab.locator("header .who").inner_text().startswith("sso:olga")
    assert tab.locator("header [data-sign-out]").is_visible()
    sent = provider.authorizations[-1]
    assert sent["code_challenge_method"] == "S256"
    assert sent["redirect_uri"] == f"{system.api_url}/console/auth/callback"
    # the page the sign-in lands on (a redirect chain that started at the provider) can already post its forms
    [csrf] = [c["value"] for c in tab.context.cookies() if c["name"] == "esi_console_csrf"]
    assert tab.locator(f'input[name="csrf_token"][value="{csrf}"]').count() >= 1
    [session] = [c for c in tab.context.cookies() if c["name"] == "esi_console_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/console"
    assert session["secure"] is True
    assert LIFETIME_S - 120 < session["expires"] - time.time() <= LIFETIME_S
    done = replay(tab)
    assert done.status == 303, done.text()
    # the replay is a job now (esi.dlq.jobs): the console says it started, with its id
    assert re.search(r"/console/dlq\?done=replaying&n=1&job=[0-9]+", done.headers["location"])
    wait_until(lambda: status(system, request_id) == "completed", timeout=30, what="the replayed request")
    audit = httpx.get(f"{system.api_url}/audit", params={"action": "dlq.replay"}, auth=OPS, timeout=10).json()
    assert audit["entries"][0]["client_id"] == "sso:olga"


def test_a_viewer_gets_403_on_the_replay_and_an_outsider_on_the_console(
    system: EsiSystem, provider: Provider, tab: Any, browser: Any
) -> None:
    request_id = dead_letter(system)
    landed = sign_in(tab, provider, "vera", "/console/dlq")
    assert landed.status == 200
    assert tab.locator("header .who").inner_text().startswith("sso:vera")
    assert tab.locator("button[data-action], form[method=post] button").count() == 0
    refused = replay(tab)
    assert refused.status == 403, refused.text()
    assert status(system, request_id) == "dead_lettered"
    outsider = browser.new_context(base_url=system.api_url)
    try:
        page = outsider.new_page()
        answer = sign_in(page, provider, "petr")
        assert answer.status == 403
        assert "none of your groups may use the console" in page.locator(".error").inner_text()
        assert not [c for c in outsider.cookies() if c["name"] == "esi_console_session"]
    finally:
        outsider.close()


def test_sign_out_ends_the_session_and_the_next_page_asks_for_a_sign_in(
    system: EsiSystem, provider: Provider, tab: Any
) -> None:
    sign_in(tab, provider, "olga", "/console/systems")
    assert tab.url == f"{system.api_url}/console/systems"
    logouts = len(provider.logouts)
    with tab.expect_navigation(url=re.compile(r"/console/auth/signed-out")):
        tab.locator("header [data-sign-out]").click()
    assert len(provider.logouts) == logouts + 1  # the provider's end_session_endpoint was visited
    assert provider.logouts[-1]["client_id"] == "esi-console"
    assert tab.locator("[data-signed-out]").is_visible()
    assert not [c for c in tab.context.cookies() if c["name"] == "esi_console_session"]
    tab.goto("/console/systems")
    # esi sends the browser to the provider, whose own session ended too: its sign-in form, not the console
    assert urlsplit(tab.url).path == "/authorize", tab.url
    assert tab.locator("#username").is_visible()
