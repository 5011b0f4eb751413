"""Section `fairness` of `bench.run`: one client at its quota beside another (issue 33).

The bench system runs the demo client alone, so this section starts a small system of its own (fakes, onec, dms; a
vhost of its own, SQLite in a temporary directory) with a clients file of two clients:

- `erp`, well behaved, quota unlimited: posts create_user requests at a fixed rate, open loop (as section `abuse`'s
  steady client), the whole time, while
- `loop`, a runaway client with a small quota (50/s, burst 50, 16 in flight), hammers `POST /send_to_dms` as fast as
  it can from `connections` connections at once (closed loop, in a process of its own so that its client's CPU
  does not slow erp's), most of it answered 429 `quota_exceeded` — in phases: `PHASE_S` seconds on, `PHASE_S` off,
  on a clock both processes share.

erp's requests are sorted by the phase they were sent in (those sent in the first `SETTLE_S` of a phase, while the
switch's effects settle, are left out): "alone" and "beside loop" are interleaved through the same seconds, so a
machine whose other load changes during the run (a shared 2-core box) moves both alike instead of one. Reported:
erp's POST p99 beside loop ÷ alone (target ≤ 1.33×, "one client at its quota does not raise another client's p99
by more than a third"), erp's throughput ratio, and loop's attempts, statuses and share refused 429.

    python -m bench.fairness hammer BASE_URL CLIENT PASSWORD CONNECTIONS SECONDS START PHASE
    (the runaway client, JSON out; on from START + PHASE for PHASE seconds, every other PHASE, START an epoch time)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import abuse  # noqa: E402 - after the path is set, for `python -m bench.fairness hammer`

TARGET_P99_RATIO = 1.33
#: seconds the runaway client is on, then off, alternately
PHASE_S = abuse.PHASE_S
#: erp's requests sent in the first this many seconds of a phase are not counted (the switch settles)
SETTLE_S = abuse.SETTLE_S
#: the runaway client's quota
LOOP_RATE, LOOP_BURST, LOOP_IN_FLIGHT = 50, 50, 16
ERP = ("erp", "erp-bench-pw")
LOOP = ("loop", "loop-bench-pw")


def clients_json() -> str:
    import argon2

    from esi.security import make_client_entry

    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return json.dumps(
        {
            "clients": [
                make_client_entry(
                    ERP[0], password=ERP[1], send=["dms:*"], rate="unlimited", in_flight="unlimited", hasher=cheap
                ),
                make_client_entry(
                    LOOP[0],
                    password=LOOP[1],
                    send=["dms:*"],
                    rate=LOOP_RATE,
                    burst=LOOP_BURST,
                    in_flight=LOOP_IN_FLIGHT,
                    hasher=cheap,
                ),
            ]
        }
    )


# --- the runaway client (a process of its own) ------------------------------------------------------------------


def phase_of(at: float, start: float, phase: float) -> int:
    """The phase (0, 1, 2, ...) an epoch time `at` is in; odd phases are the runaway client's."""
    return int((at - start) // phase)


async def hammer(
    base: str, auth: tuple[str, str], connections: int, seconds: float, start: float, phase: float
) -> dict[str, Any]:
    """`connections` closed loops of POST /send_to_dms in the odd phases from `start` (epoch) until `seconds` after
    it: statuses and answers per second of its phases."""
    import aiohttp

    statuses: dict[int, int] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        base_url=base,
        connector=connector,
        auth=aiohttp.BasicAuth(*auth),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:
        deadline = start + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = 0
            while (now := time.time()) < deadline:
                n = phase_of(now, start, phase)
                if n < 0 or n % 2 == 0:  # off (before `start` too): wait for the next phase
                    await asyncio.sleep(start + (n + 1) * phase - now)
                    continue
                i += 1
                body = {
                    "request_id": f"loop-{uuid.uuid4().hex}",
                    "user_id": f"L{w}-{i}",
                    "name": "Пётр",
                    "email": "petr@example.com",
                }
                try:
                    async with http.post("/send_to_dms", json=body) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(w) for w in range(connections)))
    elapsed = seconds / 2  # its phases: half the time
    attempts = sum(statuses.values())
    accepted = statuses.get(202, 0) + statuses.get(200, 0)
    return {
        "connections": connections,
        "seconds": round(elapsed, 2),
        "attempts": attempts,
        "attempts_per_s": round(attempts / elapsed, 1) if elapsed else None,
        "accepted_per_s": round(accepted / elapsed, 1) if elapsed else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "refused_429_share": round(statuses.get(429, 0) / attempts, 3) if attempts else None,
    }


def _start_hammer(base: str, connections: int, seconds: float, start: float) -> subprocess.Popen[str]:
    args = [base, *LOOP, str(connections), str(seconds), repr(start), str(PHASE_S)]
    # at the lowest priority: its client's CPU would be on its own machine (a 1C server), not on esi's
    return subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-m", "bench.fairness", "hammer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _hammer_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the runaway client exited with {proc.returncode}: {out[-1000:]} {err[-2000:]}")
    return json.loads(lines[-1])


