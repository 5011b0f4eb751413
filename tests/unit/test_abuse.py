"""Hostile and runaway clients (issue 33): failed sign-ins throttled per (client id, address) before any hashing, and
a quota per client (rate, in flight) on the send routes — the fast path and FastAPI alike."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
from typer.testing import CliRunner

from esi import metrics
from esi.api.app import ApiDeps, create_app
from esi.api.errors import REFUSAL_HOLD_MIN_SHARE, REFUSAL_HOLD_S
from esi.errors import ApiError
from esi.security import ClientRegistry, ClientsConfigError, make_client_entry
from esi.security.clients import ClientConfig
from esi.security.quota import DEFAULT_QUOTA, UNLIMITED, Quota, QuotaLimiter
from esi.security.throttle import SignInThrottle, TrustedProxies
from esi.store import Store
from esi.systems.registry import load_registry
from tests.support import unique

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "Пароль-1С"
USER = {"user_id": "U1", "name": "Иван", "email": "ivan@example.com"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting(ClientRegistry):
    """Counts argon2 verifications (instance-wide)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.checks = 0
        super().__init__(*args, **kwargs)

    def _check(self, encoded_hash: str, secret: str) -> bool:
        self.checks += 1
        return super()._check(encoded_hash, secret)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def entries(**quota: Any) -> list[dict[str, Any]]:
    return [
        make_client_entry("erp", password=PASSWORD, send=["dms:*"], hasher=FAST, **quota),
        make_client_entry("other", password="other-pw", send=["dms:*"], hasher=FAST),
    ]


def registry(clock: Clock, *, max_failures: int = 5, window: float = 60, **quota: Any) -> Counting:
    throttle = SignInThrottle(max_failures=max_failures, window=window, clock=clock)
    return Counting([ClientConfig.from_entry(e) for e in entries(**quota)], throttle=throttle)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def refuse(reg: ClientRegistry, user: str, password: str, address: str = "10.0.0.1") -> ApiError:
    with pytest.raises(ApiError) as exc:
        reg.authenticate(basic(user, password), None, address=address)
    return exc.value


# --- throttling -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["erp", "nobody"])
def test_after_n_failures_a_pair_gets_429_without_any_hashing(user: str) -> None:
    clock = Clock()
    reg = registry(clock)
    for _ in range(5):
        assert refuse(reg, user, "wrong").status == 401
    assert reg.checks == 5  # one argon2 run each, for a known client and an unknown one alike
    clock.now += 10
    for password in ("wrong", "another", PASSWORD):  # a correct password too: no oracle
        error = refuse(reg, user, password)
        assert error.status == 429
        assert error.code == "sign_in_throttled"
        assert error.headers == {"Retry-After": "50"}
    assert reg.checks == 5  # not one more
    # another address, or another client id from the same address, is not affected
    assert reg.authenticate(basic("erp", PASSWORD), None, address="10.0.0.2").client_id == "erp"
    assert reg.authenticate(basic("other", "other-pw"), None, address="10.0.0.1").client_id == "other"


def test_the_window_passes_and_a_success_forgets_the_failures() -> None:
    clock = Clock()
    reg = registry(clock)
    for _ in range(5):
        refuse(reg, "erp", "wrong")
    clock.now += 59.5
    assert refuse(reg, "erp", PASSWORD).headers == {"Retry-After": "1"}
    clock.now += 0.5
    assert reg.authenticate(basic("erp", PASSWORD), None, address="10.0.0.1").client_id == "erp"
    # failures spread wider than the window never add up to a throttle
    reg2 = registry(clock)
    for _ in range(8):
        assert refuse(reg2, "nobody", "wrong").status == 401
        clock.now += 15  # four per window at most
    # 4 failures, then a success: the count starts again
    reg3 = registry(clock)
    for _ in range(4):
        refuse(reg3, "erp", "wrong")
    assert reg3.authenticate(basic("erp", PASSWORD), None, address="10.0.0.1").client_id == "erp"
    for _ in range(4):
        assert refuse(reg3, "erp", "wrong").status == 401


