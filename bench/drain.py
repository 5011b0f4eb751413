"""Section `drain` of `bench.run` (issue 31, item 2), or alone: `python -m bench.drain [--quick] [--n N]`.

A backlog built through the real path, then drained while 1C keeps sending, on a system of its own (SQLite store):

1. steady     N_steady create_user requests end to end (closed loop, `Prefer: wait`), before the outage and again
              after the drain: the steady rate, the mean of the two (interleaved, so that a machine that gets busier
              during the run moves both sides of the ratio);
2. outage     the fake DMS answers 503: the DMS adapter's breaker opens and it stops consuming; N requests are
              accepted by the API over HTTP meanwhile (nothing is dead-lettered: a message the breaker turns away
              goes back to `dms_queue` untried);
3. drain      the fault is cleared; from the moment the adapter consumes again until the store holds every backlog
              request completed: the drain rate, ÷ the steady rate (target ≥ 0.9);
4. fresh      during the drain, a client posting one new request every 1/rate s (10/s) with `Prefer: wait=30`, as
              an operator creating a user after an outage: its p99 (target ≤ 5 s) and the share done within 5 s;
5. broker     RabbitMQ's alarms (`rabbit_alarm:get_alarms()`) and the memory it uses (`erlang:memory(total)`)
              sampled through `rabbitmqctl eval` every few seconds from the outage to the end of the drain (target:
              no alarm), and its peak RSS.

It also checks what the drain must not do, as the test (tests/integration/test_backlog_drain.py) does at a small
size: every backlog request completed, one DMS call and one user per request (the fake DMS counts them), nothing
dead-lettered. A failure of those is an error of the run, not a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import JSON, Driver, client, latency_summary, ms, percentile  # noqa: E402
from bench.procs import machine_info  # noqa: E402

TARGET_DRAIN_RATIO = 0.9
TARGET_FRESH_P99_S = 5.0
#: the fresh client's rate and what each of its POSTs asks to wait (the API's maximum)
FRESH_RATE = 10.0
FRESH_WAIT_S = 30
#: how often the broker's alarms and memory are read (each `rabbitmqctl eval` costs the shared cores about 0.7 s)
BROKER_SAMPLE_S = 10.0
#: the breaker's longest wait between probes in this section: the recovery is seen within it (the default, 30 s,
#: would only add up to 30 s of nothing before the drain starts)
PROBE_MAX_S = 2
#: connections posting the backlog during the outage
POST_CONCURRENCY = 64

DRAIN_TARGET = "drain: backlog drain ≥ 0.9 × the steady rate"
FRESH_TARGET = "drain: fresh requests' p99 ≤ 5 s during the drain"
ALARM_TARGET = "drain: no broker memory alarm"


class BrokerSampler:
    """Reads the broker's alarms and memory every `interval` seconds on a thread of its own."""

    def __init__(self, interval: float = BROKER_SAMPLE_S) -> None:
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        self.sample()  # the state at the end, whatever the interval

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            out = subprocess.run(
                ["rabbitmqctl", "-q", "eval", "{rabbit_alarm:get_alarms(), erlang:memory(total)}."],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        text = out.stdout.strip()
        found = re.fullmatch(r"\{(\[.*\]),\s*(\d+)\}", text, re.S)
        if out.returncode != 0 or not found:
            self.errors.append(f"rabbitmqctl eval: {out.returncode} {text[:200]} {out.stderr[:200]}")
            return
        alarms = found.group(1)
        self.samples.append(
            {"t": time.time(), "alarms": None if alarms == "[]" else alarms, "memory_mb": int(found.group(2)) / 2**20}
        )

    @property
    def alarms(self) -> list[str]:
        return sorted({s["alarms"] for s in self.samples if s["alarms"]})

    @property
    def peak_memory_mb(self) -> float | None:
        return round(max(s["memory_mb"] for s in self.samples), 1) if self.samples else None


def _queue_state(system: Any, queue: str) -> tuple[int, int]:
    return asyncio.run(system.queue_state(queue))


def _lane_depth(system: Any) -> int | None:
    """Messages in the DMS work queue's backlog lane (None on a version without one)."""
    try:
        return _queue_state(system, "dms_queue.backlog")[0]
    except Exception:  # noqa: BLE001 - aio-pika's not-found, whichever class this version raises
        return None


def _count_completed(db_path: Path, prefix: str) -> dict[str, int]:
    """The backlog's requests in the store by status (read-only; the services keep writing)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute(
            "SELECT status, count(*) FROM esi_requests WHERE request_id >= ? AND request_id < ? GROUP BY status",
            (prefix, prefix + "\uffff"),
        ).fetchall()
    finally:
        connection.close()
    return {str(status): int(count) for status, count in rows}


async def _post_backlog(api_url: str, prefix: str, tag: str, n: int) -> tuple[int, list[str], float]:
    """POST n create_user requests (ids `<prefix><i>`), at most POST_CONCURRENCY at once; (accepted, errors, s)."""
    accepted = 0
    errors: list[str] = []
    gate = asyncio.Semaphore(POST_CONCURRENCY)
    async with client(POST_CONCURRENCY, api_url) as http:

        async def one(i: int) -> None:
            nonlocal accepted
            body = orjson.dumps(
                {
                    "request_id": f"{prefix}{i}",
                    "user_id": f"UB-{tag}-{i}",
                    "name": "Петров Пётр",
                    "email": f"backlog{i}@example.com",
                }
            )
            async with gate:
                for attempt in range(3):
                    try:
                        async with http.post("/send_to_dms", data=body, headers=JSON) as response:
                            await response.read()
                            if response.status == 202:
                                accepted += 1
                            elif len(errors) < 20:
                                errors.append(f"HTTP {response.status}")
                            return
                    except aiohttp.ClientConnectionError as exc:  # a kept-alive connection closed as it was reused
                        if attempt == 2 and len(errors) < 20:
                            errors.append(repr(exc))

        started = time.perf_counter()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.gather(*tasks)
        return accepted, errors, time.perf_counter() - started


class FreshClient:
    """1C during the drain: one create_user every 1/rate s, each with `Prefer: wait`, followed to its end."""

    def __init__(self, api_url: str, tag: str, rate: float) -> None:
        self.api_url = api_url
        self.tag = tag
        self.rate = rate
        self.latencies: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.errors: list[str] = []
        self.posted = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        # a connection per request in flight: at 10/s with up to 70 s each, several hundred
        async with client(1024, self.api_url) as http:
            pending: set[asyncio.Task[None]] = set()
            start = time.perf_counter()
            i = 0
            while not self._stop.is_set():
                due = start + i / self.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                task = asyncio.create_task(self._one(http, i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            if pending:
                await asyncio.gather(*pending)

    async def _one(self, http: aiohttp.ClientSession, i: int) -> None:
        request_id = f"fresh-{self.tag}-{i}"
        body = orjson.dumps(
            {"request_id": request_id, "user_id": f"UF-{self.tag}-{i}", "name": "Иванов Иван", "email": "f@example.com"}
        )
        self.posted += 1
        started = time.perf_counter()
        try:
            headers = {**JSON, "prefer": f"wait={FRESH_WAIT_S}"}
            async with http.post("/send_to_dms", data=body, headers=headers) as response:
                content = await response.read()
                status_code = response.status
            # a wait that ended unsettled (202): follow with long polls, as 1C would, up to twice the wait
            deadline = started + 2 * FRESH_WAIT_S + 10
            while status_code == 202 or (status_code == 200 and orjson.loads(content)["status"] not in _FINAL):
                if time.perf_counter() > deadline:
                    # censored: counted at the time it was given up on, so the p99 is a lower bound, not a lie
                    self.latencies.append(time.perf_counter() - started)
                    self._count("not_final")
                    return
                async with http.get(f"/requests/{request_id}", params={"wait": str(FRESH_WAIT_S)}) as response:
                    content = await response.read()
                    status_code = response.status
            if status_code != 200:
                self._count(f"http_{status_code}")
                return
            self.latencies.append(time.perf_counter() - started)
            self._count(str(orjson.loads(content)["status"]))
        except (aiohttp.ClientError, TimeoutError) as exc:
            if len(self.errors) < 20:
                self.errors.append(f"{type(exc).__name__}: {exc!r}")
            self._count("client_error")

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> dict[str, Any]:
        within = sum(1 for x in self.latencies if x <= TARGET_FRESH_P99_S)
        # a request never answered (a client error, an HTTP error) counts as not done within any limit
        missing = self.posted - len(self.latencies)
        p99 = percentile(self.latencies, 99)
        return {
            "rate_per_s": self.rate,
            "posted": self.posted,
            "outcomes": self.outcomes,
            "latency": latency_summary(self.latencies),
            "p99_s": round(p99, 2) if p99 is not None and missing * 100 < self.posted else None,
            "not_done_within_s": 2 * FRESH_WAIT_S + 10,
            "not_done": self.outcomes.get("not_final", 0) + missing,
            "done_within_5s": within,
            "done_within_5s_share": round(within / self.posted, 3) if self.posted else None,
            "errors": self.errors,
        }


_FINAL = ("completed", "failed", "dead_lettered")


def _steady(system: Any, n: int, concurrency: int, completion_timeout: float) -> dict[str, Any]:
    driver = Driver(system.api_url, completion_timeout=completion_timeout)
    driver.prefer_wait = FRESH_WAIT_S
    outcome, seconds = asyncio.run(driver.closed_loop(n, concurrency))
    return {
        "n": n,
        "concurrency": concurrency,
        "completed": outcome.completed,
        "all_completed": outcome.all_completed,
        "seconds": round(seconds, 2),
        "rate_per_s": round(outcome.completed / seconds, 1) if seconds > 0 else None,
        "p99_ms": ms(percentile(outcome.e2e, 99)),
    }


def run(
    n: int,
    *,
    steady_n: int,
    concurrency: int = 64,
    fresh_rate: float = FRESH_RATE,
    drain_timeout: float | None = None,
    completion_timeout: float = 120.0,
    say: Any = print,
) -> dict[str, Any]:
    """The section on a system of its own; the figures, with `errors` listing what makes them meaningless."""
    from bench.system import BenchSystem

    system = BenchSystem(store="sqlite")
    system.esi.extra_env["DMS_BREAKER_PROBE_MAX"] = str(PROBE_MAX_S)
    errors: list[str] = []
    result: dict[str, Any] = {"n": n, "errors": errors, "machine": machine_info()}
    tag = uuid.uuid4().hex[:8]
    prefix = f"drain-{tag}-"
    db_path = system.workdir / "esi.db"
    broker = BrokerSampler()
    try:
        say("drain: starting esi (fakes, onec, dms, crm) on a system of its own")
        system.start()
        asyncio.run(Driver(system.api_url).closed_loop(min(200, steady_n), 16))  # warm-up
        say(f"drain: steady rate, {steady_n} requests at C={concurrency} (before)")
        before = _steady(system, steady_n, concurrency, completion_timeout)

        say(f"drain: the DMS down (503); posting {n:,} requests to the API")
        system.reset_fakes()
        broker.start()
        system.sampler.mark("drain")
        system.dms_fault({"status": 503})
        accepted, post_errors, post_seconds = asyncio.run(_post_backlog(system.api_url, prefix, tag, n))
        if accepted < n:
            errors.append(f"drain: only {accepted} of {n} backlog requests accepted: {post_errors[:3]}")
        health = system.esi.processes["dms"].health_url
        circuit = httpx.get(f"{health}/readyz", timeout=30).json()["checks"]["circuit (dms)"]["state"]
        if circuit not in ("open", "half_open"):
            errors.append(f"drain: the DMS breaker is {circuit} while the DMS is down")

        # every accepted request waits in dms_queue (the relay publishes what the API committed; a message the
        # breaker turned away comes back from the ladder or is given back). The fake's /health answers while its
        # API fails, so the breaker half-opens at each probe: its consumer then holds up to a prefetch of them
        # (unacknowledged, not counted as ready) until the trial call fails and gives them back
        def queued() -> int:  # in the work queue or in its backlog lane, where there is one
            return _queue_state(system, "dms_queue")[0] + (_lane_depth(system) or 0)

        wait_until = time.monotonic() + max(60.0, n / 200)
        while queued() < accepted - system.prefetch and time.monotonic() < wait_until:
            system.check_alive()
            time.sleep(1)
        lane = _lane_depth(system)
        ready = _queue_state(system, "dms_queue")[0]
        say(
            f"drain: {ready:,} messages waiting in dms_queue, {lane} in its backlog lane "
            f"({accepted / post_seconds:.0f}/s accepted)"
        )

        say(f"drain: the DMS back; a fresh client at {fresh_rate:.0f}/s while the backlog drains")
        cleared = time.perf_counter()
        system.dms_fault({})
        while _queue_state(system, "dms_queue")[1] == 0:
            if time.perf_counter() - cleared > 120:
                raise RuntimeError("drain: the DMS adapter did not resume consuming within 120 s of the recovery")
            time.sleep(0.1)
        resumed = time.perf_counter()
        fresh = FreshClient(system.api_url, tag, fresh_rate)
        trace: list[tuple[float, int]] = []
        limit = drain_timeout if drain_timeout is not None else max(120.0, n / 50)

        async def drain() -> float | None:
            task = asyncio.create_task(fresh.run())
            done_at: float | None = None
            try:
                while time.perf_counter() - resumed < limit:
                    system.check_alive()
                    counts = await asyncio.to_thread(_count_completed, db_path, prefix)
                    completed = counts.get("completed", 0)
                    trace.append((time.perf_counter() - resumed, completed))
                    if sum(v for k, v in counts.items() if k in _FINAL) >= accepted:
                        done_at = time.perf_counter()
                        break
                    await asyncio.sleep(0.5)
            finally:
                fresh.stop()
                await task
            return done_at

        done_at = asyncio.run(drain())
        system.sampler.close("drain")
        broker.stop()
        counts = _count_completed(db_path, prefix)
        if done_at is None:
            errors.append(f"drain: not done within {limit:.0f} s of the recovery: {counts}")
        if counts.get("completed", 0) != accepted:
            errors.append(f"drain: {counts} of {accepted} backlog requests by status, all should be completed")
        drain_s = (done_at - resumed) if done_at else None
        drain_rate = accepted / drain_s if drain_s else None

        # the fresh requests the client gave up on (without the lane: every one posted late in the drain) are still
        # on their way: every request reaches the DMS once before anything is counted
        fresh_summary = fresh.summary()
        expected_calls = accepted + fresh_summary["posted"]
        settle_by = time.monotonic() + 180
        while True:
            state = httpx.get(f"{system.dms_url}/_fake/state", timeout=30).json()
            calls = state["counters"]["calls"]["create_user"]
            if calls >= expected_calls or time.monotonic() > settle_by:
                break
            time.sleep(1)
        dead_letters = _queue_state(system, "dms_dead_letter_queue")[0]
        if state["counters"]["created"] != calls or calls != expected_calls:
            errors.append(
                f"drain: {calls} create_user calls and {state['counters']['created']} users created at the DMS for "
                f"{expected_calls} requests (backlog and fresh): something was lost or done twice"
            )
        if dead_letters:
            errors.append(f"drain: {dead_letters} dead letters after the outage, expected none")

        say(f"drain: steady rate, {steady_n} requests at C={concurrency} (after)")
        after = _steady(system, steady_n, concurrency, completion_timeout)
        rates = [r["rate_per_s"] for r in (before, after) if r["rate_per_s"]]
        steady_rate = sum(rates) / len(rates) if rates else None
        for label, r in (("before", before), ("after", after)):
            if not r["all_completed"]:
                errors.append(f"drain: steady run {label}: {r['completed']} of {r['n']} completed")
        processes = system.sampler.report("drain")
        result.update(
            {
                "steady": {"before": before, "after": after, "rate_per_s": steady_rate and round(steady_rate, 1)},
                "outage": {
                    "accepted": accepted,
                    "post_seconds": round(post_seconds, 1),
                    "accepted_per_s": round(accepted / post_seconds, 1),
                    "in_queue_before_recovery": ready,
                    "in_lane_before_recovery": lane,
                    "post_errors": post_errors,
                },
                "resume_after_recovery_s": round(resumed - cleared, 2),
                "drain_seconds": drain_s and round(drain_s, 1),
                "drain_rate_per_s": drain_rate and round(drain_rate, 1),
                "drain_ratio": round(drain_rate / steady_rate, 3) if drain_rate and steady_rate else None,
                "by_status": counts,
                "dms_counters": state["counters"],
                "dead_letters": dead_letters,
                "fresh": fresh_summary,
                "broker": {
                    "alarms": broker.alarms,
                    "peak_memory_mb": broker.peak_memory_mb,
                    "samples": len(broker.samples),
                    "sample_errors": broker.errors[:5],
                    "peak_rss_mb": (processes.get("rabbitmq") or {}).get("peak_rss_mb"),
                    "memory_trace_mb": [
                        [round(s["t"] - broker.samples[0]["t"]), round(s["memory_mb"])] for s in broker.samples
                    ],
                },
                "processes": processes,
                "drain_trace": [[round(t, 1), c] for t, c in trace[:: max(1, len(trace) // 40)]],
            }
        )
        result["targets"] = {
            DRAIN_TARGET: (result["drain_ratio"], "≥", TARGET_DRAIN_RATIO),
            FRESH_TARGET: (fresh_summary["p99_s"], "≤", TARGET_FRESH_P99_S),
            ALARM_TARGET: (len(broker.alarms) if broker.samples else None, "≤", 0),
        }
        say(
            f"drain: {accepted:,} drained in {result['drain_seconds']} s ({result['drain_rate_per_s']}/s, "
            f"{result['drain_ratio']}× the steady {result['steady']['rate_per_s']}/s); fresh p99 "
            f"{fresh_summary['p99_s']} s, {fresh_summary['done_within_5s']} of {fresh_summary['posted']} within 5 s; "
            f"broker alarms {broker.alarms or 'none'}, peak memory {broker.peak_memory_mb} MB"
        )
    except Exception as exc:
        errors.append(f"drain: {type(exc).__name__}: {exc}")
        result["log_tail"] = system.log_tail(4000)
        raise
    finally:
        if broker._thread.is_alive():
            broker.stop()
        codes = system.close()
        result["exit_codes"] = codes
        if any(code != 0 for code in codes.values()):
            errors.append(f"drain: esi processes did not stop cleanly: {codes}")
    return result


def passed(value: float | None, op: str, limit: float) -> bool | None:
    if value is None:
        return None
    return value >= limit if op == "≥" else value <= limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 requests of backlog instead of 100,000")
    parser.add_argument("--n", type=int, help="the backlog (default 100,000; quick 300)")
    parser.add_argument("--steady-n", type=int, help="requests of each steady run (default 3,000; quick 200)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    n = args.n or (300 if args.quick else 100_000)
    steady_n = args.steady_n or (200 if args.quick else 3_000)
    result = run(n, steady_n=steady_n, concurrency=args.concurrency)
    text = json.dumps(result, indent=2, ensure_ascii=False, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