# --- the section ------------------------------------------------------------------------------------------------


#: how the CPU is shared in a run: "shared", every program at the normal policy; "esi-first", esi's processes and
#: erp's client ahead of the rest (`bench.procs.set_scheduling`); "api-first", the API process and erp's client only
SCHEDULING = ("shared", "esi-first", "api-first")


def _prioritize(system: Any, scheduling: str) -> bool:
    """Apply `scheduling` to the system's processes and to this one (erp's client); False when it could not."""
    from bench.procs import set_scheduling

    if scheduling == "shared":
        return True
    names = ["onec"] if scheduling == "api-first" else list(system.processes)
    pids = [system.processes[name].proc.pid for name in names] + [os.getpid()]
    return all([set_scheduling(pid, realtime=True) for pid in pids])


def run(
    *,
    rate: float,
    seconds: float,
    connections: int,
    scheduling: str = "shared",
    store: str = "sqlite",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The section's figures (see the module). Raises when the system cannot be set up or a process fails."""
    from bench.abuse import _steady, _steady_phased
    from bench.procs import set_scheduling
    from esi.testing import EsiSystem, PgDatabase, Vhost

    if scheduling not in SCHEDULING:
        raise ValueError(f"scheduling must be one of {SCHEDULING}, not {scheduling!r}")
    prioritized = None

    vhost = Vhost()
    workdir = Path(tempfile.mkdtemp(prefix="esi-bench-fair-"))
    db = PgDatabase() if store == "postgres" else None
    system = EsiSystem(
        workdir=workdir,
        amqp_url=vhost.url,
        database_url=db.url if db is not None else f"sqlite:///{workdir}/esi.db",
        extra_env={"ESI_AUTH": "on", "ESI_CLIENTS_JSON": clients_json(), "DMS_TIMEOUT": "10"},
    )
    codes: dict[str, int] = {}
    try:
        # onec first, alone (the SQLite migration), then the DMS adapter
        system.start_all({"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec"]})
        system.start("dms", ["dms"])
        base = system.api_url
        prioritized = _prioritize(system, scheduling)
        asyncio.run(_steady(base, ERP, rate, 1.0))  # warm-up: connections, the first argon2 verifications
        # alone and beside loop interleaved: `seconds` of each, in phases of PHASE_S
        total = 2 * PHASE_S * max(1, round(seconds / PHASE_S))
        say(
            f"fairness: erp at {rate}/s for {total} s, loop (quota {LOOP_RATE}/s) from {connections} connections "
            f"on and off every {PHASE_S} s"
        )
        start = time.time() + 3.0  # the runaway client's process is up by then
        proc = _start_hammer(base, connections, total, start)
        # erp's requests sorted by phase as section abuse sorts its client's (the same phases and settling)
        alone, beside = asyncio.run(_steady_phased(base, ERP, rate, start, total))
        loop = _hammer_result(proc, timeout=total + 60)
        for name, p in system.processes.items():
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"esi process {name} exited with {p.proc.returncode}: {system.logs()[-2000:]}")
    except BaseException:
        for p in system.processes.values():
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
        raise
    else:
        codes = system.stop_all()
    finally:
        set_scheduling(os.getpid(), realtime=False)  # the sections after this one run as before it
        try:
            vhost.delete()
            if db is not None:
                db.drop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    throughput = beside["throughput_per_s"] / alone["throughput_per_s"] if alone["throughput_per_s"] else None
    p99 = beside["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else None
    return {
        "erp_rate_per_s": rate,
        "seconds": seconds,
        "scheduling": scheduling,
        "prioritized": prioritized,
        "store": store,
        "measurement": f"interleaved: loop on and off every {PHASE_S} s, the first {SETTLE_S} s of each not counted",
        "loop_quota": {"rate": LOOP_RATE, "burst": LOOP_BURST, "in_flight": LOOP_IN_FLIGHT},
        "alone": alone,
        "beside_loop": beside,
        "loop": loop,
        "p99_ratio": round(p99, 3) if p99 is not None else None,
        "throughput_ratio": round(throughput, 3) if throughput is not None else None,
        "p99_pass": p99 is not None and p99 <= TARGET_P99_RATIO,
        "loop_refused_429_share": loop["refused_429_share"],
        "exit_codes": codes,
    }


if __name__ == "__main__":
    if len(sys.argv) != 9 or sys.argv[1] != "hammer":
        sys.exit(__doc__.rsplit("\n\n", 1)[-1])
    _, _, base_url, client_id, password, conns, secs, at, every = sys.argv
    from bench.procs import set_scheduling

    set_scheduling(os.getpid(), realtime=False)  # started by a prioritized run: the runaway client never is
    figures = hammer(base_url, (client_id, password), int(conns), float(secs), float(at), float(every))
    print(json.dumps(asyncio.run(figures)), flush=True)
