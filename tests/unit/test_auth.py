"""Authentication and scopes of the HTTP API's clients (esi.security.auth)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
from fastapi import Depends, FastAPI

from esi.api.auth import principal_dependency
from esi.api.errors import ApiError, install_error_handlers
from esi.security import (
    DEMO_CLIENT_ID,
    DEMO_PASSWORD,
    ClientConfig,
    ClientRegistry,
    ClientsConfigError,
    Principal,
    SendScope,
    auth,
    demo_registry,
    generate_api_key,
    hash_secret,
    is_demo_registry,
    load_clients,
    make_client_entry,
    require_operator,
    require_read,
    require_send,
)
from esi.security.clients import read_clients_file
from esi.security.quota import DEFAULT_QUOTA
from esi.systems.registry import load_registry

#: cheap argon2 parameters for tests that do not measure time (the production default costs ~0.3 s a verify)
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

ERP_PASSWORD = "Пароль-1С-очень-секретный"  # 1C users type Cyrillic passwords
OPS_KEY = "ops.k3y-with-enough-entropy-0123456789abcdef"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def entries() -> list[dict[str, Any]]:
    return [
        make_client_entry("1c-erp", password=ERP_PASSWORD, send=["dms:create_user", "crm:*"], read=True, hasher=FAST),
        make_client_entry("ops", api_key=OPS_KEY, send=[], read=False, operator=True, hasher=FAST),
    ]


@pytest.fixture
def registry() -> ClientRegistry:
    return ClientRegistry.from_json(json.dumps({"clients": entries()}))


class CountingRegistry(ClientRegistry):
    """Counts argon2 verifications."""

    checks = 0

    def _check(self, encoded_hash: str, secret: str) -> bool:
        type(self).checks += 1
        return super()._check(encoded_hash, secret)


@pytest.fixture
def counting() -> type[CountingRegistry]:
    CountingRegistry.checks = 0
    return CountingRegistry


def assert_401(exc: pytest.ExceptionInfo[ApiError]) -> None:
    assert exc.value.status == 401
    assert exc.value.code == "unauthorized"
    assert exc.value.headers == {"WWW-Authenticate": 'Basic realm="esi"'}


# --- authenticating -------------------------------------------------------------------------------------------------


def test_basic_authentication_gives_the_clients_principal(registry: ClientRegistry) -> None:
    principal = registry.authenticate(basic("1c-erp", ERP_PASSWORD), None)
    assert principal.client_id == "1c-erp"
    assert principal.can_read
    assert not principal.is_operator
    assert principal.can_send("dms", "create_user")
    assert principal.can_send("crm", "send_pdf_file")
    assert not principal.can_send("dms", "get_policy_info")


def test_an_api_key_authenticates_alone(registry: ClientRegistry) -> None:
    principal = registry.authenticate(None, OPS_KEY)
    assert principal.client_id == "ops"
    assert principal.is_operator
    assert not principal.can_read
    # the API key wins over a (wrong) Authorization header
    assert registry.authenticate(basic("1c-erp", "wrong"), OPS_KEY).client_id == "ops"


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [
        (basic("1c-erp", "wrong password"), None),
        (basic("1c-erp", ERP_PASSWORD.upper()), None),
        (basic("nobody", ERP_PASSWORD), None),
        (basic("ops", OPS_KEY), None),  # ops has no password: a key is not a password
        (None, "ops.wrong-key"),
        (None, "1c-erp." + ERP_PASSWORD),  # a password is not an API key
        (None, "nobody.secret"),
        (None, "no-dot-in-this-key"),
        ("Bearer abc.def", None),
        ("Basic !!!not-base64!!!", None),
        ("Basic " + base64.b64encode(b"no colon").decode(), None),
    ],
)
def test_wrong_credentials_are_401(registry: ClientRegistry, authorization: str | None, api_key: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        registry.authenticate(authorization, api_key)
    assert_401(caught)
    assert caught.value.message == "invalid credentials"


@pytest.mark.parametrize(("authorization", "api_key"), [(None, None), ("", ""), ("  ", None), (None, "  ")])
def test_missing_credentials_are_401(registry: ClientRegistry, authorization: str | None, api_key: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        registry.authenticate(authorization, api_key)
    assert_401(caught)
    assert "authentication required" in caught.value.message


def test_an_unknown_client_costs_one_argon2_run_like_a_wrong_password(counting: type[CountingRegistry]) -> None:
    registry = counting.from_json(json.dumps(entries()))
    for authorization, api_key in [
        (basic("1c-erp", "wrong"), None),
        (basic("nobody", "x"), None),
        (basic("ops", "x"), None),
        (None, "nobody.x"),
        (None, "ops.x"),
    ]:
        before = counting.checks
        with pytest.raises(ApiError):
            registry.authenticate(authorization, api_key)
        assert counting.checks - before == 1, (authorization, api_key)
    # without a client id there is nothing to enumerate: refused without hashing
    for authorization, api_key in [(None, "malformed"), ("Bearer x", None), ("Basic %%%", None), (None, None)]:
        before = counting.checks
        with pytest.raises(ApiError):
            registry.authenticate(authorization, api_key)
        assert counting.checks == before, (authorization, api_key)


def test_a_client_with_rotated_keys_fails_in_as_many_runs_as_an_unknown_one(counting: type[CountingRegistry]) -> None:
    rotated = make_client_entry("ops", api_key=OPS_KEY, operator=True, hasher=FAST)
    rotated["api_key_hashes"].append(hash_secret("ops.the-next-key", hasher=FAST))
    registry = counting.from_json(json.dumps([rotated, entries()[0]]))
    assert registry.authenticate(None, "ops.the-next-key").client_id == "ops"
    for api_key in ("ops.wrong", "1c-erp.wrong", "nobody.wrong"):
        before = counting.checks
        with pytest.raises(ApiError):
            registry.authenticate(None, api_key)
        assert counting.checks - before == 2, api_key


async def test_authenticate_async(registry: ClientRegistry) -> None:
    principal = await registry.authenticate_async(basic("1c-erp", ERP_PASSWORD), None, remote="10.0.0.1:5555")
    assert principal.client_id == "1c-erp"
    with pytest.raises(ApiError) as caught:
        await registry.authenticate_async(basic("1c-erp", "nope"), None)
    assert_401(caught)


# --- through FastAPI: the JSON error shape --------------------------------------------------------------------------


def make_app(registry: ClientRegistry) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    current = principal_dependency(registry)

    @app.post("/requests/{target}/{message_type}")
    async def send(target: str, message_type: str, principal: Principal = Depends(current)) -> dict[str, str]:
        require_send(principal, target, message_type)
        return {"client": principal.client_id}

    @app.get("/dlq")
    async def dlq(principal: Principal = Depends(current)) -> dict[str, str]:
        require_operator(principal)
        return {"client": principal.client_id}

    return app


async def test_the_api_answers_401_and_403_in_its_json_shape(registry: ClientRegistry) -> None:
    transport = httpx.ASGITransport(app=make_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://esi") as client:
        r = await client.post("/requests/dms/create_user", auth=("1c-erp", ERP_PASSWORD))
        assert r.status_code == 200
        assert r.json() == {"client": "1c-erp"}
        r = await client.post("/requests/dms/create_user", headers={"X-API-Key": OPS_KEY})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
        assert "ops" in r.json()["error"]["message"]
        r = await client.get("/dlq", headers={"X-API-Key": OPS_KEY})
        assert r.status_code == 200
        r = await client.get("/dlq", auth=("1c-erp", ERP_PASSWORD))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
        for kwargs in (
            {},
            {"auth": ("1c-erp", "wrong")},
            {"headers": {"Authorization": "Basic %%%"}},
            {"headers": {"X-API-Key": "ops.wrong"}},
        ):
            r = await client.post("/requests/dms/create_user", **kwargs)
            assert r.status_code == 401, kwargs
            assert r.headers["www-authenticate"] == 'Basic realm="esi"'
            body = r.json()
            assert body["error"]["code"] == "unauthorized"
            assert isinstance(body["error"]["message"], str)
        schema = (await client.get("/openapi.json")).json()
        schemes = schema["components"]["securitySchemes"]
        assert schemes["basic"] == {"type": "http", "scheme": "basic", "description": "the client id and its password"}
        assert schemes["apiKey"]["in"] == "header"
        assert schemes["apiKey"]["name"] == "X-API-Key"


# --- scopes ---------------------------------------------------------------------------------------------------------


def test_scopes_and_the_403_helpers() -> None:
    principal = Principal("erp", (SendScope.parse("DMS:Create_User"), SendScope.parse("crm:*")), can_read=True)
    assert principal.can_send("dms", "create_user")
    assert principal.can_send(" DMS ", "CREATE_USER")
    assert principal.can_send("crm", "update_order_status")
    assert principal.can_send("crm", "send_pdf_file")
    assert not principal.can_send("dms", "get_policy_info")
    require_send(principal, "crm", "send_pdf_file")
    with pytest.raises(ApiError) as caught:
        require_send(principal, "dms", "get_policy_info")
    assert caught.value.status == 403
    assert caught.value.code == "forbidden"
    assert "'erp'" in caught.value.message
    assert "get_policy_info" in caught.value.message

    everything = Principal("all", (SendScope.parse("*"),))
    assert everything.can_send("dms", "get_policy_info")
    assert everything.can_send("crm", "update_order_status")
    typed = Principal("typed", (SendScope.parse("*:create_user"),))
    assert typed.can_send("dms", "create_user")
    assert not typed.can_send("crm", "send_pdf_file")
    assert not Principal("none").can_send("dms", "create_user")

    with pytest.raises(ApiError) as caught:
        require_operator(principal)
    assert caught.value.status == 403
    require_operator(Principal("ops", is_operator=True))


def test_a_client_reads_only_the_requests_it_sent() -> None:
    reader = Principal("erp", can_read=True)
    require_read(reader, "R1", "erp")
    for owner in ("other", None, "erp2", "er"):
        with pytest.raises(ApiError) as caught:
            require_read(reader, "R1", owner)
        # another client's request is answered exactly like an unknown one
        assert caught.value.status == 404
        assert caught.value.code == "unknown_request"
        assert caught.value.message == "no request with request_id 'R1'"
    with pytest.raises(ApiError) as caught:
        require_read(Principal("erp", can_read=False), "R1", "erp")
    assert caught.value.status == 403
    assert caught.value.code == "forbidden"


@pytest.mark.parametrize(
    ("scope", "problem"),
    [
        ("dms", "must be"),
        ("dms:create_user:x", "must be"),
        ("hr:*", "unknown target"),
        ("1c:*", "unknown target"),
        ("dms:send_pdf_file", "not a request of"),
        ("crm:user_created", "not a request of"),
        ("*:no_such_type", "not a request of"),
        ("dms:*.x", "must be"),
        (7, "must be a string"),
    ],
)
def test_unknown_or_malformed_scopes_are_refused_when_loading(scope: Any, problem: str) -> None:
    entry = make_client_entry("erp", password="p", hasher=FAST)
    entry["send"] = [scope]
    with pytest.raises(ClientsConfigError, match=problem):  # checked against the catalog it is given (start-up's)
        ClientRegistry.from_json(json.dumps([entry]), catalog=load_registry().catalog)


# --- the clients file: hashes only ----------------------------------------------------------------------------------


def test_the_clients_file_holds_hashes_only(tmp_path: Path) -> None:
    key = generate_api_key("erp")
    assert key.startswith("erp.")
    assert len(key) > 40
    entry = make_client_entry("erp", password=ERP_PASSWORD, api_key=key, send=["dms:*"], hasher=FAST)
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [entry]}, ensure_ascii=False), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert ERP_PASSWORD not in text
    assert key not in text
    assert key.split(".", 1)[1] not in text
    assert entry["password_hash"].startswith("$argon2id$")
    assert entry["api_key_hashes"][0].startswith("$argon2id$")
    assert entry == {
        "id": "erp",
        "password_hash": entry["password_hash"],
        "api_key_hashes": entry["api_key_hashes"],
        "send": ["dms:*"],
        "read": True,
        "operator": False,
        # the quota, written out with its defaults (esi.security.quota)
        "rate": {"per_second": 200, "burst": 400},
        "in_flight": 256,
    }
    registry = ClientRegistry.from_file(path)
    assert registry.authenticate(basic("erp", ERP_PASSWORD), None).client_id == "erp"
    assert registry.authenticate(None, key).client_id == "erp"


def test_a_toml_clients_file(tmp_path: Path) -> None:
    entry = make_client_entry("erp", password="p", send=["crm:update_order_status"], read=False, hasher=FAST)
    path = tmp_path / "clients.toml"
    path.write_text(f"""
