"""`make bench` / `python -m bench.run`: the benchmark harness. It reports; it is not a test.

On the local RabbitMQ, in one process tree, on a vhost of its own (deleted at the end) and a store in a temporary
directory, it measures:

1. ceiling     `python -m bench.ceiling N C quorum`: bare aio-pika round trips (the yardstick of every ratio)
2. e2e         N create_user requests through the running system (API → outbox → dms_queue → DMS adapter →
               fake DMS → answer → 1c_queue → stored) at each concurrency, each followed to `completed`
3. ingress     POST → 202 latency at a fixed rate of half the best end-to-end throughput
4. slow        the fake DMS answering in 200 ms: time for 1,000 requests against (N × latency) / prefetch
5. memory      peak RSS of each service during 2 and 4, and while the DMS adapter drains a backlog of 50,000
6. scaleout    run 4 with one DMS adapter process and with two
2b. peer      the naive peer (`bench.peer`: FastStream + FastAPI, no store, outbox, inbox or retries) under the same
               load at esi's best concurrency, interleaved with esi (esi, peer, esi, peer): esi ÷ peer
6c. sets      N create_user with `Prefer: wait` on one set of processes (onec, dms, crm) and on two (the load split
               across two API processes), on PostgreSQL (`bench.sets`; alone: `python -m bench.sets`): two ÷ one
7. cluster     the three-node cluster (`make cluster`) against the single node, and two API processes against one,
               as ratios (`bench.cluster`; alone: `python -m bench.cluster`)
8. abuse       a flood of wrong passwords beside a well-behaved client (`bench.abuse`): its throughput and p99 ratios
9. fairness    a client at its quota beside another, on a small system of its own (`bench.fairness`): the other's
               p99 and throughput ratios, the share of the runaway client's requests refused 429
10. events     one event to two subscribers against one event to one, on a small system of its own
               (`bench.events`): esi's CPU per event, and the ratio
10. dlq        100,000 dead letters across two systems, on a system of its own (`bench.dlq`): the console's first
               and a filtered dead-letter page (p95 of 20 loads), `esi dlq list --limit 50`, and the API process's
               memory growth while a replay job goes through them at 500/s
11. history    1,000,000 past requests and their rows in the store (`bench.history`, seeded by bulk inserts), on
               SQLite and PostgreSQL: each console page and `GET /requests?key=` (p95 of 20 loads, < 100 ms), end
               to end against an empty store (interleaved: ≥ 0.95× throughput, ≤ 1.1× p99), and the API process's
               retention pass deleting a quarter as many expired requests while traffic runs (≥ 0.9× throughput)
12. drain      100,000 create_user requests accepted over HTTP while the DMS is down (its breaker open), then the
               recovery, on a system of its own (`bench.drain`): the drain rate ÷ the steady rate of the same run
               (≥ 0.9), a fresh client's p99 at 10/s during the drain (≤ 5 s), the broker's alarms (none); every
               backlog request completed once, nothing dead-lettered

Output: a table on the terminal, bench/results/latest.json and bench/results/chart.png. Targets are reported as
PASS/FAIL and never change the exit status; errors (a request that never completes, a crashed service) do.

    python -m bench.run [--quick] [--n N] [--concurrency 16,64,128,256] [--skip ceiling,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `bench` is a package of the repository: run from anywhere
    sys.path.insert(0, str(ROOT))

from bench import chart  # noqa: E402
from bench.load import Driver, Outcome, latency_summary, ms, percentile, publish_backlog  # noqa: E402
from bench.procs import machine_info  # noqa: E402

#: what a closed-loop POST asks to wait for its outcome, seconds (Prefer: wait=N)
PREFER_WAIT_S = 30

SECTIONS = (
    "ceiling",
    "e2e",
    "peer",
    "ingress",
    "slow",
    "scaleout",
    "bound",
    "abuse",
    "backlog",
    "fairness",
    "events",
    "sets",
    "dlq",
    "drain",
    "history",
    "cluster",
    "chart",
)
ADAPTERS = ("onec", "dms", "dms2", "crm")

#: targets (the issue's): checked and printed, never a reason to fail
TARGET_E2E_RATIO = 0.5
TARGET_INGRESS_P99_MS = 50.0
TARGET_SLOW_RATIO = 1.5
TARGET_RSS_MB = 150.0
TARGET_SCALEOUT = 1.7
#: two sets of processes (API + adapters) against one, Prefer: wait, PostgreSQL (issue 31: on a machine whose cores
#: the second set can use; on two shared cores the ratio says whether a second set costs anything)
TARGET_SETS = 1.8
SETS_TARGET = "two sets of processes ≥ 1.8 × one (Prefer: wait, PostgreSQL)"
#: the names of the targets of sections abuse and fairness (bench.abuse, bench.fairness hold their limits)
ABUSE_THROUGHPUT = "abuse: steady client's throughput ≥ 0.9 × alone beside a flood of wrong passwords"
ABUSE_P99 = "abuse: steady client's p99 ≤ 1.3 × alone beside a flood of wrong passwords"
ABUSE_FLOOD = "abuse: the flood answered 429 from the throttle's threshold on"
FAIRNESS_P99 = "fairness: erp's p99 ≤ 1.33 × alone beside a client at its quota"
FAIRNESS_P99_FIRST = "fairness, esi's processes first on the CPU: erp's p99 ≤ 1.33 × alone"

DEFAULTS: dict[str, Any] = {
    "ceiling_n": 5000,
    "ceiling_concurrency": 64,
    "n": 2000,
    "concurrency": [16, 64, 128, 256],
    "warmup": 200,
    "ingress_seconds": 20.0,
    "slow_n": 1000,
    "slow_latency_ms": 200,
    "post_concurrency": 64,
    "backlog": 50_000,
    "backlog_sample_seconds": 30.0,
    "completion_timeout": 120.0,
    "bound_limit": 10,
    "abuse_rate": 50.0,
    "abuse_seconds": 10.0,
    "abuse_connections": 32,
    "fairness_rate": 50.0,
    "fairness_seconds": 60.0,
    "fairness_connections": 16,
    "events_n": 500,
    "sets_n": 3000,
    "sets_concurrency": 128,
    "dlq_n": 100_000,
    "drain_n": 100_000,
    "drain_steady_n": 3_000,
    "history_n": 1_000_000,
    "history_stores": "sqlite,postgres",
}
QUICK: dict[str, Any] = {
    "ceiling_n": 200,
    "ceiling_concurrency": 16,
    "n": 100,
    "concurrency": [4, 16],
    "warmup": 20,
    "ingress_seconds": 3.0,
    "slow_n": 50,
    "slow_latency_ms": 50,
    "post_concurrency": 16,
    "backlog": 500,
    "backlog_sample_seconds": 10.0,
    "completion_timeout": 60.0,
    "bound_limit": 5,
    "abuse_rate": 20.0,
    "abuse_seconds": 2.0,
    "abuse_connections": 8,
    "fairness_rate": 20.0,
    "fairness_seconds": 2.0,
    "fairness_connections": 4,
    "events_n": 40,
    "sets_n": 100,
    "sets_concurrency": 16,
    "dlq_n": 1_000,
    "drain_n": 300,
    "drain_steady_n": 200,
    "history_n": 20_000,
    "history_stores": None,
}


class BenchError(RuntimeError):
    """Something went wrong that makes the figures meaningless (exit status 1)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _ratio(value: float | None, base: float | None, digits: int = 3) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, digits)


def _check(outcome: Outcome, what: str, errors: list[str]) -> None:
    if not outcome.all_completed:
        errors.append(
            f"{what}: {outcome.completed}/{outcome.posted} completed, {outcome.failed} failed, "
            f"{outcome.timed_out} never completed, {outcome.post_errors} POST errors; "
            f"first errors: {outcome.errors[:3]}"
        )


def _outcome_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        "posted": outcome.posted,
        "completed": outcome.completed,
        "failed": outcome.failed,
        "timed_out": outcome.timed_out,
        "post_errors": outcome.post_errors,
        "post_retries": outcome.post_retries,
        "poll_retries": outcome.poll_retries,
        "all_completed": outcome.all_completed,
        "polls_per_request": round(outcome.polls / outcome.posted, 2) if outcome.posted else None,
    }


# --- 1. ceiling -------------------------------------------------------------------------------------------------


