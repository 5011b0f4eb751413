"""The checker: after the run drained, what every request, every effect, every queue and every process must show.

    every request answered 2xx reached a final state, and the one it must (completed; failed where refused by design)
    every event answered 2xx is in the event log, each subscriber was given its record's highest revision and holds it
    (the event flows' check, `EventFlow.judge`: esi keeps no request record of an event)
    every effect happened exactly once at the fake, none without an accepted request (the flows' own checks)
    each order's last status at Creatio is the last one 1C sent (UpdateOrderStatus's check)
    nothing left unacknowledged or ready in a queue, no dead letter, no unsent outbox row
    each esi process's memory and open files, and each AMQP connection's channels, flat after warm-up

A violation of a request is charged to every fault that overlapped its life (sent → settled); the rest to no fault.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from chaos.nemesis import FAULTS, Injected
from chaos.workload import FINAL, Flow, Sent, Violation

#: memory after warm-up may grow this much (a share of its level then), or this many bytes, whichever is more
RSS_GROWTH, RSS_SLACK = 0.10, 8 * 1024 * 1024
#: open files may grow this many: an adapter's connection pool to its system fills up to its concurrency (32 calls)
#: when a slow system keeps calls open late in a short run; a leak grows past it
FDS_SLACK = 40
#: a violation of a request within this many seconds after a fault ended is charged to it too
CHARGE_GRACE_S = 60.0


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def _fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def finals(database_url: str, tag: str) -> dict[str, dict[str, Any]]:
    """Every request of the run as the store holds it: status, response, error and when it settled."""
    rows = await _fetch(
        database_url,
        "SELECT request_id, status, response, error, updated_at FROM esi_requests WHERE request_id LIKE $1",
        f"CH-{tag}-%",
    )
    found = {}
    for row in rows:
        found[row["request_id"]] = {
            "status": row["status"],
            "response": json.loads(row["response"]) if row["response"] else None,
            "error": json.loads(row["error"]) if row["error"] else None,
            "settled_at": _epoch(row["updated_at"]) if row["status"] in FINAL else None,
        }
    return found


async def event_store(database_url: str, tag: str) -> dict[str, Any]:
    """What the store holds of the run's events: `logged`, the event ids of its event log; `given`, per (subscriber,
    record id), the version esi recorded as handed over (`esi_event_versions`: what order per record compares)."""
    like = f"CH-{tag}-%"
    logged = await _fetch(database_url, "SELECT event_id FROM esi_event_log WHERE record_id LIKE $1", like)
    given = await _fetch(
        database_url, "SELECT subscriber, record_id, version FROM esi_event_versions WHERE record_id LIKE $1", like
    )
    return {
        "logged": {row["event_id"] for row in logged},
        "given": {(row["subscriber"], row["record_id"]): row["version"] for row in given},
    }


async def unsent_outbox(database_url: str) -> int:
    rows = await _fetch(database_url, "SELECT count(*) FROM esi_outbox WHERE sent_at IS NULL")
    return int(rows[0][0])


@dataclass
class Sample:
    at: float
    name: str
    pid: int
    started: float
    rss: int
    fds: int


def sample(name: str, pid: int, started: float, at: float) -> Sample | None:
    """One process's resident memory and open files, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return Sample(at, name, pid, started, rss, fds)


