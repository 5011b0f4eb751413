"""Single sign-on for the console, without a broker: esi's app in-process, the test provider (tests/oidc_provider.py)
a real HTTP server; httpx walks the redirects a browser would. The browser itself: tests/browser/test_console_sso.py.

Also here: the role mapping, the claims, and the validation of the settings."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from esi.api.app import ApiDeps, create_app
from esi.config import Settings
from esi.console import console_router
from esi.console.csrf import FIELD
from esi.console.sso import SESSION_COOKIE, SIGNIN_COOKIE, SignInSettings
from esi.runtime.services import oidc_from, sign_in_from
from esi.security import ClientRegistry, make_client_entry
from esi.security.oidc import OidcConfig, OidcConfigError, RoleMap, claim_values, session_key_problem
from esi.store import Store
from esi.systems.registry import load_registry
from tests.oidc_provider import Provider, User, running_provider

ESI = "https://esi.example"
CALLBACK = f"{ESI}/console/auth/callback"
ROLES = {"esi-operators": ["operator"], "esi-viewers": ["read"]}
USERS = {
    "olga": User("olga-pw", ["esi-operators", "staff"]),
    "vera": User("vera-pw", ["esi-viewers"]),
    "petr": User("petr-pw", ["staff"]),
}
CLIENTS = [make_client_entry("ops", password="ops-pw", send=["*"], read=True, operator=True)]
KEY = b"a-console-secret-of-32-chars-or-more"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    idp = Provider(
        client_id="esi-console",
        client_secret="esi-client-secret",
        users=USERS,
        redirect_uris=[CALLBACK],
        post_logout_redirect_uris=[f"{ESI}/console/auth/signed-out"],
    )
    with running_provider(idp) as running:
        yield running


def _settings(provider: Provider, **overrides: Any) -> SignInSettings:
    oidc = OidcConfig.build(
        issuer=provider.issuer,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        redirect_url=CALLBACK,
        roles=json.dumps(ROLES),
    )
    return SignInSettings(**{"oidc": oidc, "basic": False, "secret": KEY, **overrides})


async def _app(tmp_path: Path, sign_in: SignInSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with await Store.open(f"sqlite:///{tmp_path}/console.db") as store:
        deps = ApiDeps(
            registry=load_registry(),
            store=store,
            on_accepted=lambda row: None,
            max_pdf_bytes=1024,
            clients=ClientRegistry.from_json(json.dumps({"clients": CLIENTS})),
            console_secret=KEY,
        )
        app = create_app(deps)
        app.include_pages(lambda d, a: console_router(d, a, sign_in=sign_in), deps)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ESI) as client:
            yield client


@pytest.fixture
async def esi(tmp_path: Path, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _app(tmp_path, _settings(provider)):
        yield client


async def _to_provider(esi: httpx.AsyncClient, path: str = "/console") -> str:
    """From a console page to the provider's authorization URL, as a browser would follow."""
    page = await esi.get(path)
    assert page.status_code == 303, page.text
    login = page.headers["location"]
    assert login.startswith("/console/auth/login?next=")
    redirect = await esi.get(login)
    assert redirect.status_code == 302, redirect.text
    return redirect.headers["location"]


async def _at_provider(authorize_url: str, user: str, password: str) -> str:
    """Sign in at the provider's form; the URL it sends the browser back to."""
    async with httpx.AsyncClient() as browser:
        form_page = await browser.get(authorize_url)
        assert form_page.status_code == 200, form_page.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form_page.text))
        back = await browser.post(authorize_url.split("?")[0], data={**fields, "username": user, "password": password})
        assert back.status_code == 302, back.text
        return back.headers["location"]


async def _sign_in(esi: httpx.AsyncClient, user: str, *, path: str = "/console") -> httpx.Response:
    back = await _at_provider(await _to_provider(esi, path), user, USERS[user].password)
    assert back.startswith(CALLBACK)
    return await esi.get(back)


def _set_cookie(response: httpx.Response, name: str) -> str:
    found = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{name}=")]
    assert found, response.headers
    return found[-1]


