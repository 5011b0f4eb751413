"""Section `events` of `bench.run`: what fan-out costs (issue 28). One event with two subscribers against one event
with one, on a small system of its own (the fakes, then onec, crm and dms in a process each; a vhost of its own,
SQLite in a temporary directory).

- one delivery:    N `crm.event.order_changed` (1C alone subscribes: a push to the fake 1C);
- two subscribers: N `dms.event.policy_issued` by the DMS's signed webhook (1C's push and Creatio's UsrPolicy write).

Each phase hands its N events to the webhook (8 at a time) and ends when every copy is delivered; the CPU of the
esi processes over the phase (user + system, /proc) divided by N is the CPU per event. Reported: both, and their
ratio (two subscribers ÷ one delivery: 2 would mean fan-out costs as much as a second system's whole delivery).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "bench-webhook-secret"
PROCESSES = ("onec", "crm", "dms")


def _cpu(system: Any) -> float:
    from bench.procs import read_cpu_seconds

    total = 0.0
    for name in PROCESSES:
        proc = system.processes[name].proc
        total += read_cpu_seconds(proc.pid) or 0.0
    return total


def _post_all(bodies: list[tuple[str, bytes, dict[str, str]]]) -> None:
    import httpx

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        for answer in pool.map(lambda b: client.post(b[0], content=b[1], headers=b[2]), bodies):
            if answer.status_code != 202:
                raise RuntimeError(f"the webhook answered {answer.status_code}: {answer.text[:300]}")


def _phase(system: Any, bodies: list[tuple[str, bytes, dict[str, str]]], done: Callable[[], bool]) -> dict[str, Any]:
    from esi.testing import wait_until

    cpu, started = _cpu(system), time.perf_counter()
    _post_all(bodies)
    wait_until(done, timeout=300, interval=0.1, what="every copy delivered")
    elapsed, used = time.perf_counter() - started, _cpu(system) - cpu
    n = len(bodies)
    return {
        "events": n,
        "seconds": round(elapsed, 2),
        "cpu_s": round(used, 3),
        "cpu_ms_per_event": round(used / n * 1000, 3),
    }


def run(*, n: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The section's figures (see the module). Raises when the system cannot be set up or a process fails."""
    import httpx
    import orjson

    from esi.messages.signatures import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
    from esi.testing import EsiSystem, Vhost

    vhost = Vhost()
    workdir = Path(tempfile.mkdtemp(prefix="esi-bench-events-"))
    system = EsiSystem(
        workdir=workdir,
        amqp_url=vhost.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        extra_env={"DMS_WEBHOOK_SECRET": SECRET, "ESI_LOG_LEVEL": "WARNING"},
    )
    codes: dict[str, int] = {}
    try:
        system.start_all({"fakes": list(system.registry.fakes), "onec": ["onec"]})
        system.start("crm", ["crm"])
        system.start("dms", ["dms"])
        api, onec_fake, crm_fake = system.api_url, system.fake_url("1c"), system.fake_url("crm")

        def received() -> int:
            return len(httpx.get(f"{onec_fake}/_fake/state", timeout=30).json()["received"])

        def policy_writes() -> int:
            return int(httpx.get(f"{crm_fake}/_fake/state", timeout=30).json()["counters"].get("policy_writes", 0))

        start = datetime.now(UTC)

        def orders(count: int) -> list[tuple[str, bytes, dict[str, str]]]:
            return [
                (
                    f"{api}/events/crm/order_changed",
                    orjson.dumps(
                        {
                            "Id": str(uuid.uuid4()),
                            "Number": f"ORD{i}",
                            "Status": "Paid",
                            "ModifiedOn": (start + timedelta(milliseconds=i)).isoformat(),
                        }
                    ),
                    {"Content-Type": "application/json"},
                )
                for i in range(count)
            ]

        def policies(count: int) -> list[tuple[str, bytes, dict[str, str]]]:
            stamp = int(time.time())
            out = []
            for _ in range(count):
                raw = orjson.dumps(
                    {"policy_number": f"BENCH-{uuid.uuid4().hex[:12]}", "revision": 1, "status": "active"}
                )
                headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(stamp),
                           SIGNATURE_HEADER: sign(SECRET, raw, stamp)}  # fmt: skip
                out.append((f"{api}/events/dms/policy_issued", raw, headers))
            return out

        warm = max(10, n // 10)  # connections, caches, the first of everything
        base = received()
        _phase(system, orders(warm), lambda: received() >= base + warm)
        say(f"events: {n} events with one subscriber (crm.order_changed → 1C)")
        base = received()
        one = _phase(system, orders(n), lambda: received() >= base + n)
        say(f"events: {n} events with two subscribers (dms.policy_issued → 1C and Creatio)")
        base, writes = received(), policy_writes()
        two = _phase(system, policies(n), lambda: received() >= base + n and policy_writes() >= writes + n)
        for name, p in system.processes.items():
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"esi process {name} exited with {p.proc.returncode}: {system.logs()[-2000:]}")
    except BaseException:
        system.kill_all()
        raise
    else:
        codes = system.stop_all()
    finally:
        try:
            vhost.delete()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = two["cpu_ms_per_event"] / one["cpu_ms_per_event"] if one["cpu_ms_per_event"] else None
    return {
        "one_subscriber": one,
        "two_subscribers": two,
        "cpu_ratio": round(ratio, 3) if ratio is not None else None,
        "exit_codes": codes,
    }