def resource_violations(
    samples: list[Sample], warmup_s: float, min_span_s: float = 60.0
) -> tuple[list[Violation], list[dict[str, Any]]]:
    """Per process (one pid: a restarted process starts again), its last sample against its level after warm-up.

    The level is the highest sample of the first half of its life past `warmup_s`: connection pools and caches fill
    up early, under the first faults; a leak keeps growing and ends above it. A process that lived less than
    `min_span_s` past its warm-up is not judged.
    """
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        if s.name == "fakes":  # the test doubles, not esi
            continue
        by_pid.setdefault(s.pid, []).append(s)
    found: list[Violation] = []
    table = []
    for pid, series in by_pid.items():
        warm = [s for s in series if s.at - s.started >= warmup_s]
        if not warm or warm[-1].at - warm[0].at < min_span_s:
            continue
        last = warm[-1]
        early = [s for s in warm if s.at <= warm[0].at + (last.at - warm[0].at) / 2]
        rss, fds = max(s.rss for s in early), max(s.fds for s in early)
        row = {
            "process": last.name,
            "pid": pid,
            "span_s": round(last.at - warm[0].at),
            "rss_mb": [round(rss / 2**20, 1), round(last.rss / 2**20, 1)],
            "fds": [fds, last.fds],
        }
        table.append(row)
        if last.rss > rss + max(rss * RSS_GROWTH, RSS_SLACK):
            found.append(Violation("memory_growth", f"{last.name} pid {pid}: {row['rss_mb']} MB"))
        if last.fds > fds + FDS_SLACK:
            found.append(Violation("fd_growth", f"{last.name} pid {pid}: {row['fds']} open files"))
    return found, table


def channel_violations(warm: dict[str, list[int]], end: dict[str, list[int]]) -> list[Violation]:
    """No connection holds more channels at the end than any of its name held after warm-up."""
    found = []
    for name, channels in end.items():
        before = warm.get(name)
        if before and max(channels) > max(before):
            found.append(Violation("channel_growth", f"{name}: {max(before)} → {max(channels)} channels"))
        if before and len(channels) > len(before):
            found.append(Violation("connection_growth", f"{name}: {len(before)} → {len(channels)} connections"))
    return found


def request_violations(sent: list[Sent], final: dict[str, dict[str, Any]]) -> list[Violation]:
    found = []
    for s in sent:
        record = final.get(s.request_id)
        if s.client_violation:
            found.append(Violation("api_contract", s.client_violation, s.request_id))
        if not s.accepted:  # never answered for sure (counted as `unanswered`: availability, not safety)
            continue
        if not s.record:  # an event: esi keeps no request record of it (its flow's check proves it arrived)
            continue
        if record is None:
            found.append(Violation("lost_request", "accepted, unknown to the store", s.request_id))
        elif record["status"] not in FINAL:
            found.append(Violation("not_final", f"still {record['status']}", s.request_id))
        elif record["status"] != s.expect:
            found.append(
                Violation("wrong_outcome", f"{record['status']}, expected {s.expect}: {record['error']}", s.request_id)
            )
        if record is not None and s.seen_final and s.seen_final.get("status") != record["status"]:
            found.append(
                Violation(
                    "inconsistent_answer",
                    f"client saw {s.seen_final.get('status')}, store {record['status']}",
                    s.request_id,
                )
            )
    return found


def queue_violations(queues: list[list[str]]) -> list[Violation]:
    """Every work and retry queue empty: nothing ready, nothing unacknowledged (dead letters: `dead_letters`)."""
    return [
        Violation("stuck_message", f"{name}: {ready} ready, {unacked} unacknowledged")
        for name, ready, unacked in queues
        if "dead_letter" not in name and (int(ready) or int(unacked))
    ]


#: what a dead letter's reason says when the fault was permanent by design (the DMS refusing a user: `CreateUser`)
BY_DESIGN = "refused.example"


def dead_letters(
    letters: list[dict[str, Any]], sent: list[Sent], final: dict[str, dict[str, Any]] | None = None
) -> list[Violation]:
    """Dead letters only where the failure was permanent by design: each refused request once, nothing else (a
    refused request counts when the client saw it accepted, or when the store has it: a post whose answer was lost)."""
    found = [
        Violation("dead_letter", f"{letter['queue']}: {letter['error_class']}: {letter['reason'][:200]}")
        for letter in letters
        if BY_DESIGN not in (letter.get("reason") or "")
    ]
    # by message id: a dead-lettering whose publish confirm was lost is published again (at least once, as every
    # publish); a copy is no loss and no effect, and is counted apart (`duplicate_dead_letters`)
    designed = {letter["id"] for letter in letters if BY_DESIGN in (letter.get("reason") or "")}
    stored = final or {}
    refused = sum(1 for s in sent if s.expect == "failed" and (s.accepted or s.request_id in stored))
    if len(designed) != refused:
        found.append(Violation("dead_letter", f"{len(designed)} refusals dead-lettered for {refused} refused requests"))
    return found


