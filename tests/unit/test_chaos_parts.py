"""The chaos run's parts that need no servers: the nemesis's schedule, the checker's rules, the TCP proxy's faults."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.checker import (
    Sample,
    channel_violations,
    dead_letters,
    duplicate_dead_letters,
    queue_violations,
    request_violations,
    resource_violations,
)
from chaos.infra import Proxy
from chaos.nemesis import FAULTS, plan
from chaos.workload import Sent
from tests.unit.test_bench_imports import _test_imports

CHAOS = Path(__file__).resolve().parents[2] / "chaos"


def test_chaos_imports_no_test_module() -> None:
    found = {p.name: bad for p in sorted(CHAOS.glob("*.py")) if (bad := _test_imports(p.read_text(encoding="utf-8")))}
    assert not found, f"chaos/ imports test modules (use esi.testing): {found}"


def test_the_schedule_is_the_seeds_and_fires_every_class_in_the_ci_window() -> None:
    first, again, other = (plan(seed, start=30, end=230, lanes=2) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    for schedule in (first, other):
        names = [p.fault.name for lane in schedule for p in lane]
        assert set(names) == {f.name for f in FAULTS}
        for lane in schedule:  # one after another in a lane, inside the window
            assert all(a.at + a.length <= b.at for a, b in itertools.pairwise(lane))
            assert all(p.at >= 30 and p.at + p.length <= 230 for p in lane)


def _sent(
    request_id: str, *, accepted: bool = True, expect: str = "completed", answers: list[str] | None = None
) -> Sent:
    return Sent(
        request_id,
        "create_user",
        "/send_to_dms",
        {},
        "fire",
        expect=expect,
        accepted_at=1.0 if accepted else None,
        answers=answers or (["202"] if accepted else ["err"]),
    )


def test_requests_must_settle_as_designed_and_be_answered() -> None:
    final = {
        "ok": {"status": "completed", "error": None},
        "refused": {"status": "failed", "error": {"code": "x"}},
        "stuck": {"status": "in_progress", "error": None},
        "dead": {"status": "dead_lettered", "error": {"code": "y"}},
    }
    sent = [
        _sent("ok"),
        _sent("refused", expect="failed"),
        _sent("stuck"),
        _sent("dead"),
        _sent("lost"),
        _sent("never", accepted=False),
        _sent("told-off", accepted=False, answers=["422"]),
    ]
    checks = {(v.request_id, v.check) for v in request_violations(sent, final)}
    assert checks == {
        ("stuck", "not_final"),
        ("dead", "wrong_outcome"),
        ("lost", "lost_request"),
    }


def test_only_designed_refusals_may_be_dead_lettered_once_each() -> None:
    refusal = {
        "id": "m1",
        "queue": "dms_dead_letter_queue",
        "error_class": "BusinessError",
        "reason": "refused.example",
    }
    another = {**refusal, "id": "m2"}
    other = {"id": "m3", "queue": "crm_dead_letter_queue", "error_class": "TransientError", "reason": "exhausted"}
    sent = [_sent("a", expect="failed")]
    assert dead_letters([refusal], sent) == []
    assert [v.check for v in dead_letters([refusal, other], sent)] == ["dead_letter"]
    assert [v.check for v in dead_letters([refusal, another], sent)] == ["dead_letter"]
    # a copy of the same message (its dead-lettering published again after a lost confirm): counted apart
    assert dead_letters([refusal, refusal], sent) == []
    assert duplicate_dead_letters([refusal, refusal, another]) == 1
    # a refusal whose post was never answered for sure, but which the store has, counts too
    unsure = _sent("b", accepted=False, expect="failed")
    assert dead_letters([refusal, another], [*sent, unsure], {"b": {"status": "failed"}}) == []
    assert [v.check for v in dead_letters([refusal, another], [*sent, unsure], {})] == ["dead_letter"]


def test_queues_must_be_empty_but_dead_letter_queues_are_checked_apart() -> None:
    assert queue_violations([["dms_queue", "0", "0"], ["dms_dead_letter_queue", "3", "0"]]) == []
    assert [v.detail for v in queue_violations([["crm_queue.retry.1s", "0", "2"]])] == [
        "crm_queue.retry.1s: 0 ready, 2 unacknowledged"
    ]


def test_memory_and_files_flat_after_warm_up_per_process() -> None:
    mb = 2**20

    def series(pid: int, rss: list[int], fds: list[int]) -> list[Sample]:
        return [
            Sample(100.0 + 10 * i, f"p{pid}", pid, 100.0, r * mb, f)
            for i, (r, f) in enumerate(zip(rss, fds, strict=True))
        ]

    flat = series(
        1, [50, 80, 82, 90, 85, 86, 87, 86, 88, 87], [20, 20, 40, 40, 40, 40, 42, 40, 40, 41]
    )  # pools fill early
    leaking = series(2, [50, 80, 90, 100, 110, 120, 130, 140, 150, 160], [20, 20, 25, 30, 35, 40, 60, 80, 100, 120])
    short = series(3, [50, 500], [20, 900])  # died before a minute past its warm-up: not judged
    found, table = resource_violations(flat + leaking + short, warmup_s=10)
    assert sorted((v.check, v.detail.split(":")[0]) for v in found) == [
        ("fd_growth", "p2 pid 2"),
        ("memory_growth", "p2 pid 2"),
    ]
    assert {row["pid"] for row in table} == {1, 2}


def test_channels_and_connections_must_not_grow() -> None:
    warm = {"esi-onec": [3], "esi-dms": [2]}
    assert channel_violations(warm, {"esi-onec": [3], "esi-dms": [2]}) == []
    found = channel_violations(warm, {"esi-onec": [4], "esi-dms": [2, 2]})
    assert sorted(v.check for v in found) == ["channel_growth", "connection_growth"]


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(2)
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):  # the proxy's reset reaches this side too
        while data := conn.recv(1024):
            conn.sendall(data)


def test_the_proxy_passes_holds_delays_and_resets(echo: int) -> None:
    proxy = Proxy("echo", echo)
    proxy.start()
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
        proxy.set("blackhole")
        client.sendall(b"held")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv(16)
        proxy.set("pass")  # a partition that heals: the bytes go on
        client.settimeout(5)
        assert client.recv(16) == b"held"
        proxy.set("delay", 0.3)
        started = time.monotonic()
        client.sendall(b"slow")
        assert client.recv(16) == b"slow"
        assert time.monotonic() - started >= 0.55  # held on the way there and back
        proxy.set("pass")
        assert proxy.reset() == 1
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.recv(16)  # the RST, not an orderly end
        client.close()
    finally:
        proxy.stop()