def test_unknown_and_known_ids_cost_the_same_and_are_throttled_alike() -> None:
    results = {}
    for user in ("erp", "nobody"):
        reg = registry(Clock())
        statuses = [refuse(reg, user, "wrong").status for _ in range(7)]
        results[user] = (statuses, reg.checks)
    assert results["erp"] == results["nobody"] == ([401] * 5 + [429] * 2, 5)


def test_one_log_line_and_one_event_per_pair_and_window(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    reg = registry(clock)
    throttled = sample("esi_auth_throttled_total")
    wrong = sample("esi_auth_failures_total", reason="wrong_secret")
    unknown = sample("esi_auth_failures_total", reason="unknown_client")
    for _ in range(30):
        refuse(reg, "erp", "wrong")
    lines = [r for r in caplog.records if "sign-in throttled" in r.getMessage()]
    assert len(lines) == 1
    assert "'erp'" in lines[0].getMessage()
    assert "10.0.0.1" in lines[0].getMessage()
    assert "wrong" not in lines[0].getMessage().replace("wrong_", "")
    events = reg.throttle_events()
    assert [(e.client_id, e.address, e.failures) for e in events] == [("erp", "10.0.0.1", 5)]
    assert reg.throttle_events() == []
    assert sample("esi_auth_throttled_total") - throttled == 25
    assert sample("esi_auth_failures_total", reason="wrong_secret") - wrong == 5
    refuse(reg, "nobody", "x")
    assert sample("esi_auth_failures_total", reason="unknown_client") - unknown == 1
    # the next window: one more line and event
    clock.now += 60
    for _ in range(10):
        refuse(reg, "erp", "wrong")
    assert len([r for r in caplog.records if "sign-in throttled" in r.getMessage()]) == 2
    assert len(reg.throttle_events()) == 1


async def test_concurrent_guesses_queued_behind_the_threshold_are_not_hashed() -> None:
    reg = registry(Clock())
    outcomes = await asyncio.gather(
        *(reg.authenticate_async(basic("erp", f"guess-{i}"), None, address="10.9.9.9") for i in range(40)),
        return_exceptions=True,
    )
    statuses = sorted(e.status for e in outcomes if isinstance(e, ApiError))
    assert len(statuses) == 40
    assert statuses.count(429) >= 40 - 5 - 2
    # the threshold, plus at most the verifications already running on the two worker threads
    assert reg.checks <= 5 + 2


def test_the_throttle_map_is_bounded() -> None:
    throttle = SignInThrottle(max_failures=2, max_entries=100)
    for i in range(1000):
        throttle.failed("nobody", f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100


@pytest.mark.parametrize(
    ("proxies", "peer", "header", "source"),
    [
        ([], "10.0.0.1", "1.2.3.4", "10.0.0.1"),  # no trusted proxy: the header is ignored
        (["10.0.0.1"], "10.0.0.2", "1.2.3.4", "10.0.0.2"),  # not from a trusted proxy
        (["10.0.0.1"], "10.0.0.1", "1.2.3.4", "1.2.3.4"),
        (["10.0.0.0/8"], "10.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.1.1", "1.2.3.4"),  # the left part is the client's
        (["10.0.0.0/8"], "10.0.0.1", None, "10.0.0.1"),
        (["10.0.0.0/8"], "10.0.0.1", "junk", "10.0.0.1"),
        (["::1", "127.0.0.0/8"], "::1", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    proxies: list[str], peer: str, header: str | None, source: str
) -> None:
    assert TrustedProxies(proxies).source(peer, header) == source


def test_a_malformed_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        TrustedProxies(["10.0.0.0/33"])


# --- quotas: the clients file and the limiter ---------------------------------------------------------------------


def test_quotas_in_the_clients_file() -> None:
    entry = make_client_entry("erp", password="p", hasher=FAST)
    assert (entry["rate"], entry["in_flight"]) == ({"per_second": 200, "burst": 400}, 256)
    assert ClientConfig.from_entry(entry).quota == DEFAULT_QUOTA
    entry = make_client_entry("erp", password="p", rate=50, in_flight=8, hasher=FAST)
    assert ClientConfig.from_entry(entry).quota == Quota(50, 100, 8)
    entry = make_client_entry("erp", password="p", rate="unlimited", in_flight="unlimited", hasher=FAST)
    assert ClientConfig.from_entry(entry).quota == UNLIMITED
    bare = {k: v for k, v in entry.items() if k not in ("rate", "in_flight")}
    assert ClientConfig.from_entry(bare).quota == DEFAULT_QUOTA
    assert ClientConfig.from_entry({**bare, "rate": 10}).quota == Quota(10, 20, 256)
    assert ClientConfig.from_entry({**bare, "rate": {"per_second": 0.5, "burst": 3}}).quota == Quota(0.5, 3, 256)
    for bad, problem in (
        ({"rate": 0}, "rate must be"),
        ({"rate": "fast"}, "rate must be"),
        ({"rate": {"per_second": 5, "bust": 3}}, "rate must be"),
        ({"in_flight": 1.5}, "in_flight must be"),
        ({"in_flight": True}, "in_flight must be"),
    ):
        with pytest.raises(ClientsConfigError, match=problem):
            ClientConfig.from_entry({**bare, **bad})
    with pytest.raises(ClientsConfigError):
        make_client_entry("erp", password="p", rate=-1, hasher=FAST)


def test_the_cli_writes_the_quota(tmp_path: Path) -> None:
    from esi.cli import app

    path = tmp_path / "clients.json"
    result = CliRunner().invoke(
        app,
        ["clients", "add", "night", "--send", "dms:*", "--rate", "20", "--in-flight", "unlimited", "--file", str(path)],
        input="pw-night\npw-night\n",
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(path.read_text())["clients"]
    assert (entry["rate"], entry["in_flight"]) == ({"per_second": 20, "burst": 40}, "unlimited")
    result = CliRunner().invoke(app, ["clients", "add", "x", "--rate", "lots"], input="p\np\n")
    assert result.exit_code != 0
    # Creatio's business process and 1C's feed job: the scopes events:crm and feed:1c
    hooks = ["clients", "add", "creatio", "--events", "crm", "--feeds", "1C", "--file", str(path)]
    assert CliRunner().invoke(app, hooks, input="pw-c\npw-c\n").exit_code == 0
    creatio = next(c for c in json.loads(path.read_text())["clients"] if c["id"] == "creatio")
    assert (creatio["events"], creatio["feeds"]) == (["crm"], ["1c"])


def test_the_rate_is_a_token_bucket_with_a_burst_shared_among_replicas() -> None:
    clock = Clock()
    limiter = QuotaLimiter(clock=clock)
    quota = Quota(rate=10, burst=20, in_flight=None)

    def admitted(n: int, limiter: QuotaLimiter = limiter) -> int:
        count, refusals = 0, []
        for _ in range(n):
            try:
                with limiter.admit("erp", quota):
                    count += 1
            except ApiError as exc:
                refusals.append((exc.status, (exc.details or [{}])[0].get("quota")))
        assert refusals == [(429, "rate")] * (n - count)
        return count

    assert admitted(50) == 20  # the burst
    clock.now += 1
    assert admitted(50) == 10  # then the rate
    clock.now += 100
    assert admitted(50) == 20  # the bucket holds no more than the burst
    two = QuotaLimiter(replicas=2, clock=clock)
    assert admitted(50, two) == 10
    clock.now += 1
    assert admitted(50, two) == 5
    unlimited = QuotaLimiter(clock=clock)
    for _ in range(1000):
        with unlimited.admit("trusted", UNLIMITED):
            pass


def test_in_flight_counts_until_the_request_is_answered() -> None:
    limiter = QuotaLimiter()
    quota = Quota(rate=None, burst=None, in_flight=2)
    with limiter.admit("erp", quota), limiter.admit("erp", quota):
        with pytest.raises(ApiError) as exc, limiter.admit("erp", quota):
            pass
        assert exc.value.headers == {"Retry-After": "1"}
        assert exc.value.details == [
            {"quota": "in_flight", "limit": 2, "replica_limit": 2, "in_flight": 2, "replicas": 1, "retry_after_s": 1}
        ]
        assert limiter.in_flight("erp") == 2
    with pytest.raises(RuntimeError), limiter.admit("erp", quota):
        raise RuntimeError("a failing handler is released too")
    assert limiter.in_flight("erp") == 0


# --- through the API ----------------------------------------------------------------------------------------------


@dataclass
class Api:
    store: Store
    registry: Counting
    clock: Clock
    deps: ApiDeps
    app: Any = None

    def client(self, peer: str = "10.0.0.1", *, hot: bool = True) -> httpx.AsyncClient:
        self.deps.hot_path = hot
        app = self.app = create_app(self.deps)
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://esi")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = Clock()
    async with await Store.open(f"sqlite:///{tmp_path}/abuse.db") as store:
        reg = registry(clock, max_failures=3, rate=2, burst=3)
        deps = ApiDeps(
            registry=load_registry(),
            store=store,
            on_accepted=lambda row: None,
            max_pdf_bytes=1024,
            clients=reg,
            trusted_proxies=("10.0.0.100",),
            quotas=QuotaLimiter(clock=clock),
            max_wait=5,
        )
        yield Api(store, reg, clock, deps)


@pytest.mark.parametrize("hot", [True, False], ids=["fast-path", "fastapi"])
async def test_a_request_over_quota_is_429_not_stored_and_its_retry_is_accepted(api: Api, hot: bool) -> None:
    refused = sample("esi_quota_refused_total", client="erp", quota="rate")
    async with api.client(hot=hot) as client:
        for _ in range(3):  # the burst
            r = await client.post("/send_to_dms", json={**USER, "request_id": unique("Q")}, auth=("erp", PASSWORD))
            assert r.status_code == 202, r.text
        request_id = unique("over")
        for path in ("/send_to_dms", "/requests/dms/create_user"):
            r = await client.post(path, json={**USER, "request_id": request_id}, auth=("erp", PASSWORD))
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"] == "1"
            error = r.json()["error"]
            assert error["code"] == "quota_exceeded"
            assert "same request_id" in error["message"]
            assert error["details"] == [
                {
                    "quota": "rate",
                    "limit": 2.0,
                    "burst": 3,
                    "replica_limit": 2.0,
                    "replica_burst": 3,
                    "replicas": 1,
                    "retry_after_s": 1,
                }
            ]
        assert await api.store.requests.get(request_id) is None  # nothing stored
        # another client is not limited by this one's quota
        r = await client.post("/send_to_dms", json={**USER, "request_id": unique("O")}, auth=("other", "other-pw"))
        assert r.status_code == 202
        api.clock.now += 1
        r = await client.post("/send_to_dms", json={**USER, "request_id": request_id}, auth=("erp", PASSWORD))
        assert r.status_code == 202, r.text
        assert "X-Esi-Duplicate" not in r.headers  # a first attempt, not a duplicate
    assert (await api.store.requests.get(request_id)) is not None
    assert sample("esi_quota_refused_total", client="erp", quota="rate") - refused == 2


async def test_in_flight_quota_with_prefer_wait(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.registry.set_clients([ClientConfig.from_entry(e) for e in entries(rate="unlimited", in_flight=1)])
    entered, release = asyncio.Event(), asyncio.Event()
    wait_settled = api.store.requests.wait_settled

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await wait_settled(*args, **kwargs)

    monkeypatch.setattr(api.store.requests, "wait_settled", held)
    async with api.client() as client:
        first = asyncio.create_task(
            client.post(
                "/send_to_dms",
                json={**USER, "request_id": unique("W1")},
                auth=("erp", PASSWORD),
                headers={"Prefer": "wait=1"},
            )
        )
        await asyncio.wait_for(entered.wait(), 10)
        request_id = unique("W2")
        r = await client.post("/send_to_dms", json={**USER, "request_id": request_id}, auth=("erp", PASSWORD))
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["details"][0]["quota"] == "in_flight"
        assert await api.store.requests.get(request_id) is None
        release.set()
        assert (await first).status_code == 202
        r = await client.post("/send_to_dms", json={**USER, "request_id": request_id}, auth=("erp", PASSWORD))
        assert r.status_code == 202


async def test_a_throttled_attempt_is_held_before_its_429_and_a_401_is_not(api: Api) -> None:
    """A loop that ignores Retry-After gets one answer per connection per hold, not thousands a second: the 429 of a
    throttled pair is held for REFUSAL_HOLD_S (its Retry-After is longer); the failures before it are answered
    without holding."""
    async with api.client(peer="10.0.0.9") as client:
        for i in range(3):
            started = time.perf_counter()
            r = await client.post("/send_to_dms", json=USER, auth=("erp", f"guess-{i}"))
            assert r.status_code == 401
            assert time.perf_counter() - started < REFUSAL_HOLD_S
        started = time.perf_counter()
        r = await client.post("/send_to_dms", json=USER, auth=("erp", "guess-again"))
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > REFUSAL_HOLD_S
        assert time.perf_counter() - started >= REFUSAL_HOLD_S * REFUSAL_HOLD_MIN_SHARE * 0.95
        await api.app.authenticator.drain()


async def test_throttling_through_the_api_with_its_audit_entry(api: Api) -> None:
    async with api.client(peer="10.0.0.7") as client:
        statuses = [
            (await client.post("/send_to_dms", json=USER, auth=("erp", f"guess-{i}"))).status_code for i in range(6)
        ]
        assert statuses == [401, 401, 401, 429, 429, 429]
        r = await client.post("/send_to_dms", json=USER, auth=("erp", PASSWORD))
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "60"
        assert r.json()["error"]["code"] == "sign_in_throttled"
        await api.app.authenticator.drain()
    assert api.registry.checks == 3
    entries_ = await api.store.audit.entries(action="auth.throttled")
    assert [(e.client_id, e.subject, e.count) for e in entries_] == [("erp", "10.0.0.7", 3)]
    # X-Forwarded-For from the trusted proxy: the client's address is what counts
    async with api.client(peer="10.0.0.100") as proxy:
        r = await proxy.post(
            "/send_to_dms",
            json={**USER, "request_id": unique("X")},
            auth=("erp", PASSWORD),
            headers={"X-Forwarded-For": "10.0.0.8"},
        )
        assert r.status_code == 202
        r = await proxy.post("/send_to_dms", json=USER, auth=("erp", PASSWORD), headers={"X-Forwarded-For": "10.0.0.7"})
        assert r.status_code == 429
    # ...but not from anyone else: a throttled caller cannot escape by naming another address
    async with api.client(peer="10.0.0.7") as client:
        r = await client.post(
            "/send_to_dms", json=USER, auth=("erp", PASSWORD), headers={"X-Forwarded-For": "10.0.0.9"}
        )
        assert r.status_code == 429
        await api.app.authenticator.drain()
    assert len(await api.store.audit.entries(action="auth.throttled")) == 1


async def test_refusals_held_together_are_answered_spread_over_the_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runaway client's connections refused at the same moment come back spread out, not as one burst: each hold is
    drawn between REFUSAL_HOLD_MIN_SHARE and all of the full hold."""
    from esi.api import errors

    monkeypatch.setattr(errors, "REFUSAL_HOLD_S", 0.4)
    refusal = ApiError(429, "quota_exceeded", "over", headers={"Retry-After": "1"})
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one() -> float:
        await errors.held(refusal)
        return loop.time() - started

    ends = sorted(await asyncio.gather(*(one() for _ in range(40))))
    assert ends[0] >= 0.4 * REFUSAL_HOLD_MIN_SHARE * 0.95
    assert ends[-1] <= 0.4 + 0.15
    assert ends[-1] - ends[0] >= 0.4 * (1 - REFUSAL_HOLD_MIN_SHARE) * 0.5  # spread over the window, not one burst
    # a refusal that is not a 429 is not held at all
    t0 = loop.time()
    await errors.held(ApiError(401, "unauthorized", "no"))
    assert loop.time() - t0 < 0.05