def duplicate_dead_letters(letters: list[dict[str, Any]]) -> int:
    """Dead letters that are copies of another (the same message id)."""
    return len(letters) - len({letter["id"] for letter in letters})


@dataclass
class Report:
    seed: int
    duration_s: float
    nodes: int
    replicas: int
    requests: int
    accepted: int
    by_flow: dict[str, int]
    by_mode: dict[str, int]
    table: list[dict[str, Any]]
    violations: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    drain_s: float
    unexpected_exits: dict[str, int]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations and all(row["injected"] > 0 for row in self.table if row["fault"] != "(none)")

    def text(self) -> str:
        lines = [
            f"chaos: seed {self.seed}, {self.duration_s:.0f}s of load, {self.nodes} node(s), {self.replicas} "
            f"replica(s) of each service; {self.requests} requests, {self.accepted} accepted; drained in "
            f"{self.drain_s:.0f}s; wall {self.wall_s:.0f}s",
            f"{'fault':<22}{'injected':>9}{'failed':>8}{'in flight':>11}{'violations':>12}",
        ]
        lines += [
            f"{r['fault']:<22}{r['injected']:>9}{r['failed']:>8}{r['in_flight']:>11}{r['violations']:>12}"
            for r in self.table
        ]
        lines.append(
            f"unanswered: {self.extra.get('unanswered', 0)} posts got no definite answer within "
            f"{self.extra.get('give_up_s', 0):.0f}s (the client gave up: availability, not a violation)"
        )
        if "dead_letters" in self.extra:
            lines.append(
                f"dead letters: {self.extra['dead_letters']} (designed refusals; "
                f"{self.extra['duplicate_dead_letters']} copies of one), outcomes: {self.extra.get('outcomes')}"
            )
        for name, stats in (self.extra.get("flows") or {}).items():
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        lines.append("violations: none" if not self.violations else f"violations: {len(self.violations)}")
        lines += [f"  {v['check']}: {v.get('request_id') or ''} {v['detail']}" for v in self.violations[:40]]
        never = [row["fault"] for row in self.table if row["fault"] != "(none)" and row["injected"] == 0]
        if never:
            lines.append(f"never injected: {never}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        data = asdict(self)
        data["ok"] = self.ok
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def fault_table(
    history: list[Injected],
    violations: list[Violation],
    sent: dict[str, Sent],
    final: dict[str, dict[str, Any]],
    in_flight: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The table per fault class, and each violation with the faults it is charged to."""
    rows = {f.name: {"fault": f.name, "injected": 0, "failed": 0, "in_flight": 0, "violations": 0} for f in FAULTS}
    for h in history:
        row = rows[h.fault]
        if h.error:
            row["failed"] += 1
        else:
            row["injected"] += 1
            row["in_flight"] += in_flight(h.started)
    none_row = {"fault": "(none)", "injected": 0, "failed": 0, "in_flight": 0, "violations": 0}
    charged = []
    for v in violations:
        faults: list[str] = []
        s = sent.get(v.request_id or "")
        if s is not None:
            record = final.get(s.request_id) or {}
            end = record.get("settled_at") or s.done_at or s.sent_at
            faults = sorted(
                {h.fault for h in history if not h.error and h.started <= end and h.ended + CHARGE_GRACE_S >= s.sent_at}
            )
        for name in faults:
            rows[name]["violations"] += 1
        if not faults:
            none_row["violations"] += 1
        charged.append({**asdict(v), "faults": faults})
    return [*rows.values(), none_row], charged


def flow_violations(flows: list[Flow], ctx: Any, sent: list[Sent], final: dict[str, dict[str, Any]]) -> list[Violation]:
    found = []
    for flow in flows:
        found += flow.check(ctx, [s for s in sent if s.flow == flow.name], final)
    return found


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)