async def test_an_operator_signs_in_with_pkce_and_gets_a_secure_expiring_session(
    esi: httpx.AsyncClient, provider: Provider
) -> None:
    done = await _sign_in(esi, "olga", path="/console/systems?x=1")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/systems?x=1"  # back to the page asked for
    cookie = _set_cookie(done, SESSION_COOKIE).lower()
    for flag in ("secure", "httponly", "samesite=lax", "path=/console", f"max-age={8 * 3600}"):
        assert flag in cookie, cookie
    assert "max-age=0" in _set_cookie(done, SIGNIN_COOKIE).lower()  # the sign-in's state is gone
    authorization = provider.authorizations[-1]
    assert authorization["code_challenge_method"] == "S256"
    assert authorization["nonce"]
    assert authorization["state"]
    assert authorization["redirect_uri"] == CALLBACK
    assert provider.token_requests[-1]["code_verifier"]
    page = await esi.get("/console/systems")
    assert page.status_code == 200, page.text
    assert "sso:olga" in page.text
    assert "data-sign-out" in page.text
    assert 'class="badge">operator' in page.text
    audit = (await esi.get("/audit", params={"action": "console.sign_in"}, auth=("ops", "ops-pw"))).json()
    assert audit["entries"][0]["client_id"] == "sso:olga"
    assert audit["entries"][0]["detail"] == {"groups": ["esi-operators"], "scopes": ["operator"]}


async def test_a_viewer_reads_but_gets_403_on_an_action(esi: httpx.AsyncClient) -> None:
    await _sign_in(esi, "vera")
    page = await esi.get("/console/systems")
    assert page.status_code == 200
    assert "sso:vera" in page.text
    token = esi.cookies.get("esi_console_csrf")
    assert token
    refused = await esi.post("/console/dlq/replay", data={FIELD: token, "queue": "dms", "ids": "x"})
    assert refused.status_code == 403
    assert "may not use the operator endpoints" in refused.text


async def test_a_person_in_no_mapped_group_is_refused_without_a_session(esi: httpx.AsyncClient) -> None:
    refused = await _sign_in(esi, "petr")
    assert refused.status_code == 403
    assert "none of your groups may use the console" in refused.text
    assert not any(c.startswith(f"{SESSION_COOKIE}=") for c in refused.headers.get_list("set-cookie"))
    assert (await esi.get("/console")).status_code == 303
    audit = (await esi.get("/audit", params={"action": "console.sign_in_refused"}, auth=("ops", "ops-pw"))).json()
    assert audit["entries"][0]["client_id"] == "sso:petr"
    assert audit["entries"][0]["detail"] == {"groups": ["staff"]}