def run_ceiling(amqp_url: str, n: int, concurrency: int) -> dict[str, Any]:
    env = dict(os.environ, AMQP_URL=amqp_url)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bench.ceiling", str(n), str(concurrency), "quorum"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise BenchError(f"ceiling.py exited with {result.returncode}: {result.stderr[-2000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise BenchError(f"ceiling.py printed no JSON line: {result.stdout[-1000:]} {result.stderr[-1000:]}")
    figures = json.loads(lines[-1])
    figures["wall_seconds"] = round(time.perf_counter() - started, 2)
    figures["script"] = "bench/ceiling.py"
    return figures


# --- the harness ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.errors: list[str] = []
        self.result: dict[str, Any] = {
            "schema": 1,
            "started_at": _now(),
            "ok": False,
            "errors": self.errors,
            "machine": machine_info(),
            "config": {},
            "ceiling": None,
            "e2e": None,
            "peer": None,
            "ingress": None,
            "slow": None,
            "scaleout": None,
            "memory": None,
            "backlog": None,
            "abuse": None,
            "fairness": None,
            "events": None,
            "sets": None,
            "targets": [],
            "client": {},
            "chart": None,
        }
        self.system: Any = None
        self.driver: Driver | None = None

    @property
    def ceiling(self) -> float | None:
        return (self.result.get("ceiling") or {}).get("round_trips_per_s")

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def skip(self, section: str) -> bool:
        return section in self.args.skip

    # --- orchestration ------------------------------------------------------------------------------------------

    def run(self) -> int:
        from bench.system import BenchSystem

        a = self.args
        started = time.perf_counter()
        try:
            self.system = BenchSystem(store=a.store, prefetch=a.prefetch)
        except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
            traceback.print_exc()
            self.errors.append(f"setting up (vhost, store): {type(exc).__name__}: {exc}")
            self.result["ok"] = False
            self.write()
            print_table(self.result)
            return 1
        self.result["config"] = {
            "quick": a.quick,
            "store": a.store,
            "prefetch": self.system.prefetch,
            "n": a.n,
            "concurrency": a.concurrency,
            "warmup": a.warmup,
            "ceiling_n": a.ceiling_n,
            "ceiling_concurrency": a.ceiling_concurrency,
            "ingress_seconds": a.ingress_seconds,
            "slow_n": a.slow_n,
            "slow_latency_ms": a.slow_latency_ms,
            "post_concurrency": a.post_concurrency,
            "backlog": a.backlog,
            "backlog_sample_seconds": a.backlog_sample_seconds,
            "abuse_rate": a.abuse_rate,
            "abuse_seconds": a.abuse_seconds,
            "abuse_connections": a.abuse_connections,
            "fairness_rate": a.fairness_rate,
            "fairness_seconds": a.fairness_seconds,
            "fairness_connections": a.fairness_connections,
            "events_n": a.events_n,
            "dlq_n": a.dlq_n,
            "drain_n": a.drain_n,
            "drain_steady_n": a.drain_steady_n,
            "history_n": a.history_n,
            "skip": sorted(a.skip),
            "vhost": self.system.vhost.name,
            "log_level": "INFO (the default)",
            "auth": "on, the demo client (the default)",
            "layout": "fakes(fake-creatio fake-dms) | onec | dms [| dms2] | crm — one `esi run` process each",
        }
        try:
            if not self.skip("ceiling"):
                self.say(f"ceiling: {a.ceiling_n} round trips at concurrency {a.ceiling_concurrency}, quorum queues")
                self.result["ceiling"] = run_ceiling(self.system.amqp_url, a.ceiling_n, a.ceiling_concurrency)
                self.say(f"ceiling: {self.ceiling} round trips/s")
            self.say("starting esi: fakes, onec, dms, crm")
            self.system.start()
            self.driver = Driver(self.system.api_url, completion_timeout=a.completion_timeout)
            if a.warmup:
                outcome, _ = asyncio.run(self.driver.closed_loop(a.warmup, min(16, max(a.concurrency))))
                _check(outcome, "warm-up", self.errors)
            if not self.skip("e2e"):
                self.run_e2e()
            if not self.skip("peer"):
                self.run_peer()
            if not self.skip("ingress"):
                self.run_ingress()
            if not self.skip("slow"):
                self.run_slow()
            if not self.skip("scaleout"):
                self.run_scaleout()
            if not self.skip("bound"):
                self.run_bound()
            if not self.skip("abuse"):
                self.run_abuse()
            self.memory_section()
            if not self.skip("backlog"):
                self.run_backlog()
        except BenchError as exc:
            self.errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
            self.errors.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self.say("stopping esi and deleting the vhost")
            try:
                if self.errors and self.system is not None:
                    self.result["log_tail"] = self.system.log_tail(4000)
                codes = self.system.close()
                self.result["exit_codes"] = codes
                bad = {k: v for k, v in codes.items() if v != 0}
                if bad:
                    self.errors.append(f"esi processes did not stop cleanly: {bad}")
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"teardown: {type(exc).__name__}: {exc}")
        self.memory_section()  # again: the backlog phase has closed by now
        if not self.skip("fairness"):
            try:  # a system of its own (two clients with quotas), after the main one has stopped
                self.run_fairness()
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"fairness: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        if not self.skip("events"):
            try:  # a system of its own (the DMS's webhook signed, 1C and Creatio subscribed), after the main one
                self.run_events()
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"events: {type(exc).__name__}: {exc}")
        if not self.skip("sets"):
            try:  # a system of its own on PostgreSQL (one set, then two), after the main one has stopped
                from bench import sets

                self.result["sets"] = sets.run(
                    n=a.sets_n,
                    concurrency=a.sets_concurrency,
                    warmup=a.warmup,
                    prefetch=a.prefetch,
                    completion_timeout=a.completion_timeout,
                    say=self.say,
                )
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"sets: {type(exc).__name__}: {exc}")
        if not self.skip("dlq"):
            try:  # a system of its own (its dead letters seeded), after the main one has stopped
                from bench import dlq

                self.result["dlq"] = dlq.run(a.dlq_n, store=a.store, say=self.say)
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"dlq: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        if not self.skip("drain"):
            try:  # a system of its own (the DMS down, then back), after the main one has stopped
                from bench import drain

                self.result["drain"] = drain.run(
                    a.drain_n,
                    steady_n=a.drain_steady_n,
                    concurrency=min(64, max(a.concurrency)),
                    completion_timeout=a.completion_timeout,
                    say=self.say,
                )
                self.errors.extend(self.result["drain"]["errors"])
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"drain: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        if not self.skip("history"):
            try:  # two systems of their own per store (one empty, one with the history), after the main one stopped
                from bench import history

                stores = tuple((a.history_stores or a.store).split(","))
                self.result["history"] = history.run(
                    a.history_n,
                    stores=stores,
                    e2e_n=a.n,
                    concurrency=min(64, max(a.concurrency)),
                    rounds=1 if a.quick else 2,
                    loads=5 if a.quick else history.LOADS,
                    say=self.say,
                )
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"history: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        if not self.skip("cluster"):
            try:  # systems of its own (the single node's and the cluster's), after the main one has stopped
                from bench import cluster

                self.result["cluster"] = cluster.run(
                    n=a.n,
                    concurrency=min(64, max(a.concurrency)),
                    publishes=max(500, a.n * 2),
                    warmup=a.warmup,
                    say=self.say,
                )
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                self.errors.append(f"cluster: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        self.targets()
        self.result["duration_s"] = round(time.perf_counter() - started, 1)
        self.result["ok"] = not self.errors
        if not self.skip("chart"):
            self.make_chart()
        self.write()
        print_table(self.result)
        return 0 if self.result["ok"] else 1

    # --- abuse: a flood of wrong passwords beside a well-behaved client (bench.abuse) ----------------------------

    def run_abuse(self) -> None:
        from bench import abuse
        from esi.security import DEMO_CLIENT_ID, DEMO_PASSWORD

        a = self.args
        self.say(
            f"abuse: a client on {a.abuse_connections} connections (then at {a.abuse_rate}/s) alone, then beside "
            "300 wrong passwords/s"
        )
        result = abuse.run(
            self.system.api_url,
            (DEMO_CLIENT_ID, DEMO_PASSWORD),
            rate=a.abuse_rate,
            seconds=a.abuse_seconds,
            connections=a.abuse_connections,
        )
        self.system.check_alive()
        self.result["abuse"] = result
        self.say(
            f"abuse: throughput ×{result['throughput_ratio']} (≥ {abuse.TARGET_THROUGHPUT_RATIO}), "
            f"p99 ×{result['p99_ratio']} (≤ {abuse.TARGET_P99_RATIO}) "
            f"[{result['alone']['p99_ms']} → {result['flooded']['p99_ms']} ms]; flood answered 429 after "
            f"{result['flood']['answered_429_after']} attempts, {result['flood']['statuses']} "
            f"({result['flood']['achieved_per_s']}/s); open loop at {a.abuse_rate}/s: p99 "
            f"×{result['open_loop']['p99_ratio']}"
        )

    # --- events: fan-out's cost, on a system of its own (bench.events) -------------------------------------------

    def run_events(self) -> None:
        from bench import events

        result = events.run(n=self.args.events_n, say=self.say)
        self.result["events"] = result
        bad = {k: v for k, v in result["exit_codes"].items() if v != 0}
        if bad:
            self.errors.append(f"events: esi processes did not stop cleanly: {bad}")
        self.say(
            f"events: {result['one_subscriber']['cpu_ms_per_event']} ms CPU per event to one subscriber, "
            f"{result['two_subscribers']['cpu_ms_per_event']} ms to two: ×{result['cpu_ratio']}"
        )

    # --- fairness: a client at its quota beside another, on a system of its own (bench.fairness) -----------------

    def run_fairness(self) -> None:
        from bench import fairness

        a = self.args
        result = fairness.run(
            rate=a.fairness_rate, seconds=a.fairness_seconds, connections=a.fairness_connections, say=self.say
        )
        self.result["fairness"] = result
        self._fairness_said(result)
        # again with esi's processes and erp's client first on the CPU, before the broker and the runaway client
        # that share this machine with them and would not share their host on a site (bench.fairness)
        first = fairness.run(
            rate=a.fairness_rate,
            seconds=a.fairness_seconds,
            connections=a.fairness_connections,
            scheduling="esi-first",
            say=self.say,
        )
        if first["prioritized"]:
            self.result["fairness_esi_first"] = first
            self._fairness_said(first)
        else:
            self.result["fairness_esi_first"] = {"skipped": "this process may not set real-time scheduling"}

    def _fairness_said(self, result: dict[str, Any]) -> None:
        from bench import fairness

        bad = {k: v for k, v in result["exit_codes"].items() if v != 0}
        if bad:
            self.errors.append(f"fairness: esi processes did not stop cleanly: {bad}")
        self.say(
            f"fairness ({result['scheduling']}): erp p99 ×{result['p99_ratio']} (≤ {fairness.TARGET_P99_RATIO}) "
            f"[{result['alone']['p99_ms']} → {result['beside_loop']['p99_ms']} ms], throughput "
            f"×{result['throughput_ratio']}; loop {result['loop']['attempts_per_s']}/s, "
            f"{result['loop_refused_429_share']} refused 429, {result['loop']['statuses']}"
        )

    # --- 2. end to end ------------------------------------------------------------------------------------------

    def run_e2e(self) -> None:
        a, system = self.args, self.system
        runs = []
        system.sampler.mark("e2e")
        self.driver.prefer_wait = PREFER_WAIT_S if a.e2e_completion == "prefer" else 0
        for concurrency in a.concurrency:
            self.say(f"e2e: {a.n} create_user at concurrency {concurrency}")
            system.reset_fakes()
            phase = f"e2e-c{concurrency}"
            system.sampler.mark(phase)
            profiles = self._start_profiles() if a.profile and concurrency == max(a.concurrency) else None
            cpu0 = time.process_time()
            outcome, seconds = asyncio.run(self.driver.closed_loop(a.n, concurrency))
            client_cpu = time.process_time() - cpu0
            if profiles is not None:
                self.result["profile"] = {
                    "concurrency": concurrency,
                    "seconds": a.profile_seconds,
                    "mode": "py-spy record --gil --nonblocking",
                    **profiles.finish(),
                }
            system.sampler.close(phase)
            system.check_alive()
            _check(outcome, f"e2e at concurrency {concurrency}", self.errors)
            run = self._e2e_run(concurrency, outcome, seconds, client_cpu, phase)
            runs.append(run)
            self.say(
                f"e2e c={concurrency}: {run['round_trips_per_s']}/s ({run['ratio_to_ceiling']}× ceiling), "
                f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, client CPU {run['client_cpu_pct_of_one_core']}%"
            )
        system.sampler.close("e2e")
        best = max(runs, key=lambda r: r["round_trips_per_s"] or 0)
        by_long_poll = None
        if self.driver.prefer_wait:
            # the same at the best concurrency, completion followed as a client without `Prefer` would: POST, then
            # a long poll — two requests per round trip
            self.driver.prefer_wait = 0
            concurrency = best["concurrency"]
            self.say(f"e2e: {a.n} create_user at concurrency {concurrency}, POST then long poll")
            by_long_poll = self._esi_run(concurrency, f"e2e-poll-c{concurrency}", "e2e (long poll)")
            self.say(
                f"e2e c={concurrency}, long poll: {by_long_poll['round_trips_per_s']}/s "
                f"({by_long_poll['ratio_to_ceiling']}× ceiling), p99 {by_long_poll['p99_ms']} ms"
            )
        self._e2e_summary(runs, best, by_long_poll)

    def _e2e_run(
        self, concurrency: int, outcome: Outcome, seconds: float, client_cpu: float, phase: str
    ) -> dict[str, Any]:
        a, system = self.args, self.system
        stages = self._stages(outcome)
        rate = outcome.completed / seconds if seconds > 0 else None
        processes = system.sampler.report(phase)
        run = {
            "concurrency": concurrency,
            "n": a.n,
            "seconds": round(seconds, 2),
            "round_trips_per_s": round(rate, 1) if rate else None,
            "ratio_to_ceiling": _ratio(rate, self.ceiling),
            **{k: v for k, v in latency_summary(outcome.e2e).items()},
            "ingress": latency_summary(outcome.ingress),
            **_outcome_fields(outcome),
            "client_cpu_pct_of_one_core": round(100 * client_cpu / seconds, 1) if seconds > 0 else None,
            "processes": processes,
            "cpu_ms_per_request": (cpu := _cpu_per_request(processes, outcome.completed)),
            "cpu_ratio_to_ceiling": self._cpu_ratios(cpu),
            "stages": stages,
            "machine_cpu": _machine_share(processes, self.result["machine"].get("nproc") or 1),
        }
        return run

    def _e2e_summary(
        self, runs: list[dict[str, Any]], best: dict[str, Any], by_long_poll: dict[str, Any] | None
    ) -> None:
        client_bound = [r["concurrency"] for r in runs if (r["client_cpu_pct_of_one_core"] or 0) >= 85]
        from bench.procs import MACHINE

        busy = {name: p["cpu_pct_of_one_core"] for name, p in best["processes"].items() if name != MACHINE}
        total_cpu = sum(busy.values())
        machine_cpu = (best["processes"].get(MACHINE) or {}).get("cpu_pct_of_one_core")
        nproc = self.result["machine"].get("nproc") or 1
        self.result["e2e"] = {
            "runs": runs,
            "best": {
                "concurrency": best["concurrency"],
                "round_trips_per_s": best["round_trips_per_s"],
                "ratio_to_ceiling": best["ratio_to_ceiling"],
                "p99_ms": best["p99_ms"],
            },
            "completion_detection": (
                f"POST start → the POST's own answer, 200 with the request completed (Prefer: wait={PREFER_WAIT_S}: "
                "one HTTP request per round trip); a POST whose wait ran out (202) is followed by long polls"
                if by_long_poll is not None
                else "POST start → the answer of the long poll GET /requests/{id}?wait=30 that sees it completed (one "
                "waiting GET per request in flight)"
            ),
        }
        if by_long_poll is not None:
            self.result["e2e"]["by_long_poll"] = by_long_poll
        self.result["client"] = {
            "tool": "aiohttp.ClientSession, HTTP/1.1, one process; pool = concurrency for POSTs and as "
            "many for the long polls (when used)",
            "cpu_pct_of_one_core_by_concurrency": {r["concurrency"]: r["client_cpu_pct_of_one_core"] for r in runs},
            "bottleneck": bool(client_bound),
            "verdict": (
                f"the client used ≥ 85% of a core at concurrency {client_bound}: it may be the bottleneck"
                if client_bound
                else f"not the bottleneck: at most {max(r['client_cpu_pct_of_one_core'] or 0 for r in runs)}% "
                f"of one core"
            ),
            "bench_processes_cpu_pct_of_machine_at_best": round(total_cpu / nproc, 1),
            "machine_cpu_busy_pct_at_best": round(machine_cpu / nproc, 1) if machine_cpu is not None else None,
            "others_cpu_pct_of_machine_at_best": (
                round(max(0.0, machine_cpu - total_cpu) / nproc, 1) if machine_cpu is not None else None
            ),
        }

    def _cpu_ratios(self, cpu_ms: dict[str, float]) -> dict[str, float | None]:
        """Each process's CPU per request ÷ the ceiling's CPU per round trip (requester and responder together):
        comparable from one machine to the next, where milliseconds are not."""
        base = (self.result.get("ceiling") or {}).get("cpu_ms_per_round_trip")
        return {name: _ratio(value, base, 2) for name, value in cpu_ms.items()}

    # --- 2b. the naive peer -------------------------------------------------------------------------------------

    def run_peer(self) -> None:
        """The naive peer (`bench.peer`) and esi, interleaved at esi's best concurrency: esi (run 2's), peer, esi,
        peer; esi ÷ peer is the ratio of their mean throughputs."""
        try:
            from bench.peer import PeerSystem
        except ImportError as exc:  # FastStream is a bench-only dependency
            self.result["peer"] = {"skipped": f"{exc}: pip install -e '.[bench]'"}
            self.say(f"peer: skipped ({exc})")
            return
        a, system = self.args, self.system
        e2e = self.result.get("e2e") or {}
        concurrency = (e2e.get("best") or {}).get("concurrency") or max(a.concurrency)
        esi_runs = [r for r in e2e.get("runs", []) if r["concurrency"] == concurrency]
        self.say("peer: starting the naive peer (FastStream + FastAPI) on a vhost of its own")
        peer = PeerSystem(dms_url=system.dms_url, workdir=system.workdir, sampler=system.sampler)
        try:
            driver = Driver(peer.url, completion_timeout=a.completion_timeout)
            driver.prefer_wait = PREFER_WAIT_S
            if a.warmup:
                outcome, _ = asyncio.run(driver.closed_loop(a.warmup, min(16, concurrency)))
                _check(outcome, "peer warm-up", self.errors)
            peer_runs: list[dict[str, Any]] = []
            for round_ in (1, 2):
                if len(esi_runs) < round_:
                    esi_runs.append(self._esi_again(concurrency, f"peer-esi-{round_}"))
                peer_runs.append(self._peer_run(peer, driver, concurrency, f"peer-{round_}"))
        finally:
            peer.close()
        esi_rate = sum(r["round_trips_per_s"] or 0 for r in esi_runs) / len(esi_runs)
        peer_rate = sum(r["round_trips_per_s"] or 0 for r in peer_runs) / len(peer_runs)
        self.result["peer"] = {
            "what": "bench/peer.py: FastStream + FastAPI, the handler publishes and awaits the reply in memory; "
            "no store, outbox, inbox, retries; quorum queues, persistent messages, publisher confirms",
            "concurrency": concurrency,
            "order": "esi, peer, esi, peer",
            "esi_runs": [
                {k: r[k] for k in ("round_trips_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request")} for r in esi_runs
            ],
            "peer_runs": peer_runs,
            "esi_per_s": round(esi_rate, 1),
            "peer_per_s": round(peer_rate, 1),
            "esi_over_peer": _ratio(esi_rate, peer_rate),
            "peer_ratio_to_ceiling": _ratio(peer_rate, self.ceiling),
        }
        self.say(
            f"peer: esi {esi_rate:.1f}/s, peer {peer_rate:.1f}/s: esi ÷ peer = {self.result['peer']['esi_over_peer']}"
        )

    def _esi_run(self, concurrency: int, phase: str, what: str) -> dict[str, Any]:
        """One closed-loop run of esi at `concurrency`, measured as phase `phase` (`what` names it in errors)."""
        a, system = self.args, self.system
        system.reset_fakes()
        system.sampler.mark(phase)
        cpu0 = time.process_time()
        outcome, seconds = asyncio.run(self.driver.closed_loop(a.n, concurrency))
        client_cpu = time.process_time() - cpu0
        system.sampler.close(phase)
        system.check_alive()
        _check(outcome, f"{what} at concurrency {concurrency}", self.errors)
        return self._e2e_run(concurrency, outcome, seconds, client_cpu, phase)

    def _esi_again(self, concurrency: int, phase: str) -> dict[str, Any]:
        self.say(f"peer: esi again, {self.args.n} create_user at concurrency {concurrency}")
        run = self._esi_run(concurrency, phase, "esi (beside the peer)")
        self.say(f"peer: esi c={concurrency}: {run['round_trips_per_s']}/s")
        return run

    def _peer_run(self, peer: Any, driver: Driver, concurrency: int, phase: str) -> dict[str, Any]:
        a, system = self.args, self.system
        self.say(f"peer: {a.n} create_user through the peer at concurrency {concurrency}")
        system.reset_fakes()
        system.sampler.mark(phase)
        profiles = None
        if a.profile and phase.endswith("-2"):
            from bench.profile import Profiles

            profiles = Profiles(Path(a.profile), {name: p.pid for name, p in peer.procs.items()}, a.profile_seconds)
        outcome, seconds = asyncio.run(driver.closed_loop(a.n, concurrency))
        if profiles is not None:
            self.result.setdefault("profile", {})["peer"] = profiles.finish()
        system.sampler.close(phase)
        peer.check_alive()
        _check(outcome, f"peer at concurrency {concurrency}", self.errors)
        rate = outcome.completed / seconds if seconds > 0 else None
        processes = system.sampler.report(phase)
        cpu = _cpu_per_request(
            processes, outcome.completed, only=("peer-api", "peer-worker", "fakes", "rabbitmq", "bench-client")
        )
        run = {
            "round_trips_per_s": round(rate, 1) if rate else None,
            "ratio_to_ceiling": _ratio(rate, self.ceiling),
            **latency_summary(outcome.e2e),
            **_outcome_fields(outcome),
            "cpu_ms_per_request": cpu,
            "cpu_ratio_to_ceiling": self._cpu_ratios(cpu),
        }
        self.say(f"peer c={concurrency}: {run['round_trips_per_s']}/s, p99 {run['p99_ms']} ms")
        return run

    def _start_profiles(self) -> Any:
        from bench.profile import Profiles

        pids = {name: pid for name, pid in self.system.pids().items() if name in ("onec", "dms", "fakes")}
        try:
            return Profiles(Path(self.args.profile), pids, self.args.profile_seconds)
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            self.result["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
            return None

    def _stages(self, outcome: Outcome) -> dict[str, Any]:
        from bench.stages import breakdown

        try:
            users = _dms_state(self.system).get("users", [])
            return breakdown(outcome, database_url=self.system.esi.database_url, dms_users=users)
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            return {"error": f"{type(exc).__name__}: {exc}"}

    # --- 3. ingress ---------------------------------------------------------------------------------------------

    def run_ingress(self) -> None:
        """POST → 202 at half the maximum rate of the same traffic: each request posted, then followed by a long
        poll, as run 2's comparison run does (`by_long_poll`). When run 2 awaited completion with `Prefer: wait`
        (one request per round trip, a higher maximum), a second run at half that maximum follows (`at_prefer_half`):
        a harder load than the maximum it is half of, reported beside it."""
        a = self.args
        e2e = self.result.get("e2e") or {}
        best = (e2e.get("best") or {}).get("round_trips_per_s")
        polled = (e2e.get("by_long_poll") or {}).get("round_trips_per_s")
        if a.ingress_rate:
            rate, basis = a.ingress_rate, "--ingress-rate"
        elif polled:
            rate, basis = polled / 2, "half the best end-to-end throughput with POST then long poll (run 2)"
        elif best:
            rate, basis = best / 2, "half the best end-to-end throughput (run 2)"
        else:
            rate, basis = 20.0, "a default of 20/s (run 2 skipped)"
        self.result["ingress"] = self._ingress_run(rate, basis, "ingress")
        if polled and best and not a.ingress_rate:
            self.result["ingress"]["at_prefer_half"] = self._ingress_run(
                best / 2, "half the best end-to-end throughput with Prefer: wait (run 2)", "ingress-prefer-half"
            )

    def _ingress_run(self, rate: float, basis: str, phase: str) -> dict[str, Any]:
        a, system = self.args, self.system
        self.say(f"ingress: POST at {rate:.1f}/s for {a.ingress_seconds:.0f} s ({basis})")
        system.reset_fakes()
        system.sampler.mark(phase)
        outcome, extra = asyncio.run(self.driver.fixed_rate(rate, a.ingress_seconds))
        system.sampler.close(phase)
        system.check_alive()
        _check(outcome, "ingress run", self.errors)
        summary = latency_summary(outcome.ingress)
        result = {
            "rate_per_s": round(rate, 1),
            "rate_basis": basis,
            "ratio_to_ceiling": _ratio(rate, self.ceiling),
            "seconds": a.ingress_seconds,
            **summary,
            "from_due": extra.pop("from_due"),
            **extra,
            "e2e_at_this_rate": latency_summary(outcome.e2e),
            **_outcome_fields(outcome),
            "p99_ms_by_2s": _windowed_p99(outcome.ingress_started, outcome.ingress, 2.0),
            "processes": (processes := system.sampler.report(phase)),
            "machine_cpu": _machine_share(processes, self.result["machine"].get("nproc") or 1),
        }
        self.say(f"ingress: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
        return result

    # --- 4. slow downstream, 6. scale-out -----------------------------------------------------------------------

    def _slow_run(self, adapters: int, bound: int | None = None) -> dict[str, Any]:
        """`bound`: the adapters run with DMS_MAX_CONCURRENCY=bound (and a prefetch of five times that)."""
        a, system = self.args, self.system
        prefetch = 5 * bound if bound else system.prefetch
        per_adapter = bound or system.dms_limit
        system.reset_fakes()
        system.dms_fault({"latency_ms": a.slow_latency_ms})
        self.say(
            f"slow downstream: {a.slow_n} create_user, fake DMS answering in {a.slow_latency_ms} ms, "
            f"{adapters} DMS adapter(s)"
        )
        phase = f"bound-{adapters}" if bound else f"slow-{adapters}"
        system.sampler.mark(phase)
        outcome, seconds = asyncio.run(self.driver.burst(a.slow_n, post_concurrency=a.post_concurrency))
        system.sampler.close(phase)
        stages = self._stages(outcome)
        state = _dms_state(system)
        system.reset_fakes()
        system.check_alive()
        _check(outcome, f"slow run with {adapters} adapter(s)", self.errors)
        limit = per_adapter * adapters
        ideal = a.slow_n * a.slow_latency_ms / 1000 / limit
        rate = outcome.completed / seconds if seconds > 0 else None
        posting = (outcome.last_accepted - outcome.first_post) if outcome.last_accepted and outcome.first_post else None
        peak_calls = _peak_in_flight(state.get("faults", {}).get("call_times", []), a.slow_latency_ms / 1000)
        return {
            "adapters": adapters,
            "n": a.slow_n,
            "latency_ms": a.slow_latency_ms,
            "prefetch": prefetch,
            "dms_max_concurrency": per_adapter,
            "concurrency_limit": limit,
            "seconds": round(seconds, 2),
            "ideal_seconds": round(ideal, 4),
            "ratio_to_ideal": _ratio(seconds, ideal, 2),
            "round_trips_per_s": round(rate, 1) if rate else None,
            "ratio_to_ceiling": _ratio(rate, self.ceiling),
            "posting_seconds": round(posting, 2) if posting else None,
            "ingress_rate_per_s": round(outcome.accepted / posting, 1) if posting else None,
            "dms_calls_in_flight_peak": peak_calls,
            "dms_calls_in_flight_trace": _in_flight_trace(
                state.get("faults", {}).get("call_times", []), a.slow_latency_ms / 1000
            ),
            "dms_calls": (state.get("counters") or {}).get("calls", {}).get("create_user"),
            **latency_summary(outcome.e2e),
            **_outcome_fields(outcome),
            "stages": stages,
            "processes": (processes := system.sampler.report(phase)),
            "machine_cpu": _machine_share(processes, self.result["machine"].get("nproc") or 1),
        }

    def run_slow(self) -> None:
        self.result["slow"] = run = self._slow_run(1)
        self.say(
            f"slow: {run['seconds']} s against an ideal of {run['ideal_seconds']} s "
            f"({run['ratio_to_ideal']}×), {run['round_trips_per_s']}/s; posting took {run['posting_seconds']} s, "
            f"peak DMS calls in flight {run['dms_calls_in_flight_peak']}"
        )

    def run_scaleout(self) -> None:
        system = self.system
        one = self.result.get("slow")
        if one is None:
            one = self._slow_run(1)
        self.say("scale-out: starting a second DMS adapter process")
        system.start_dms("dms2")
        system.wait_consumers(dms=2)
        try:
            two = self._slow_run(2)
        finally:
            code = system.stop_process("dms2")
            if code != 0:
                self.errors.append(f"dms2 exited with {code}")
            system.wait_consumers(dms=1)
        speedup = _ratio(two["round_trips_per_s"], one["round_trips_per_s"], 2)
        self.result["scaleout"] = {
            "one": {
                k: one[k]
                for k in (
                    "seconds",
                    "round_trips_per_s",
                    "ratio_to_ceiling",
                    "ratio_to_ideal",
                    "dms_calls_in_flight_peak",
                    "posting_seconds",
                )
            },
            "two": {
                k: two[k]
                for k in (
                    "seconds",
                    "round_trips_per_s",
                    "ratio_to_ceiling",
                    "ratio_to_ideal",
                    "dms_calls_in_flight_peak",
                    "posting_seconds",
                    "ideal_seconds",
                )
            },
            "speedup": speedup,
            "two_adapters_run": two,
        }
        self.say(f"scale-out: one adapter {one['round_trips_per_s']}/s, two {two['round_trips_per_s']}/s ({speedup}×)")

    def run_bound(self) -> None:
        """Runs 4 and 6 again with each DMS adapter held to a tighter limit, `bound_limit` calls under way at once
        (DMS_MAX_CONCURRENCY, default 10, against the default 32 of runs 4 and 6), as one would set for a fragile
        system. The prefetch is five times the limit, so that the calls stay busy while the messages whose call is
        done wait for their confirm and inbox write; and the limit is low enough that the adapters, not the two
        cores, limit the run (the history: docs/performance.md)."""
        a, system = self.args, self.system
        bound = a.bound_limit
        env = {"ESI_PREFETCH": str(5 * bound), "DMS_MAX_CONCURRENCY": str(bound)}
        self.say(f"tight limit: restarting the DMS adapter with DMS_MAX_CONCURRENCY={bound}, prefetch {5 * bound}")
        self._stop_dms("dms")
        system.start_dms("dms", env=env)
        system.wait_consumers(dms=1)
        try:
            one = self._slow_run(1, bound=bound)
            system.start_dms("dms2", env=env)
            system.wait_consumers(dms=2)
            try:
                two = self._slow_run(2, bound=bound)
            finally:
                self._stop_dms("dms2")
        finally:
            self._stop_dms("dms")
            system.start_dms("dms")
            system.wait_consumers(dms=1)
        speedup = _ratio(two["round_trips_per_s"], one["round_trips_per_s"], 2)
        self.result["bound"] = {
            "dms_max_concurrency": bound,
            "prefetch": 5 * bound,
            "one": one,
            "two": two,
            "speedup": speedup,
        }
        self.say(
            f"tight limit {bound}: one adapter {one['seconds']} s = {one['ratio_to_ideal']}× ideal, "
            f"two {two['seconds']} s = {two['ratio_to_ideal']}× ideal; speed-up {speedup}×"
        )

    def _stop_dms(self, name: str) -> None:
        code = self.system.stop_process(name)
        if code != 0:
            self.errors.append(f"{name} exited with {code}")
        self.system.wait_consumers(dms=len(self.system.dms_processes()))

    # --- 5. backlog ---------------------------------------------------------------------------------------------

    def run_backlog(self) -> None:
        a, system = self.args, self.system
        for name in system.dms_processes():
            code = system.stop_process(name)
            if code != 0:
                self.errors.append(f"{name} exited with {code} when stopped for the backlog run")
        system.wait_consumers(dms=0)
        self.say(f"backlog: publishing {a.backlog} create_user envelopes to main_exchange with the DMS adapter stopped")
        seconds = asyncio.run(publish_backlog(system.amqp_url, a.backlog))
        ready, _ = asyncio.run(system.queue_state("dms_queue"))
        if ready < a.backlog:
            self.errors.append(f"backlog: only {ready} of {a.backlog} messages in dms_queue")
        self.say(
            f"backlog: {ready} messages in dms_queue ({a.backlog / seconds:.0f}/s published); starting the adapter"
        )
        system.reset_fakes()
        system.sampler.mark("backlog")
        t0 = time.perf_counter()
        system.start_dms("dms")
        trace: list[tuple[float, int]] = []
        consuming_at: float | None = None
        remaining = ready
        deadline = t0 + a.backlog_sample_seconds
        while time.perf_counter() < deadline:
            system.check_alive()
            remaining, consumers = asyncio.run(system.queue_state("dms_queue"))
            now = time.perf_counter()
            if consumers and consuming_at is None:
                consuming_at = now
            if consuming_at is not None:
                trace.append((now - consuming_at, remaining))
            if remaining == 0:
                break
            time.sleep(0.5)
        system.sampler.close("backlog")
        drained = ready - remaining
        window = trace[-1][0] if trace else None
        rate = drained / window if window else None
        processes = system.sampler.report("backlog")
        self.result["backlog"] = {
            "messages": a.backlog,
            "in_queue_before": ready,
            "publish_seconds": round(seconds, 2),
            "publish_rate_per_s": round(a.backlog / seconds, 1),
            "adapter_start_seconds": round(consuming_at - t0, 2) if consuming_at else None,
            "sampled_seconds": round(window, 1) if window else None,
            "drained": drained,
            "remaining_when_stopped": remaining,
            "fully_drained": remaining == 0,
            "drain_rate_per_s": round(rate, 1) if rate else None,
            "ratio_to_ceiling": _ratio(rate, self.ceiling),
            "dms_peak_rss_mb": (processes.get("dms") or {}).get("peak_rss_mb"),
            "processes": processes,
            "queue_trace": [[round(t, 1), r] for t, r in trace[:: max(1, len(trace) // 40)]],
            "note": "the answers name requests the store never saw: the 1C side logs a warning for each and "
            "stores nothing",
        }
        self.say(
            f"backlog: drained {drained} in {window and round(window, 1)} s "
            f"({self.result['backlog']['drain_rate_per_s']}/s); DMS adapter peak RSS "
            f"{self.result['backlog']['dms_peak_rss_mb']} MB"
        )

    # --- 5. memory ----------------------------------------------------------------------------------------------

    def memory_section(self) -> None:
        sampler = getattr(self.system, "sampler", None)
        if sampler is None:
            return
        phases = {"e2e": "e2e", "slow": ["slow-1", "slow-2"], "backlog": "backlog"}
        memory: dict[str, Any] = {}
        for label, names in phases.items():
            names = [names] if isinstance(names, str) else names
            merged: dict[str, float] = {}
            for name in names:
                try:
                    report = sampler.report(name)
                except KeyError:
                    continue
                for process, figures in report.items():
                    if "peak_rss_mb" in figures:
                        merged[process] = max(merged.get(process, 0.0), figures["peak_rss_mb"])
            if merged:
                memory[label] = {"peak_rss_mb": merged}
        if memory:
            worst: dict[str, float] = {}
            for figures in memory.values():
                for process, value in figures["peak_rss_mb"].items():
                    worst[process] = max(worst.get(process, 0.0), value)
            memory["worst_peak_rss_mb"] = worst
            memory["target_applies_to"] = list(ADAPTERS)
            memory["method"] = (
                "VmRSS sampled every 100 ms from /proc/<pid>/status, and VmHWM after resetting it "
                "(clear_refs 5) at the start of each run"
            )
            self.result["memory"] = memory

    # --- targets, chart, output ---------------------------------------------------------------------------------

    def targets(self) -> None:
        r = self.result
        targets: list[dict[str, Any]] = []

        def add(name: str, value: float | None, limit: str, passed: bool | None, unit: str = "") -> None:
            targets.append(
                {
                    "target": name,
                    "value": value,
                    "unit": unit,
                    "limit": limit,
                    "pass": passed if value is not None else None,
                }
            )

        if r["e2e"]:
            ratio = r["e2e"]["best"]["ratio_to_ceiling"]
            add(
                "end-to-end throughput ≥ 0.5 × ceiling",
                ratio,
                f"≥ {TARGET_E2E_RATIO}",
                ratio is not None and ratio >= TARGET_E2E_RATIO,
                "× ceiling",
            )
        if r["ingress"]:
            p99 = r["ingress"]["p99_ms"]
            add(
                "ingress p99 ≤ 50 ms at half max rate",
                p99,
                f"≤ {TARGET_INGRESS_P99_MS:g} ms",
                p99 is not None and p99 <= TARGET_INGRESS_P99_MS,
                "ms",
            )
        if r["slow"]:
            ratio = r["slow"]["ratio_to_ideal"]
            add(
                "slow downstream ≤ 1.5 × ideal",
                ratio,
                f"≤ {TARGET_SLOW_RATIO}",
                ratio is not None and ratio <= TARGET_SLOW_RATIO,
                "× ideal",
            )
        if r["memory"]:
            worst = {k: v for k, v in r["memory"]["worst_peak_rss_mb"].items() if k in ADAPTERS}
            for process, value in sorted(worst.items()):
                add(f"peak RSS of {process} ≤ 150 MB", value, f"≤ {TARGET_RSS_MB:g} MB", value <= TARGET_RSS_MB, "MB")
        if r["scaleout"]:
            speedup = r["scaleout"]["speedup"]
            add(
                "two DMS adapters ≥ 1.7 × one (slow run)",
                speedup,
                f"≥ {TARGET_SCALEOUT}",
                speedup is not None and speedup >= TARGET_SCALEOUT,
                "×",
            )
        if r.get("sets"):
            ratio = r["sets"]["two_vs_one"]
            add(SETS_TARGET, ratio, f"≥ {TARGET_SETS}", ratio is not None and ratio >= TARGET_SETS, "×")
        if r.get("bound"):
            bound = r["bound"]
            ratio = bound["one"]["ratio_to_ideal"]
            add(
                f"slow downstream ≤ 1.5 × ideal (tight limit {bound['dms_max_concurrency']})",
                ratio,
                f"≤ {TARGET_SLOW_RATIO}",
                ratio is not None and ratio <= TARGET_SLOW_RATIO,
                "× ideal",
            )
            speedup = bound["speedup"]
            add(
                f"two DMS adapters ≥ 1.7 × one (tight limit {bound['dms_max_concurrency']})",
                speedup,
                f"≥ {TARGET_SCALEOUT}",
                speedup is not None and speedup >= TARGET_SCALEOUT,
                "×",
            )
        if r.get("abuse"):
            from bench import abuse

            ab = r["abuse"]
            ratio = ab["throughput_ratio"]
            add(
                ABUSE_THROUGHPUT,
                ratio,
                f"≥ {abuse.TARGET_THROUGHPUT_RATIO}",
                ratio is not None and ratio >= abuse.TARGET_THROUGHPUT_RATIO,
                "×",
            )
            ratio = ab["p99_ratio"]
            add(
                ABUSE_P99,
                ratio,
                f"≤ {abuse.TARGET_P99_RATIO}",
                ratio is not None and ratio <= abuse.TARGET_P99_RATIO,
                "×",
            )
            flood = ab["flood"]
            # the value: attempts answered before the first 429 (all of them when none was: a FAIL, not a blank)
            first = flood["answered_429_after"]
            add(
                ABUSE_FLOOD,
                first if first is not None else flood["attempts"],
                "429 from the threshold on",
                bool(flood["all_429_after_threshold"]),
                "attempts",
            )
        for key, name in (("fairness", FAIRNESS_P99), ("fairness_esi_first", FAIRNESS_P99_FIRST)):
            if (r.get(key) or {}).get("p99_ratio") is not None:
                from bench import fairness

                ratio = r[key]["p99_ratio"]
                add(name, ratio, f"≤ {fairness.TARGET_P99_RATIO}", ratio <= fairness.TARGET_P99_RATIO, "×")
        if r.get("drain") and r["drain"].get("targets"):
            from bench import drain

            units = {drain.DRAIN_TARGET: "× steady", drain.FRESH_TARGET: "s", drain.ALARM_TARGET: "alarms"}
            for name, (value, op, limit) in r["drain"]["targets"].items():
                add(name, value, f"{op} {limit:g}", bool(drain.passed(value, op, limit)), units[name])
        if r.get("history"):
            from bench import history

            for name, (value, op, limit) in r["history"]["targets"].items():
                add(
                    f"history ({_fmt(r['history']['n'])} past requests): {name} {op} {limit:g}",
                    value,
                    f"{op} {limit:g}",
                    bool(history.passed(value, op, limit)),
                )
        r["targets"] = targets

    def make_chart(self) -> None:
        path = Path(self.args.chart) if self.args.chart else Path(self.args.out).with_name("chart.png")
        if chart.available():  # the growth charts (history, sets, drain) beside it, for the sections this run has
            self.result["growth_charts"] = {
                section: {**made, "path": made["path"] and self._shown(Path(made["path"]))}
                for section, made in chart.make_growth_charts(self.result, path.parent).items()
            }
        if not self.result.get("e2e"):
            self.result["chart"] = {"path": None, "skipped": "no end-to-end runs"}
            return
        if not chart.available():
            self.result["chart"] = {"path": None, "skipped": "matplotlib is not installed: pip install -e '.[bench]'"}
            return
        try:
            chart.make_chart(self.result, path)
            self.result["chart"] = {"path": self._shown(path)}
        except Exception as exc:  # noqa: BLE001 - a chart is not worth the figures
            self.result["chart"] = {"path": None, "skipped": f"{type(exc).__name__}: {exc}"}

    @staticmethod
    def _shown(path: Path) -> str:
        """`path` relative to the repository when inside it: the results are committed and read on other machines."""
        shown = path.resolve()
        return str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown)

    def write(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, ensure_ascii=False, indent=2) + "\n")
        tmp.replace(out)


def _cpu_per_request(
    processes: dict[str, dict[str, Any]], completed: int, only: tuple[str, ...] | None = None
) -> dict[str, float]:
    """CPU ms per completed request of each process of a run (all but the machine's total, or those in `only`)."""
    return {
        name: round(1000 * p["cpu_s"] / max(completed, 1), 2)
        for name, p in processes.items()
        if name != "machine(all)" and (only is None or name in only)
    }


def _machine_share(processes: dict[str, dict[str, Any]], nproc: int) -> dict[str, float | None]:
    """How busy the machine's CPUs were during a run: in all, by the bench's own processes, and by anyone else."""
    total = (processes.get("machine(all)") or {}).get("cpu_pct_of_one_core")
    ours = sum(p["cpu_pct_of_one_core"] for name, p in processes.items() if name != "machine(all)")
    return {
        "busy_pct": round(total / nproc, 1) if total is not None else None,
        "bench_pct": round(ours / nproc, 1),
        "others_pct": round(max(0.0, total - ours) / nproc, 1) if total is not None else None,
    }


def _dms_state(system: Any) -> dict[str, Any]:
    try:
        return system.esi.dms_state()
    except Exception:  # noqa: BLE001 - a diagnostic only
        return {}


def _windowed_p99(started: list[float], latencies: list[float], window: float) -> list[float | None]:
    """The p99 of the latencies of the requests started in each `window` seconds: are the slow ones clustered?"""
    if not started:
        return []
    first = min(started)
    buckets: dict[int, list[float]] = {}
    for at, latency in zip(started, latencies):
        buckets.setdefault(int((at - first) // window), []).append(latency)
    return [ms(percentile(buckets.get(i, []), 99)) for i in range(max(buckets) + 1)]


def _in_flight_trace(call_times: list[float], latency_s: float, step: float = 0.5) -> list[list[float]]:
    """[seconds since the first call, calls the fake DMS held at that moment] every `step` seconds."""
    if not call_times:
        return []
    times = sorted(call_times)
    first, last = times[0], times[-1] + latency_s
    trace, t = [], first
    while t <= last:
        trace.append([round(t - first, 2), sum(1 for c in times if c <= t < c + latency_s)])
        t += step
    return trace


def _peak_in_flight(call_times: list[float], latency_s: float) -> int | None:
    """With every call taking `latency_s`, the most calls the fake DMS held at once."""
    if not call_times:
        return None
    times = sorted(call_times)
    peak, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - latency_s:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


# --- the table --------------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    verdicts = {t["target"]: t for t in result.get("targets", [])}

    def row(label: str, value: str, ratio: Any = None, target: str = "", name: str | None = None) -> None:
        verdict = ""
        if name and name in verdicts:
            t = verdicts[name]
            verdict = {True: "PASS", False: "FAIL", None: "—"}[t["pass"]]
            target = target or t["limit"]
        rows.append((label, value, _fmt(ratio, "×") if ratio is not None else "", target, verdict))

    ceiling = result.get("ceiling")
    if ceiling:
        row(
            "1. ceiling (bare aio-pika, quorum)",
            f"{_fmt(ceiling['round_trips_per_s'])}/s  "
            f"p50 {_fmt(ceiling['p50_ms'])} ms  p99 {_fmt(ceiling['p99_ms'])} ms",
            1.0,
        )
        if ceiling.get("cpu_ms_per_round_trip") is not None:
            row(
                "   ceiling CPU ms per round trip",
                f"{_fmt(ceiling['cpu_ms_per_round_trip'])} (requester "
                f"{_fmt(ceiling.get('requester_cpu_ms'))}, responder {_fmt(ceiling.get('responder_cpu_ms'))})",
            )
    e2e = result.get("e2e")
    if e2e:
        for r in e2e["runs"]:
            row(
                f"2. e2e create_user  C={r['concurrency']}  N={r['n']}",
                f"{_fmt(r['round_trips_per_s'])}/s  p50 {_fmt(r['p50_ms'])}  p95 {_fmt(r['p95_ms'])}  "
                f"p99 {_fmt(r['p99_ms'])} ms",
                r["ratio_to_ceiling"],
            )
        best = e2e["best"]
        row(
            f"   best (C={best['concurrency']})",
            f"{_fmt(best['round_trips_per_s'])}/s",
            best["ratio_to_ceiling"],
            name="end-to-end throughput ≥ 0.5 × ceiling",
        )
        run = next(r for r in e2e["runs"] if r["concurrency"] == best["concurrency"])
        stages = run.get("stages") or {}
        if stages.get("requests"):
            row(
                f"   where the time goes, p50 ms (C={run['concurrency']:d})",
                "  ".join(f"{k} {_fmt(stages[k]['p50_ms'])}" for k in ("api", "relay", "to_dms", "back", "poll")),
            )
            stored = stages["to_stored"]
            row(
                "   POST → answer stored (no polling)",
                f"p50 {_fmt(stored['p50_ms'])}  p95 {_fmt(stored['p95_ms'])}  p99 {_fmt(stored['p99_ms'])} ms",
            )
        cpu = run.get("cpu_ms_per_request") or {}
        if cpu:
            row("   CPU ms per request, by process", "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(cpu.items())))
        ratios = {k: v for k, v in (run.get("cpu_ratio_to_ceiling") or {}).items() if v is not None}
        if ratios:
            row(
                "   same ÷ ceiling's CPU per round trip", "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(ratios.items()))
            )
        polled = e2e.get("by_long_poll")
        if polled:
            row(
                f"   same, POST then long poll (C={polled['concurrency']})",
                f"{_fmt(polled['round_trips_per_s'])}/s  p50 {_fmt(polled['p50_ms'])}  p99 {_fmt(polled['p99_ms'])} ms",
                polled["ratio_to_ceiling"],
            )
            cpu = polled.get("cpu_ms_per_request") or {}
            row("   CPU ms per request, by process", "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(cpu.items())))
    peer = result.get("peer")
    if peer and peer.get("skipped"):
        row("2b. naive peer (FastStream+FastAPI)", f"skipped: {peer['skipped']}")
    elif peer:
        row(
            f"2b. naive peer (FastStream+FastAPI) C={peer['concurrency']}",
            f"{_fmt(peer['peer_per_s'])}/s vs esi {_fmt(peer['esi_per_s'])}/s ({peer['order']}): "
            f"esi ÷ peer = {_fmt(peer['esi_over_peer'])}",
            peer["peer_ratio_to_ceiling"],
        )
        cpu = (peer["peer_runs"][-1].get("cpu_ms_per_request") or {}) if peer["peer_runs"] else {}
        if cpu:
            row("   peer CPU ms per request, by process", "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(cpu.items())))
    ingress = result.get("ingress")
    if ingress:
        row(
            f"3. ingress POST→202 at {_fmt(ingress['rate_per_s'])}/s",
            f"p50 {_fmt(ingress['p50_ms'])}  p95 {_fmt(ingress['p95_ms'])}  p99 {_fmt(ingress['p99_ms'])} ms",
            ingress["ratio_to_ceiling"],
            name="ingress p99 ≤ 50 ms at half max rate",
        )
        harder = ingress.get("at_prefer_half")
        if harder:
            row(
                f"   at half the Prefer: wait maximum, {_fmt(harder['rate_per_s'])}/s",
                f"p50 {_fmt(harder['p50_ms'])}  p95 {_fmt(harder['p95_ms'])}  p99 {_fmt(harder['p99_ms'])} ms",
                harder["ratio_to_ceiling"],
            )
    slow = result.get("slow")
    if slow:
        row(
            f"4. slow DMS {slow['latency_ms']} ms, N={slow['n']}, limit {slow['dms_max_concurrency']}, 1 adapter",
            f"{_fmt(slow['seconds'])} s vs ideal {_fmt(slow['ideal_seconds'])} s = {_fmt(slow['ratio_to_ideal'])}×",
            slow["ratio_to_ceiling"],
            name="slow downstream ≤ 1.5 × ideal",
        )
        row(
            "   throughput / posting time / DMS calls in flight",
            f"{_fmt(slow['round_trips_per_s'])}/s / {_fmt(slow['posting_seconds'])} s / "
            f"{_fmt(slow['dms_calls_in_flight_peak'])}",
        )
    memory = result.get("memory")
    if memory:
        for label in ("e2e", "slow", "backlog"):
            if label in memory:
                peaks = memory[label]["peak_rss_mb"]
                row(f"5. peak RSS during {label} (MB)", "  ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())))
        for t in result.get("targets", []):
            if t["target"].startswith("peak RSS of"):
                row(f"   {t['target']}", _fmt(t["value"], "MB"), name=t["target"])
    backlog = result.get("backlog")
    if backlog:
        row(
            f"   backlog {backlog['messages']:,}: drain by one adapter",
            f"{_fmt(backlog['drain_rate_per_s'])}/s, {backlog['drained']:,} in {_fmt(backlog['sampled_seconds'])} s",
            backlog["ratio_to_ceiling"],
        )
    scaleout = result.get("scaleout")
    if scaleout:
        row(
            "6. scale-out, slow run: 1 → 2 DMS adapters",
            f"{_fmt(scaleout['one']['round_trips_per_s'])}/s → {_fmt(scaleout['two']['round_trips_per_s'])}/s "
            f"= {_fmt(scaleout['speedup'])}×",
            scaleout["two"]["ratio_to_ceiling"],
            name="two DMS adapters ≥ 1.7 × one (slow run)",
        )
    sets = result.get("sets")
    if sets:
        row(
            f"6c. sets ({sets['store']}): 1 → 2 (API + DMS + CRM)",
            f"{_fmt(sets['one']['round_trips_per_s'])}/s → {_fmt(sets['two']['round_trips_per_s'])}/s "
            f"= {_fmt(sets['two_vs_one'])}×; p99 {_fmt(sets['one']['p99_ms'])} → {_fmt(sets['two']['p99_ms'])} ms",
            name=SETS_TARGET,
        )
    bound = result.get("bound")
    if bound:
        one, two = bound["one"], bound["two"]
        row(
            f"4b. slow DMS, tight limit {bound['dms_max_concurrency']}, 1 adapter",
            f"{_fmt(one['seconds'])} s vs ideal {_fmt(one['ideal_seconds'])} s = {_fmt(one['ratio_to_ideal'])}×",
            one["ratio_to_ceiling"],
            name=f"slow downstream ≤ 1.5 × ideal (tight limit {bound['dms_max_concurrency']})",
        )
        row(
            "6b. scale-out, tight limit: 1 → 2 DMS adapters",
            f"{_fmt(one['round_trips_per_s'])}/s → {_fmt(two['round_trips_per_s'])}/s = {_fmt(bound['speedup'])}× "
            f"(two: {_fmt(two['seconds'])} s vs ideal {_fmt(two['ideal_seconds'])} s)",
            two["ratio_to_ceiling"],
            name=f"two DMS adapters ≥ 1.7 × one (tight limit {bound['dms_max_concurrency']})",
        )
    abuse = result.get("abuse")
    if abuse:
        row(
            f"8. abuse: a client on {_fmt(abuse.get('connections'))} connections, alone → beside 300 wrong passwords/s",
            f"{_fmt(abuse['alone']['throughput_per_s'])}/s → {_fmt(abuse['flooded']['throughput_per_s'])}/s "
            f"= {_fmt(abuse['throughput_ratio'])}×",
            name=ABUSE_THROUGHPUT,
        )
        row(
            "   steady client's POST p99, alone → beside the flood",
            f"{_fmt(abuse['alone']['p99_ms'])} → {_fmt(abuse['flooded']['p99_ms'])} ms = {_fmt(abuse['p99_ratio'])}×",
            name=ABUSE_P99,
        )
        flood = abuse["flood"]
        row(
            "   the flood: answered 429 after",
            f"{_fmt(flood['answered_429_after'])} of {_fmt(flood['attempts'])} attempts; "
            + "  ".join(f"{k}: {v}" for k, v in flood["statuses"].items()),
            name=ABUSE_FLOOD,
        )
    fairness = result.get("fairness")
    first = result.get("fairness_esi_first") or {}
    if fairness:
        loop = fairness["loop"]
        quota = fairness["loop_quota"]
        row(
            f"9. fairness: erp {_fmt(fairness['erp_rate_per_s'])}/s, alone → beside loop at its quota",
            f"p99 {_fmt(fairness['alone']['p99_ms'])} → {_fmt(fairness['beside_loop']['p99_ms'])} ms "
            f"= {_fmt(fairness['p99_ratio'])}×",
            name=FAIRNESS_P99,
        )
        if first.get("p99_ratio") is not None:
            row(
                "   the same, esi's processes and erp's client first on the CPU (not the broker, not loop's client)",
                f"p99 {_fmt(first['alone']['p99_ms'])} → {_fmt(first['beside_loop']['p99_ms'])} ms "
                f"= {_fmt(first['p99_ratio'])}×",
                name=FAIRNESS_P99_FIRST,
            )
        row(
            "   erp's throughput, alone → beside loop",
            f"{_fmt(fairness['alone']['throughput_per_s'])}/s → {_fmt(fairness['beside_loop']['throughput_per_s'])}/s "
            f"= {_fmt(fairness['throughput_ratio'])}×",
        )
        share = fairness["loop_refused_429_share"]
        row(
            f"   loop ({quota['rate']}/s, burst {quota['burst']}, {quota['in_flight']} in flight), "
            f"{loop['connections']} connections",
            f"{_fmt(loop['attempts_per_s'])}/s tried, {_fmt(loop['accepted_per_s'])}/s accepted, "
            f"{_fmt(share * 100 if share is not None else None)}% refused 429",
        )
    dlq = result.get("dlq")
    if dlq and dlq.get("replay"):
        row(
            f"10. dlq: {_fmt(dlq['n'])} dead letters (seeded), console first page p95 / filtered p95",
            f"{_fmt(dlq['first_page']['p95_ms'])} / {_fmt(dlq['filtered_page']['p95_ms'])} ms",
            target="< 300 ms",
        )
        row("    esi dlq list --limit 50", f"{_fmt(dlq['cli_list']['median_s'])} s", target="< 1 s")
        replay = dlq["replay"]
        row(
            f"    replay job at {replay['rate_limit']}/s: API RSS growth",
            f"+{_fmt(replay['rss_growth_mb'])} MB ({_fmt(replay['replayed'])} in {_fmt(replay['seconds'])} s, "
            f"{_fmt(replay['rate_per_s'])}/s)",
            target="< 50 MB",
        )
    dr = result.get("drain")
    if dr and dr.get("targets"):
        from bench import drain

        fresh, broker = dr["fresh"], dr["broker"]
        row(
            f"12. drain: {_fmt(dr['n'])} accepted while the DMS was down, drain ÷ steady",
            f"{_fmt(dr['drain_rate_per_s'])}/s ÷ {_fmt(dr['steady']['rate_per_s'])}/s = {_fmt(dr['drain_ratio'])}×",
            name=drain.DRAIN_TARGET,
        )
        row(
            f"    fresh client at {_fmt(fresh['rate_per_s'])}/s during the drain: p99 (done within 5 s)",
            f"{_fmt(fresh['p99_s'])} s ({_fmt(fresh['done_within_5s'])} of {_fmt(fresh['posted'])})",
            name=drain.FRESH_TARGET,
        )
        row(
            "    broker: memory alarms, peak memory (erlang:memory) / RSS",
            f"{len(broker['alarms'])} alarms, {_fmt(broker['peak_memory_mb'])} / {_fmt(broker['peak_rss_mb'])} MB",
            name=drain.ALARM_TARGET,
        )
    hist = result.get("history")
    if hist:
        for store in ("sqlite", "postgres"):
            found = hist.get(store)
            if not found:
                continue
            slowest = max(found["pages"].items(), key=lambda kv: kv[1]["p95_ms"])
            row(
                f"11. history ({store}): {_fmt(hist['n'])} past requests, slowest page p95 ({slowest[0]})",
                f"{_fmt(slowest[1]['p95_ms'])} ms",
                target="< 100 ms",
            )
            row(
                "    end to end, full ÷ empty store: throughput / p99",
                f"{_fmt(found['throughput_ratio'])}× / {_fmt(found['p99_ratio'])}×",
                target="≥ 0.95× / ≤ 1.1×",
            )
            ret = found["retention"]
            row(
                f"    retention deleting {_fmt(ret['deleted_requests'])} requests under traffic: ÷ before",
                f"{_fmt(ret['ratio'])}× ({_fmt(ret['during_per_s'])}/s)",
                target="≥ 0.9×",
            )
    client = result.get("client") or {}
    if client.get("verdict"):
        row("   client (bench process)", client["verdict"])
    if client.get("machine_cpu_busy_pct_at_best") is not None:
        row(
            "   machine CPU busy at best e2e run",
            f"{_fmt(client['machine_cpu_busy_pct_at_best'])}% of all cores; "
            f"bench processes {_fmt(client['bench_processes_cpu_pct_of_machine_at_best'])}%, "
            f"others {_fmt(client['others_cpu_pct_of_machine_at_best'])}%",
        )

    headers = ("run", "figure", "÷ ceiling", "target", "")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(line)
    machine = result.get("machine") or {}
    print(
        f"machine: {machine.get('nproc')} × {machine.get('cpu_model')}, {machine.get('memory_mb')} MB, "
        f"RabbitMQ {machine.get('rabbitmq_version')}, Python {machine.get('python_version')}; "
        f"store {(result.get('config') or {}).get('store')}; {result.get('duration_s')} s"
    )
    chart_info = result.get("chart") or {}
    if chart_info.get("path"):
        print(f"chart: {chart_info['path']}")
    elif chart_info.get("skipped"):
        print(f"chart: skipped ({chart_info['skipped']})")
    for section, made in (result.get("growth_charts") or {}).items():
        print(f"chart of section {section}: {made.get('path') or 'skipped (' + str(made.get('skipped')) + ')'}")
    if result.get("errors"):
        print("ERRORS:")
        for error in result["errors"]:
            print(f"  - {error}")
    print("result: " + ("ok" if result.get("ok") else "FAILED (see errors)"), flush=True)


# --- command line -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--n", type=int, help="requests per end-to-end run (default 2000; quick 100)")
    parser.add_argument("--concurrency", help="end-to-end concurrencies, comma-separated (default 16,64,128,256)")
    parser.add_argument("--skip", default="", help=f"sections to skip, comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"), help="the JSON file")
    parser.add_argument("--chart", help="the PNG (default: chart.png beside --out)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--prefetch", type=int, help="ESI_PREFETCH for the services (default: theirs, 200)")
    parser.add_argument("--ceiling-n", type=int)
    parser.add_argument("--ceiling-concurrency", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--ingress-seconds", type=float)
    parser.add_argument("--ingress-rate", type=float, help="fixed POST rate (default: half the best e2e rate)")
    parser.add_argument("--slow-n", type=int)
    parser.add_argument("--slow-latency-ms", type=int)
    parser.add_argument("--post-concurrency", type=int, help="connections posting in the slow runs")
    parser.add_argument(
        "--bound-limit",
        type=int,
        help="DMS_MAX_CONCURRENCY per adapter in the tight-limit runs 4b/6b (default 10; quick 5)",
    )
    parser.add_argument("--sets-n", type=int, help="requests per run of the sets section (default 3000; quick 100)")
    parser.add_argument("--sets-concurrency", type=int, help="concurrency of the sets section (default 128)")
    parser.add_argument("--backlog", type=int)
    parser.add_argument("--events-n", type=int, help="events per phase of section events (default 500; quick 40)")
    parser.add_argument("--dlq-n", type=int, help="dead letters of section dlq (default 100,000; quick 1,000)")
    parser.add_argument("--drain-n", type=int, help="backlog of section drain (default 100,000; quick 300)")
    parser.add_argument(
        "--drain-steady-n", type=int, help="requests of each steady run of section drain (default 3,000; quick 200)"
    )
    parser.add_argument(
        "--history-n", type=int, help="past requests of section history (default 1,000,000; quick 20,000)"
    )
    parser.add_argument(
        "--history-stores", help="stores of section history, comma-separated (default sqlite,postgres; quick --store)"
    )
    parser.add_argument("--backlog-sample-seconds", type=float)
    parser.add_argument(
        "--profile", metavar="DIR", help="record onec and dms with py-spy during the e2e run at the highest concurrency"
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--completion-timeout", type=float, help="seconds before a request counts as never completed")
    parser.add_argument(
        "--e2e-completion",
        choices=("prefer", "poll"),
        default="prefer",
        help="how run 2 learns a request completed: the POST waits for it (Prefer: wait=N; then one "
        "run at the best concurrency with long polls, for comparison) or POST then long poll",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if isinstance(args.concurrency, str):
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) to skip: {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    args.skip = skip
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
