"""Readiness checks: one entry per dependency, each with its status and the latency of its check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from esi import metrics

Check = Callable[[], Awaitable[None]]


async def run_checks(
    checks: Mapping[str, Check],
    *,
    timeout: float = 3.0,  # noqa: ASYNC109 - one deadline over all the checks, applied inside
    service: str | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Run every check at once; ready only if all pass within `timeout`.

    With `service`, each outcome also sets `esi_dependency_ready{service,dependency}` (1 ok, 0 down), which the
    alert on a dependency that stays unready reads.
    """

    async def one(check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(check(), timeout)
            status, error = "ok", None
        except TimeoutError:
            status, error = "down", f"no answer within {timeout}s"
        except Exception as exc:  # noqa: BLE001 - a check that raises anything is down
            status, error = "down", f"{type(exc).__name__}: {exc}"[:300]
        entry: dict[str, Any] = {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        if error:
            entry["error"] = error
        return entry

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    report = dict(zip(names, results))
    if service is not None:
        for name, result in report.items():
            metrics.DEPENDENCY_READY.labels(service, name).set(1 if result["status"] == "ok" else 0)
    return all(r["status"] == "ok" for r in results), report