async def test_sign_out_ends_the_session_here_and_at_the_provider(esi: httpx.AsyncClient, provider: Provider) -> None:
    await _sign_in(esi, "olga")
    kept = esi.cookies.get(SESSION_COOKIE)
    assert kept
    out = await esi.get("/console/auth/logout")
    assert out.status_code == 303
    target = urlsplit(out.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == provider.issuer
    assert target.path == "/logout"
    query = parse_qs(target.query)
    assert query["post_logout_redirect_uri"] == [f"{ESI}/console/auth/signed-out"]
    assert query["client_id"] == ["esi-console"]
    assert query["id_token_hint"][0].count(".") == 2
    assert esi.cookies.get(SESSION_COOKIE) is None
    assert (await esi.get("/console")).status_code == 303
    # the cookie kept from before the sign-out is refused too (this process remembers the session ended)
    esi.cookies.set(SESSION_COOKIE, kept, domain="esi.example", path="/console")
    assert (await esi.get("/console")).status_code == 303
    audit = (await esi.get("/audit", params={"action": "console.sign_out"}, auth=("ops", "ops-pw"))).json()
    assert audit["entries"][0]["client_id"] == "sso:olga"
    signed_out = await esi.get("/console/auth/signed-out")
    assert signed_out.status_code == 200
    assert "data-sign-in-again" in signed_out.text


async def test_groups_only_in_the_userinfo_are_found_there(esi: httpx.AsyncClient, provider: Provider) -> None:
    provider.groups_in_id_token = False
    try:
        done = await _sign_in(esi, "olga")
    finally:
        provider.groups_in_id_token = True
    assert done.status_code == 303, done.text
    assert "sso:olga" in (await esi.get("/console/systems")).text


async def test_a_session_whose_groups_no_longer_map_is_refused(
    tmp_path: Path, esi: httpx.AsyncClient, provider: Provider
) -> None:
    await _sign_in(esi, "olga")
    cookie = esi.cookies.get(SESSION_COOKIE)
    assert cookie
    remapped = OidcConfig.build(
        issuer=provider.issuer, client_id=provider.client_id, redirect_url=CALLBACK, roles={"admins": ["operator"]}
    )
    async for other in _app(tmp_path / "remapped", _settings(provider, oidc=remapped)):
        other.cookies.set(SESSION_COOKIE, cookie, domain="esi.example", path="/console")
        refused = await other.get("/console")
        assert refused.status_code == 403
        assert "none of your groups" in refused.text


async def test_a_cross_site_sign_out_link_signs_nobody_out(esi: httpx.AsyncClient) -> None:
    await _sign_in(esi, "olga")
    out = await esi.get("/console/auth/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert out.status_code == 303
    assert out.headers["location"] == "/console"
    assert (await esi.get("/console")).status_code == 200


async def test_forged_replayed_or_foreign_sign_ins_are_refused(esi: httpx.AsyncClient, provider: Provider) -> None:
    # a callback that did not start here (no sign-in cookie)
    back = await _at_provider(await _to_provider(esi), "olga", "olga-pw")
    esi.cookies.delete(SIGNIN_COOKIE)
    assert (await esi.get(back)).status_code == 400
    # a state that is not the one sent
    back = await _at_provider(await _to_provider(esi), "olga", "olga-pw")
    forged = re.sub(r"state=[^&]+", "state=forged", back)
    refused = await esi.get(forged)
    assert refused.status_code == 400
    assert "sign-in" in refused.text
    # the same code twice: the provider's single use (the sign-in cookie is taken from before the first use)
    back = await _at_provider(await _to_provider(esi), "olga", "olga-pw")
    pending = esi.cookies.get(SIGNIN_COOKIE)
    assert (await esi.get(back)).status_code == 303
    esi.cookies.set(SIGNIN_COOKIE, pending or "", domain="esi.example", path="/console/auth")
    assert (await esi.get(back)).status_code == 400
    # a tampered session cookie: back to the sign-in
    esi.cookies.set(SESSION_COOKIE, "eyJ1Ijoib2xnYSJ9.forged.sig", domain="esi.example", path="/console")
    assert (await esi.get("/console")).status_code == 303
    # the provider's error is shown, not followed
    error = await esi.get("/console/auth/callback", params={"error": "access_denied", "state": "x"})
    assert error.status_code == 400


@pytest.mark.parametrize("forge", ["nonce", "audience", "issuer", "expired", "key"])
async def test_an_id_token_that_does_not_check_out_gives_no_session(
    esi: httpx.AsyncClient, provider: Provider, forge: str
) -> None:
    provider.forge = forge
    try:
        refused = await _sign_in(esi, "olga")
    finally:
        provider.forge = None
    assert refused.status_code == 400, refused.text
    assert "the sign-in could not be verified" in refused.text
    assert esi.cookies.get(SESSION_COOKIE) is None
    assert (await esi.get("/console")).status_code == 303


async def test_the_return_path_stays_on_the_console(esi: httpx.AsyncClient) -> None:
    for hostile in ("https://evil.example/", "//evil.example/console", "/console/auth/logout", "/other"):
        redirect = await esi.get("/console/auth/login", params={"next": hostile})
        back = await _at_provider(redirect.headers["location"], "olga", "olga-pw")
        done = await esi.get(back)
        assert done.headers["location"] == "/console", hostile


async def test_basic_on_the_console_only_when_configured_and_the_api_keeps_it(
    tmp_path: Path, esi: httpx.AsyncClient, provider: Provider
) -> None:
    # single sign-on alone: Basic does not open the console, but the API's endpoints keep their authentication
    assert (await esi.get("/console", auth=("ops", "ops-pw"))).status_code == 303
    assert (await esi.get("/audit", auth=("ops", "ops-pw"))).status_code == 200
    assert (await esi.get("/audit")).status_code == 401
    async for both in _app(tmp_path / "both", _settings(provider, basic=True)):
        page = await both.get("/console", auth=("ops", "ops-pw"))
        assert page.status_code == 200
        assert "data-sign-out" not in page.text  # a Basic client has no session to end
        assert (await both.post("/console/dlq/replay")).status_code == 401
    # no single sign-on: the sign-in routes do not exist
    async for basic in _app(tmp_path / "basic", SignInSettings(secret=KEY)):
        assert (await basic.get("/console/auth/login")).status_code == 404
        assert (await basic.get("/console")).status_code == 401


async def test_a_provider_that_does_not_answer_gives_a_page_not_a_crash(tmp_path: Path) -> None:
    idp = Provider(client_id="c", client_secret="s", users={}, issuer="http://127.0.0.1:9", redirect_uris=[CALLBACK])
    settings = SignInSettings(
        oidc=OidcConfig.build(issuer=idp.issuer, client_id="c", redirect_url=CALLBACK, roles=ROLES), secret=KEY
    )
    async for esi in _app(tmp_path, settings):
        page = await esi.get("/console/auth/login")
        assert page.status_code == 502
        assert "does not answer" in page.text


# --- the provider keeps the protocol's rules (so that the tests above mean something) ---------------------------


async def test_the_test_provider_enforces_redirect_uri_pkce_and_single_use(provider: Provider) -> None:
    async with httpx.AsyncClient(base_url=provider.issuer) as http:
        base = {"client_id": provider.client_id, "response_type": "code", "scope": "openid", "state": "s"}
        wrong = await http.get("/authorize", params={**base, "redirect_uri": "https://evil.example/cb"})
        assert wrong.status_code == 400  # a page of its own, never a redirect to an unknown URI
        no_pkce = await http.get("/authorize", params={**base, "redirect_uri": CALLBACK})
        assert no_pkce.status_code == 302
        assert "error=invalid_request" in no_pkce.headers["location"]
        verifier = "v" * 50
        import base64
        import hashlib

        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        signed_in = await http.post(
            "/authorize",
            data={
                **base,
                "redirect_uri": CALLBACK,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "username": "olga",
                "password": "olga-pw",
            },
        )
        code = parse_qs(urlsplit(signed_in.headers["location"]).query)["code"][0]
        auth = (provider.client_id, provider.client_secret)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
        assert (await http.post("/token", data={**form, "code_verifier": "w" * 50}, auth=auth)).status_code == 400
        # the failed attempt used the code up
        assert (await http.post("/token", data={**form, "code_verifier": verifier}, auth=auth)).status_code == 400
        assert (await http.post("/token", data=form, auth=(provider.client_id, "wrong"))).status_code == 401


# --- the role mapping, the claims, the settings ------------------------------------------------------------------


def test_groups_map_to_the_union_of_their_scopes() -> None:
    roles = RoleMap.parse(json.dumps({"ops": ["operator"], "read": "read", "both": ["READ", " operator "]}))
    operator = roles.principal("olga", ["staff", "ops"])
    assert operator is not None
    assert (operator.client_id, operator.can_read, operator.is_operator) == ("sso:olga", True, True)
    viewer = roles.principal("vera", ["read"])
    assert viewer is not None
    assert (viewer.can_read, viewer.is_operator) == (True, False)
    assert roles.principal("petr", ["staff"]) is None
    assert roles.principal("petr", []) is None
    assert roles.scopes_of(["both"]) == {"read", "operator"}
    assert roles.mapped(["staff", "read", "ops", "read"]) == ["ops", "read"]
    assert roles.principal("x" * 100, ["ops"]).client_id == "sso:" + "x" * 60  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "must be a JSON object"),
        ("{}", "at least one group"),
        ("[]", "at least one group"),
        ('{"ops": []}', "must list its scopes"),
        ('{"ops": [1]}', "must list its scopes"),
        ('{"ops": ["dlq:replay"]}', "unknown scope(s) dlq:replay; known: read, operator"),
        ('{"": ["read"]}', "non-empty string"),
    ],
)
def test_a_bad_role_mapping_is_refused_naming_the_problem(value: str, message: str) -> None:
    with pytest.raises(OidcConfigError, match=re.escape(message)):
        RoleMap.parse(value)