[[clients]]
id = "erp"
password_hash = "{entry["password_hash"]}"
send = ["crm:update_order_status"]
operator = true
""")
    principal = ClientRegistry.from_file(path).authenticate(basic("erp", "p"), None)
    assert principal == Principal(
        "erp", (SendScope("crm", "update_order_status"),), can_read=False, is_operator=True, quota=DEFAULT_QUOTA
    )


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda e: e.update(password="p"), "in clear"),
        (lambda e: e.update(api_key="erp.k"), "in clear"),
        (lambda e: e.update(password_hash="p"), "not an argon2 hash"),
        (lambda e: e.update(password_hash="$argon2id$garbage"), "not a well-formed"),
        (lambda e: e.update(api_key_hashes=["plain-key"]), "not an argon2 hash"),
        (lambda e: e.pop("password_hash"), "needs a password_hash"),
        (lambda e: e.update(id="has:colon"), "client id"),
        (lambda e: e.update(id="has.dot"), "client id"),
        (lambda e: e.update(reed=True), "unknown keys"),
        (lambda e: e.update(read="yes"), "read must be"),
        (lambda e: e.update(send="dms:*"), "send must be a list"),
    ],
)
def test_malformed_or_plaintext_entries_are_refused(mutate: Any, problem: str) -> None:
    entry = make_client_entry("erp", password="p", hasher=FAST)
    mutate(entry)
    with pytest.raises(ClientsConfigError, match=problem) as caught:
        ClientRegistry.from_json(json.dumps({"clients": [entry]}))
    assert "'p'" not in str(caught.value)


def test_file_level_errors(tmp_path: Path) -> None:
    entry = make_client_entry("erp", password="p", hasher=FAST)
    with pytest.raises(ClientsConfigError, match="twice"):
        ClientRegistry.from_json(json.dumps([entry, entry]))
    with pytest.raises(ClientsConfigError, match="no clients"):
        ClientRegistry.from_json('{"clients": []}')
    with pytest.raises(ClientsConfigError, match="not valid JSON"):
        ClientRegistry.from_json("{")
    with pytest.raises(ClientsConfigError, match="unknown top-level"):
        ClientRegistry.from_json(json.dumps({"clients": [entry], "users": []}))
    with pytest.raises(ClientsConfigError, match="cannot read"):
        ClientRegistry.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="password, an API key"):
        make_client_entry("erp")
    with pytest.raises(ValueError, match=r"erp.<secret>"):
        make_client_entry("erp", api_key="not-prefixed-key", hasher=FAST)


# --- logs -----------------------------------------------------------------------------------------------------------


def test_failures_are_logged_without_the_secret(registry: ClientRegistry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    attempts = [
        (basic("1c-erp", "hunter2-typo"), None, ["hunter2-typo"]),
        (basic("ghost", "ghost-secret"), None, ["ghost-secret"]),
        (None, "ops.leaked-key-value", ["leaked-key-value"]),
        ("Basic " + base64.b64encode(b"no-colon-secret").decode(), None, ["no-colon-secret"]),
        ("Bearer bearer-token-value", None, ["bearer-token-value"]),
    ]
    for authorization, api_key, secrets in attempts:
        caplog.clear()
        with pytest.raises(ApiError):
            registry.authenticate(authorization, api_key, remote="192.0.2.7:40000")
        records = [r for r in caplog.records if r.name == "esi.security.auth"]
        assert records
        assert records[-1].levelno == logging.WARNING
        text = caplog.text
        for secret in secrets:
            assert secret not in text
        if authorization:
            assert authorization.split(" ", 1)[1] not in text  # nor the header that carries it
        assert "192.0.2.7:40000" in text
    caplog.clear()
    with pytest.raises(ApiError):
        registry.authenticate(basic("1c-erp", "hunter2-typo"), None, remote="192.0.2.7:40000")
    assert "'1c-erp'" in caplog.text
    assert "wrong password" in caplog.text
    record = next(r for r in caplog.records if r.name == "esi.security.auth")
    assert isinstance(record.args, tuple)
    assert "%s" in record.msg


def test_a_client_id_cannot_forge_log_lines(registry: ClientRegistry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="esi.security.auth")
    with pytest.raises(ApiError):
        registry.authenticate(basic("evil\nauthentication succeeded for admin", "x"), None)
    assert "\nauthentication succeeded" not in caplog.text
    assert "\\n" in caplog.text


# --- demo credentials -----------------------------------------------------------------------------------------------


def test_demo_credentials_are_detected_and_refused_in_production(tmp_path: Path) -> None:
    demo = demo_registry()
    principal = demo.authenticate(basic(DEMO_CLIENT_ID, DEMO_PASSWORD), None)
    assert principal.client_id == "demo"
    assert principal.is_operator
    assert principal.can_read
    assert principal.can_send("dms", "get_policy_info")
    assert is_demo_registry(demo)

    good = ClientRegistry.from_json(json.dumps(entries()))
    assert not is_demo_registry(good)
    sneaky = ClientRegistry.from_json(json.dumps([make_client_entry("erp", password=DEMO_PASSWORD, hasher=FAST)]))
    assert is_demo_registry(sneaky)
    named = ClientRegistry.from_json(json.dumps([make_client_entry("demo", password="long-unguessable", hasher=FAST)]))
    assert is_demo_registry(named)

    assert load_clients(production=False).demo
    with pytest.raises(ClientsConfigError, match="production needs"):
        load_clients(production=True)
    with pytest.raises(ClientsConfigError, match="refuses demo credentials"):
        load_clients(production=True, clients_json=json.dumps([make_client_entry("erp", password="demo", hasher=FAST)]))
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(entries()))
    assert load_clients(production=True, clients_file=str(path)).client_ids == ["1c-erp", "ops"]
    assert load_clients(production=True, clients_json=json.dumps(entries())).client_ids == ["1c-erp", "ops"]
    with pytest.raises(ClientsConfigError, match="not both"):
        load_clients(production=False, clients_file=str(path), clients_json="[]")


# --- the verification cache -----------------------------------------------------------------------------------------


def test_a_second_authentication_skips_argon2() -> None:
    # production's argon2 parameters: the first verification is deliberately slow
    entry = make_client_entry("erp", password=ERP_PASSWORD, send=["dms:*"])
    registry = ClientRegistry([ClientConfig.from_entry(entry)])
    header = basic("erp", ERP_PASSWORD)
    started = time.perf_counter()
    registry.authenticate(header, None)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(100):
        registry.authenticate(header, None)
    hundred_more = time.perf_counter() - started
    assert first > 0.02
    assert hundred_more < first, (first, hundred_more)


def test_the_cache_never_accepts_what_argon2_did_not(counting: type[CountingRegistry]) -> None:
    registry = counting([ClientConfig.from_entry(e) for e in entries()])
    registry.authenticate(basic("1c-erp", ERP_PASSWORD), None)
    registry.authenticate(basic("1c-erp", ERP_PASSWORD), None)
    registry.authenticate(None, OPS_KEY)
    registry.authenticate(None, OPS_KEY)
    assert counting.checks == 2
    for _ in range(3):  # a wrong secret pays argon2 every time
        with pytest.raises(ApiError):
            registry.authenticate(basic("1c-erp", ERP_PASSWORD + "x"), None)
    assert counting.checks == 5
    # the cached password of one client does not open another, nor the API-key door
    with pytest.raises(ApiError):
        registry.authenticate(basic("ops", ERP_PASSWORD), None)
    with pytest.raises(ApiError):
        registry.authenticate(None, "1c-erp." + ERP_PASSWORD)


def test_a_changed_password_invalidates_the_cache(counting: type[CountingRegistry], tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(entries()))
    registry = counting.from_file(path)
    old = basic("1c-erp", ERP_PASSWORD)
    registry.authenticate(old, None)
    registry.authenticate(None, OPS_KEY)
    checks = counting.checks

    changed = json.loads(path.read_text())
    changed[0] = make_client_entry("1c-erp", password="the-new-password", send=["dms:*"], hasher=FAST)
    path.write_text(json.dumps(changed))
    registry.set_clients(read_clients_file(path))
    with pytest.raises(ApiError) as caught:
        registry.authenticate(old, None)
    assert_401(caught)
    assert registry.authenticate(basic("1c-erp", "the-new-password"), None).can_send("dms", "get_policy_info")
    # an unchanged client keeps its cached verification across the reload
    checks = counting.checks
    registry.authenticate(None, OPS_KEY)
    assert counting.checks == checks

    # a removed client is refused at once too
    registry.set_clients([ClientConfig.from_entry(changed[0])])
    with pytest.raises(ApiError):
        registry.authenticate(None, OPS_KEY)


def test_cached_verifications_expire(counting: type[CountingRegistry], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    registry = counting([ClientConfig.from_entry(e) for e in entries()], cache_ttl=30)
    header = basic("1c-erp", ERP_PASSWORD)
    registry.authenticate(header, None)
    now[0] += 29
    registry.authenticate(header, None)
    assert counting.checks == 1
    now[0] += 2
    registry.authenticate(header, None)
    assert counting.checks == 2
    uncached = counting([ClientConfig.from_entry(e) for e in entries()], cache_ttl=0)
    uncached.authenticate(header, None)
    uncached.authenticate(header, None)
    assert counting.checks == 4


def test_the_cache_is_bounded(counting: type[CountingRegistry]) -> None:
    keys = [generate_api_key("ops") for _ in range(3)]
    entry = make_client_entry("ops", api_key=keys[0], operator=True, hasher=FAST)
    entry["api_key_hashes"] += [hash_secret(k, hasher=FAST) for k in keys[1:]]
    registry = counting([ClientConfig.from_entry(entry)], cache_size=2)
    for key in keys:
        registry.authenticate(None, key)
    assert len(registry._cache) == 2


class _Clock:
    """Stands in for the `time` module in `esi.security.auth` only (the event loop keeps the real one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_concurrent_requests_with_the_same_credentials_share_one_argon2_run(
    counting: type[CountingRegistry],
) -> None:
    """An expired (or empty) cache under load: one verification for all, not one per request."""
    registry = counting([ClientConfig.from_entry(e) for e in entries()])
    good, wrong = basic("1c-erp", ERP_PASSWORD), basic("1c-erp", "not-it")
    callers = [asyncio.create_task(registry.authenticate_async(good, None)) for _ in range(40)]
    await asyncio.sleep(0)  # one turn of the loop: every caller is waiting on the verification
    assert len(registry._pending) == 1
    callers[0].cancel()  # a caller that goes away does not take the verification from the others
    done = await asyncio.gather(*callers[1:])
    assert all(p.client_id == "1c-erp" for p in done)
    assert counting.checks == 1
    assert callers[0].cancelled()

    refused = await asyncio.gather(
        *(registry.authenticate_async(wrong, None) for _ in range(40)), return_exceptions=True
    )
    assert all(isinstance(r, ApiError) and r.status == 401 for r in refused)
    assert counting.checks == 2  # the same wrong guess, at once: one run; another guess would be another run
    with pytest.raises(ApiError):
        await registry.authenticate_async(wrong, None)
    assert counting.checks == 3
    assert not registry._pending

    uncached = counting([ClientConfig.from_entry(e) for e in entries()], cache_ttl=0)  # no cache: shared all the same
    await asyncio.gather(*(uncached.authenticate_async(good, None) for _ in range(10)))
    await uncached.authenticate_async(good, None)
    assert counting.checks == 5


async def _verified_once(
    counting: type[CountingRegistry], monkeypatch: pytest.MonkeyPatch
) -> tuple[_Clock, ClientRegistry, str]:
    """A registry with a 60 s cache on a clock of the test's own, and 1c-erp's credentials verified once."""
    clock = _Clock()
    monkeypatch.setattr(auth, "time", clock)
    registry = counting([ClientConfig.from_entry(e) for e in entries()], cache_ttl=60)
    header = basic("1c-erp", ERP_PASSWORD)
    await registry.authenticate_async(header, None)
    return clock, registry, header


async def test_a_renewal_that_fails_unexpectedly_is_logged(
    counting: type[CountingRegistry],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, registry, header = await _verified_once(counting, monkeypatch)

    def broken(self: ClientRegistry, encoded_hash: str, secret: str) -> bool:
        raise MemoryError("argon2 could not allocate")

    monkeypatch.setattr(counting, "_check", broken)
    clock.now += 55
    assert (await registry.authenticate_async(header, None)).client_id == "1c-erp"  # answered from the cache
    with caplog.at_level(logging.WARNING, logger="esi.security.auth"):
        await asyncio.gather(*registry._pending.values(), return_exceptions=True)
    assert "MemoryError: argon2 could not allocate" in caplog.text


async def test_a_verification_in_use_is_renewed_before_it_expires(
    counting: type[CountingRegistry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, registry, header = await _verified_once(counting, monkeypatch)
    clock.now += 45  # 15 s left: not yet due
    await registry.authenticate_async(header, None)
    assert counting.checks == 1
    assert not registry._pending

    clock.now += 6  # 9 s left, under a sixth of the TTL: answered from the cache, renewed behind it
    principal = await registry.authenticate_async(header, None)
    assert principal.client_id == "1c-erp"
    assert len(registry._pending) == 1
    await asyncio.gather(*registry._pending.values())
    assert counting.checks == 2

    clock.now += 30  # past the first verification's TTL, within the renewal's: no argon2 on the request's path
    await registry.authenticate_async(header, None)
    assert counting.checks == 2
    assert not registry._pending

    # the password changed: the old secret is refused at once, renewed or not
    registry.set_clients(
        [ClientConfig.from_entry(make_client_entry("1c-erp", password="new-one", send=["dms:*"], hasher=FAST))]
    )
    with pytest.raises(ApiError):
        await registry.authenticate_async(header, None)
