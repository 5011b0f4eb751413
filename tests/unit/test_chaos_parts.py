"""The chaos run's parts that need no servers: the nemesis's schedule, the checker's rules, the TCP proxy's faults."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from chaos.workload import Context, OrderEvents, PolicyEvents, Sent
from esi.events.identity import version_key
from esi.messages.signatures import verify
from esi.systems.crm.events import OrderChanged
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


def test_an_event_needs_no_request_record_but_its_client_findings_count() -> None:
    event = _sent("evt")
    event.record = False
    assert request_violations([event], {}) == []
    event.client_violation = "a repeated event was answered 409"
    assert [v.check for v in request_violations([event], {})] == ["api_contract"]


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


# --- the DMS's policy events -----------------------------------------------------------------------------------------


def _events(count: int, seed: int = 3) -> tuple[Context, PolicyEvents, list[Sent]]:
    ctx, flow, rng = Context("T1", {}, dms_webhook_secret="s3cret"), PolicyEvents(), random.Random(seed)
    return ctx, flow, [flow.make(ctx, rng, f"CH-T1-{n:06d}") for n in range(count)]


def test_policy_events_climb_per_policy_with_some_revisions_posted_late_and_each_post_signed() -> None:
    ctx, flow, sent = _events(200)
    assert {s.flow for s in sent} == {"policy_events"}
    assert not any(s.record for s in sent)
    assert set(flow.modes or {}) == {"fire", "repeat"}  # nothing to wait for or poll, no conflicting body
    late = 0
    for number in PolicyEvents.policies(ctx):
        revisions = [s.body["revision"] for s in sent if s.body["policy_number"] == number]
        assert len(revisions) == len(set(revisions))  # one change per revision: one event id each
        late += sum(1 for i, r in enumerate(revisions) if r < max(revisions[:i], default=0))
    assert late >= 10  # order per record is exercised: revisions arrive after a newer one
    for s in sent:
        event_type = s.path.rsplit("/", 1)[1]
        assert s.path.startswith("/events/dms/")
        assert event_type == s.extra["event_type"]
        assert (event_type == "policy_issued") == (s.body["revision"] == 1)
        assert (event_type == "policy_cancelled") == (s.body["status"] == "cancelled")
    content = json.dumps(sent[0].body).encode()
    headers = flow.headers(ctx, sent[0], content)
    verify("s3cret", content, timestamp=headers["X-Esi-Timestamp"], signature=headers["X-Esi-Signature"],
           now=time.time(), tolerance=5)  # fmt: skip


def _post(ctx: Context, number: int, revision: int, *, accepted: bool = True, answers: list[str] | None = None) -> Sent:
    status = "cancelled" if revision == 9 else "active"
    body = {"policy_number": f"CH-{ctx.tag}-POL{number}", "revision": revision, "status": status,
            "holder_name": f"h{revision}"}  # fmt: skip
    sent = Sent(f"R{number}-{revision}", "policy_events", "/events/dms/policy_changed", body, "fire", record=False)
    sent.extra |= {"record": body["policy_number"], "revision": revision}
    sent.answers = answers or (["202"] if accepted else ["err:ReadTimeout"])
    if accepted:
        sent.accepted_at = float(revision)
        sent.extra["answer"] = {"event_id": f"evt-{number}-{revision}", "message_id": f"m-{number}-{revision}"}
    return sent


def _row(ctx: Context, number: int, revision: int, status: str = "active") -> dict[str, object]:
    return {"UsrNumber": f"CH-{ctx.tag}-POL{number}", "UsrRevision": revision, "UsrStatus": status,
            "UsrHolder": f"h{revision}"}  # fmt: skip


def _at_1c(ctx: Context, number: int, revision: int, message_id: str | None = None) -> dict[str, object]:
    return {"key": f"CH-{ctx.tag}-POL{number}", "version": str(revision), "source": "dms",
            "message_id": message_id or f"m-{number}-{revision}"}  # fmt: skip


def test_policy_events_judge_the_last_revision_no_effect_without_a_post_and_one_message_per_change() -> None:
    ctx = Context("T1", {})
    policies = PolicyEvents.policies(ctx)
    sent = [_post(ctx, 0, 1), _post(ctx, 0, 3), _post(ctx, 0, 2), _post(ctx, 1, 1), _post(ctx, 1, 2, accepted=False)]
    store = {
        "logged": {"evt-0-1", "evt-0-2", "evt-0-3", "evt-1-1"},
        "given": {(sub, p): version_key(r) for sub in ("crm", "1c") for p, r in ((policies[0], 3), (policies[1], 2))},
    }
    # policy 0 ends at 3 although 2 came last (superseded); policy 1 at 2, a post never answered for sure: allowed
    rows = [_row(ctx, 0, 3), _row(ctx, 1, 2)]
    at_1c = [_at_1c(ctx, 0, 1), _at_1c(ctx, 0, 3), _at_1c(ctx, 1, 1), _at_1c(ctx, 1, 2, "m-x")]
    flow = PolicyEvents()

    def checks(**changed: object) -> list[tuple[str, str]]:
        args: dict[str, Any] = {"sent": sent, "rows": rows, "received": at_1c, "store": store, **changed}
        found = flow.judge(policies, args["sent"], args["received"], args["store"])
        found += PolicyEvents.at_creatio(policies, args["sent"], args["rows"])
        return sorted((v.check, v.detail.split(" ")[0]) for v in found)

    assert checks() == []

    # the stale revision written over the newer one, at Creatio and at 1C
    assert checks(rows=[_row(ctx, 0, 2), _row(ctx, 1, 2)]) == [("wrong_last_revision", "Creatio's")]
    assert checks(received=at_1c[:1] + at_1c[2:]) == [("wrong_last_revision", "1C's")]
    # an effect nobody posted; a field of another change
    assert checks(rows=[*rows, _row(ctx, 2, 1)]) == [("effect_without_request", "Creatio's")]
    assert checks(received=[*at_1c, _at_1c(ctx, 0, 7)]) == [
        ("effect_without_request", "1C"),
        ("wrong_last_revision", "1C's"),
    ]
    assert checks(rows=[_row(ctx, 0, 3, "suspended"), _row(ctx, 1, 2)]) == [("wrong_effect", "Creatio's")]
    # one change as two messages: a duplicated effect (a repeat of one message id is 1C's to drop: allowed)
    assert checks(received=[*at_1c, _at_1c(ctx, 0, 3, "m-other")]) == [("duplicate_effect", "1C")]
    assert checks(received=[*at_1c, _at_1c(ctx, 0, 3)]) == []
    assert checks(received=[_at_1c(ctx, 0, 1), _at_1c(ctx, 0, 3, "m-other"), *at_1c[2:]]) == [("wrong_effect", "1C")]
    # lost: not at Creatio, not in the event log, a subscriber left at an older revision
    assert checks(rows=rows[1:]) == [("lost_effect", "no")]
    assert checks(store={**store, "logged": store["logged"] - {"evt-0-2"}}) == [("lost_event", "accepted")]
    given = {**store["given"], ("1c", policies[0]): version_key(1)}  # type: ignore[dict-item]
    assert checks(store={**store, "given": given}) == [("not_delivered", "esi")]


def test_order_events_carry_modified_on_as_their_version_read_back_as_esi_and_1c_write_it() -> None:
    ctx, flow, rng = Context("T1", {}), OrderEvents(), random.Random(5)
    sent = [flow.make(ctx, rng, f"CH-T1-{n:06d}") for n in range(60)]
    assert {s.path for s in sent} == {"/events/crm/order_changed"}
    for s in sent:
        event = OrderChanged.model_validate(s.body)
        as_1c_gets_it = event.model_dump(mode="json", by_alias=True)["ModifiedOn"]  # the message's `version`
        assert OrderEvents.revision_of(as_1c_gets_it) == s.extra["revision"]
        assert OrderEvents.revision_of(version_key(event.modified_on)) == s.extra["revision"]  # esi's record
    # judged at 1C only: its last version of each order is the highest accepted
    for s in sent:
        s.accepted_at, s.answers = 1.0, ["202"]
        s.extra["answer"] = {"event_id": f"e{s.request_id}", "message_id": f"m{s.request_id}"}
    top = {r: max(s.extra["revision"] for s in sent if s.extra["record"] == r) for r in flow.records(ctx)}
    last = {r: next(s for s in sent if s.extra["record"] == r and s.extra["revision"] == top[r]) for r in top}
    received = [
        {"key": r, "version": s.body["ModifiedOn"], "source": "crm", "message_id": f"m{s.request_id}"}
        for r, s in last.items()
    ]
    store = {
        "logged": {f"e{s.request_id}" for s in sent},
        "given": {("1c", r): version_key(s.body["ModifiedOn"]) for r, s in last.items()},
    }
    assert flow.judge(flow.records(ctx), sent, received, store) == []
    assert [v.check for v in flow.judge(flow.records(ctx), sent, received[1:], store)] == ["wrong_last_revision"]