def test_claims_are_found_by_name_or_dotted_path() -> None:
    claims = {
        "groups": ["a", "b", 3],
        "realm_access": {"roles": ["esi-operators"]},
        "group": "single",
        "https://example.com/claims/groups": ["x"],
    }
    assert claim_values(claims, "groups") == ["a", "b"]
    assert claim_values(claims, "realm_access.roles") == ["esi-operators"]
    assert claim_values(claims, "group") == ["single"]
    assert claim_values(claims, "https://example.com/claims/groups") == ["x"]
    assert claim_values(claims, "realm_access.missing") == []
    assert claim_values(claims, "nothing") == []
    assert claim_values({"groups": {"not": "a list"}}, "groups") == []
    config = OidcConfig.build(issuer="https://idp.example/realms/x/", client_id="c", redirect_url=CALLBACK, roles=ROLES)
    assert config.issuer == "https://idp.example/realms/x"
    assert config.discovery_url == "https://idp.example/realms/x/.well-known/openid-configuration"
    assert config.user_of({"preferred_username": " olga ", "sub": "1"}) == "olga"
    assert config.user_of({"sub": "1"}) == "1"
    assert config.user_of({}) is None


OIDC_ENV = {
    "ESI_OIDC_ISSUER": "https://idp.example/realms/esi",
    "ESI_OIDC_CLIENT_ID": "esi-console",
    "ESI_OIDC_CLIENT_SECRET": "s3cret",
    "ESI_OIDC_REDIRECT_URL": "https://esi.example/console/auth/callback",
    "ESI_OIDC_ROLES": json.dumps(ROLES),
}


