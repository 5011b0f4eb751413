"""The `sets` section of `make bench` (issue 31, "more processes"): N create_user end to end with `Prefer: wait` on
one set of processes (onec, dms, crm) and on two (onec + onec2 behind the load split in half, dms + dms2, crm +
crm2), on one store and one broker, as a site adds processes when traffic grows. The ratio two ÷ one is what to
quote; it reports, it is not a test.

A request waited on at one API replica is often answered through the other one (the replicas' consumers share the
answers' queue): how soon the waiting replica hears of it is what this measures beside the capacity. On a machine
of two cores the second set adds no CPU, so the ratio there says whether the second set costs anything, not how far
it scales.

    python -m bench.sets [--store postgres|sqlite] [--n 3000] [--concurrency 128] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import Driver, Outcome, latency_summary  # noqa: E402
from bench.procs import machine_info  # noqa: E402

#: what each closed-loop POST asks to wait for its outcome, seconds (as run 2 of `bench.run`)
PREFER_WAIT_S = 30


async def _split(drivers: list[Driver], n: int, concurrency: int) -> tuple[list[Outcome], float]:
    """`n` requests at `concurrency`, split evenly across the drivers (one per API replica), run at once."""
    k = len(drivers)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(d.closed_loop(n // k + (i < n % k), max(1, concurrency // k)) for i, d in enumerate(drivers))
    )
    outcomes = [outcome for outcome, _ in results]
    ends = [o.last_completed for o in outcomes if o.last_completed is not None]
    return outcomes, (max(ends) if ends else time.perf_counter()) - started


def _summary(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    completed = sum(o.completed for o in outcomes)
    posted = sum(o.posted for o in outcomes)
    e2e = [v for o in outcomes for v in o.e2e]
    return {
        "posted": posted,
        "completed": completed,
        "all_completed": posted > 0 and completed == posted,
        "seconds": round(seconds, 2),
        "round_trips_per_s": round(completed / seconds, 1) if seconds > 0 else None,
        **latency_summary(e2e),
        "errors": [e for o in outcomes for e in o.errors][:5],
    }


def store_costs(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], requests: int
) -> dict[str, dict[str, float]]:
    """Per request and per process, what the store was asked between two readings of the counters: commits,
    writes (group-committed), and on PostgreSQL round trips (statements, BEGINs, commits, rollbacks, pings)."""
    costs: dict[str, dict[str, float]] = {}
    for name, now in after.items():
        then = before.get(name, {})
        delta = {kind: now[kind] - then.get(kind, 0.0) for kind in now}
        if not requests or not any(delta.values()):
            continue
        per = {kind: round(value / requests, 2) for kind, value in sorted(delta.items())}
        trips = sum(v for k, v in delta.items() if k != "writes")
        per["round_trips"] = round(trips / requests, 2)
        costs[name] = per
    return costs


def run(
    *,
    store: str = "postgres",
    n: int = 3000,
    concurrency: int = 128,
    warmup: int = 200,
    prefetch: int | None = None,
    completion_timeout: float = 120.0,
    say: Any = print,
) -> dict[str, Any]:
    from bench.system import BenchSystem

    result: dict[str, Any] = {"machine": machine_info(), "store": store, "n": n, "concurrency": concurrency}
    system = BenchSystem(store=store, prefetch=prefetch)
    try:
        say(f"sets: one set (onec, dms, crm) on {store}")
        system.start()
        first = Driver(system.api_url, completion_timeout=completion_timeout)
        first.prefer_wait = PREFER_WAIT_S
        asyncio.run(_split([first], warmup, min(concurrency, 32)))
        before = system.store_counters()
        one = _summary(*asyncio.run(_split([first], n, concurrency)))
        one["store_per_request"] = store_costs(before, system.store_counters(), one["completed"])
        say(f"sets: the store per request, one set: {json.dumps(one['store_per_request'])}")
        say(f"sets: one set {one['round_trips_per_s']}/s, p99 {one['p99_ms']} ms")
        say("sets: starting the second set (onec2, dms2, crm2)")
        second_url = system.start_second_set()
        second = Driver(second_url, completion_timeout=completion_timeout)
        second.prefer_wait = PREFER_WAIT_S
        asyncio.run(_split([first, second], warmup, min(concurrency, 32)))
        before = system.store_counters()
        two = _summary(*asyncio.run(_split([first, second], n, concurrency)))
        two["store_per_request"] = store_costs(before, system.store_counters(), two["completed"])
        say(f"sets: two sets {two['round_trips_per_s']}/s, p99 {two['p99_ms']} ms")
        system.check_alive()
    finally:
        result["exit_codes"] = system.close()
    result["one"], result["two"] = one, two
    result["two_vs_one"] = (
        round(two["round_trips_per_s"] / one["round_trips_per_s"], 3)
        if one["round_trips_per_s"] and two["round_trips_per_s"]
        else None
    )
    result["p99_two_vs_one"] = round(two["p99_ms"] / one["p99_ms"], 3) if one["p99_ms"] and two["p99_ms"] else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--n", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = args.n or (200 if args.quick else 3000)
    concurrency = args.concurrency or (32 if args.quick else 128)
    warmup = args.warmup if args.warmup is not None else (20 if args.quick else 200)
    result = run(
        store=args.store, n=n, concurrency=concurrency, warmup=warmup, say=lambda text: print(text, file=sys.stderr)
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