def _settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    monkeypatch.chdir(Path("/"))  # no .env
    for name in [*OIDC_ENV, "ESI_ENV", "ESI_CONSOLE_SECRET", "ESI_CONSOLE_COOKIE_SECURE", "ESI_CONSOLE_BASIC"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_settings_build_the_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(monkeypatch, {**OIDC_ENV, "ESI_CONSOLE_SESSION_LIFETIME": "30m"})
    config = oidc_from(settings)
    assert config is not None
    assert config.client_secret == "s3cret"
    assert config.roles.groups == {"esi-operators", "esi-viewers"}
    assert settings.console_session_lifetime_s == 1800
    sign_in = sign_in_from(settings)
    assert sign_in.oidc == config
    assert sign_in.basic is False
    assert sign_in.cookie_secure is True
    assert sign_in.session_lifetime_s == 1800
    without = sign_in_from(_settings_from(monkeypatch, {}))
    assert without.oidc is None
    assert without.basic is True
    assert sign_in_from(_settings_from(monkeypatch, {**OIDC_ENV, "ESI_CONSOLE_BASIC": "on"})).basic is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ESI_OIDC_ISSUER": "https://idp.example"}, "needs ESI_OIDC_CLIENT_ID, ESI_OIDC_REDIRECT_URL, ESI_OIDC_ROLES"),
        ({**OIDC_ENV, "ESI_OIDC_ROLES": '{"g": ["admin"]}'}, "unknown scope(s) admin"),
        ({**OIDC_ENV, "ESI_OIDC_REDIRECT_URL": "https://esi.example/elsewhere"}, "must be the console's callback"),
        ({**OIDC_ENV, "ESI_OIDC_ISSUER": "idp.example"}, "ESI_OIDC_ISSUER must be an http(s) URL"),
        ({**OIDC_ENV, "ESI_OIDC_SCOPES": "profile email"}, "must include openid"),
        ({**OIDC_ENV, "ESI_OIDC_GROUPS_CLAIM": "groups; drop"}, "ESI_OIDC_GROUPS_CLAIM must be a claim's name"),
        ({**OIDC_ENV, "ESI_CONSOLE_SESSION_LIFETIME": "10s"}, "at least a minute"),
        ({"ESI_CONSOLE_BASIC": "off"}, "ESI_CONSOLE_BASIC=off needs single sign-on"),
        (
            {**OIDC_ENV, "ESI_ENV": "production", "ESI_OIDC_ISSUER": "http://idp.example"},
            "ESI_ENV=production: ESI_OIDC_ISSUER must be https",
        ),
        (
            {**OIDC_ENV, "ESI_ENV": "production", "ESI_CONSOLE_COOKIE_SECURE": "false", "ESI_CONSOLE_SECRET": "x" * 40},
            "refuses ESI_CONSOLE_COOKIE_SECURE=false",
        ),
        ({**OIDC_ENV, "ESI_ENV": "production"}, "set ESI_CONSOLE_SECRET"),
        ({**OIDC_ENV, "ESI_ENV": "production", "ESI_CONSOLE_SECRET": "change-me"}, "at least 32 characters"),
        ({**OIDC_ENV, "ESI_ENV": "production", "ESI_CONSOLE_SECRET": "ab" * 20}, "a demo or example value"),
    ],
)
def test_bad_sign_in_settings_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):  # SettingsError is a ValueError, as pydantic's
        oidc_from(_settings_from(monkeypatch, env))


def test_production_takes_a_real_session_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "Zq3v8W1xYk2Lp9Rt6Nm4Bc7Hd5Fg0Js+Ua=="
    settings = _settings_from(monkeypatch, {**OIDC_ENV, "ESI_ENV": "production", "ESI_CONSOLE_SECRET": key})
    assert oidc_from(settings) is not None
    assert session_key_problem(key.encode()) is None
    assert session_key_problem(b"browser-test-console-secret") is not None


def test_config_check_names_an_incomplete_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from esi.cli.config import _load

    _settings_from(monkeypatch, {"ESI_OIDC_ISSUER": "https://idp.example", "ESI_OIDC_CLIENT_ID": "esi"})
    loaded, problems = _load(Settings)
    assert loaded is not None
    assert [str(p) for p in problems] == ["ESI_OIDC_*: single sign-on needs ESI_OIDC_REDIRECT_URL, ESI_OIDC_ROLES"]
