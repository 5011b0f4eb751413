"""The charts of a bench run: throughput and p99 latency against concurrency (end-to-end runs), with the ceiling
(`chart.png`); and, for the cases where the work grows (issue 31), each figure against what grows: stored past
requests (`history.png`, section history), API processes (`sets.png`, section sets) and the backlog (`drain.png`,
section drain) — so that the growth is seen, not read.

python -m bench.chart [bench/results/latest.json] [bench/results/chart.png]
(the growth charts beside it, for the sections the run holds)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def make_chart(result: dict[str, Any], path: Path) -> Path:
    """Draw the chart of `result` (the JSON of a run) to `path` (PNG); raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(
        (r for r in (result.get("e2e") or {}).get("runs", []) if r.get("round_trips_per_s") is not None),
        key=lambda r: r["concurrency"],
    )
    if not runs:
        raise ValueError("no end-to-end runs to chart")
    conc = [r["concurrency"] for r in runs]
    tput = [r["round_trips_per_s"] for r in runs]
    p99 = [r["p99_ms"] for r in runs]
    ceiling = (result.get("ceiling") or {}).get("round_trips_per_s")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(conc, tput, "o-", color="tab:blue", label="esi end to end")
    for x, y, r in zip(conc, tput, runs):
        ratio = r.get("ratio_to_ceiling")
        left.annotate(
            f"{y:.0f}/s" + (f"\n{ratio:.2f}× ceiling" if ratio is not None else ""),
            (x, y),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    if ceiling:
        left.axhline(ceiling, color="tab:gray", linestyle="--", label=f"ceiling (bare aio-pika) {ceiling:.0f}/s")
        left.axhline(ceiling / 2, color="tab:red", linestyle=":", label="target 0.5 × ceiling")
    left.set_xscale("log", base=2)
    left.set_xticks(conc, [str(c) for c in conc])
    left.set_xlabel("concurrency (requests in flight)")
    if ceiling and ceiling > 5 * max(tput):  # a linear axis would flatten esi's line against zero
        left.set_yscale("log")
        left.set_ylabel("round trips / s (log scale)")
    else:
        left.set_ylabel("round trips / s")
        left.set_ylim(bottom=0)
    left.set_title("Throughput: create_user, API → DMS → stored")
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)

    right.plot(conc, p99, "s-", color="tab:orange", label="p99")
    right.plot(conc, [r["p50_ms"] for r in runs], "o--", color="tab:green", label="p50")
    stored = [((r.get("stages") or {}).get("to_stored") or {}).get("p99_ms") for r in runs]
    if all(v is not None for v in stored):
        right.plot(conc, stored, "^:", color="tab:purple", label="p99 to answer stored (no polling)")
    right.set_xscale("log", base=2)
    right.set_xticks(conc, [str(c) for c in conc])
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel("end-to-end latency (ms)")
    right.set_ylim(bottom=0)
    right.set_title("Latency: POST → seen completed")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)

    machine = result.get("machine") or {}
    fig.suptitle(
        f"esi bench {result.get('started_at', '')} — {machine.get('nproc')} CPU {machine.get('cpu_model')}, "
        f"RabbitMQ {machine.get('rabbitmq_version')}, store {(result.get('config') or {}).get('store')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def history_series(store: dict[str, Any]) -> dict[str, list[Any]]:
    """Section history's figures of one store against stored rows: the empty store (0), each growth step, the full
    store (its interleaved runs' medians). `full_*` on the store with the history, `empty_*` the empty store measured
    at the same moment (the machine's reference); `pages` the growing pages' p95 by name."""
    runs = store.get("e2e") or {}
    medians = {
        (name, key): _median([r.get(key) for r in runs.get(name, [])])
        for name in ("empty", "full")
        for key in ("round_trips_per_s", "p99_ms")
    }
    points: list[dict[str, Any]] = []
    if runs:
        first = {"rows": 0, "pages_p95_ms": {k: v["p95_ms"] for k, v in (store.get("pages_empty") or {}).items()}}
        for name in ("empty", "full"):  # at 0 rows the "full" system is the empty one
            first[f"{name}_per_s"] = medians[("empty", "round_trips_per_s")]
            first[f"{name}_p99_ms"] = medians[("empty", "p99_ms")]
        points.append(first)
    points.extend(store.get("growth") or [])
    last: dict[str, Any] = {
        "rows": store.get("n"),
        "pages_p95_ms": {k: v["p95_ms"] for k, v in (store.get("pages") or {}).items()},
    }
    for name in ("empty", "full"):
        last[f"{name}_per_s"] = medians[(name, "round_trips_per_s")]
        last[f"{name}_p99_ms"] = medians[(name, "p99_ms")]
    points.append(last)
    series: dict[str, list[Any]] = {"rows": [p["rows"] for p in points]}
    for key in ("full_per_s", "empty_per_s", "full_p99_ms", "empty_p99_ms"):
        series[key] = [p.get(key) for p in points]
    names = [n for n in points[-1]["pages_p95_ms"] if all(n in p["pages_p95_ms"] for p in points)]
    series["pages"] = [(name, [p["pages_p95_ms"][name] for p in points]) for name in names]
    return series


def _rows_axis(ax: Any, rows: list[int]) -> None:
    ax.set_xlabel("past requests in the store")
    ax.set_xticks(rows, [f"{r / 1e6:g} M" if r >= 1e5 else f"{r:,}" for r in rows])
    ax.grid(alpha=0.3)


def make_history_chart(history: dict[str, Any], path: Path) -> Path:
    """Section history against stored rows, one line per store: throughput, p99, the pages' p95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = [name for name in ("sqlite", "postgres") if isinstance(history.get(name), dict)]
    if not stores:
        raise ValueError("no store in section history")
    fig, (tput, lat, pages) = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = {"sqlite": "tab:blue", "postgres": "tab:green"}
    for name in stores:
        s = history_series(history[name])
        rows, color = s["rows"], colors[name]
        tput.plot(rows, s["full_per_s"], "o-", color=color, label=f"{name}: with the history")
        tput.plot(rows, s["empty_per_s"], "x--", color=color, alpha=0.5, label=f"{name}: empty store, same moment")
        lat.plot(rows, s["full_p99_ms"], "o-", color=color, label=f"{name}: with the history")
        lat.plot(rows, s["empty_p99_ms"], "x--", color=color, alpha=0.5, label=f"{name}: empty store, same moment")
        for (page, values), marker in zip(s["pages"], "osv^D"):
            pages.plot(rows, values, marker + "-", color=color, alpha=0.85, label=f"{name}: {page}")
        for ax in (tput, lat, pages):
            _rows_axis(ax, rows)
    tput.set_ylabel("create_user round trips / s")
    tput.set_ylim(bottom=0)
    tput.set_title("Throughput against history (target ≥ 0.95 × empty)")
    lat.set_ylabel("p99 (ms)")
    lat.set_ylim(bottom=0)
    lat.set_title("p99 against history (target ≤ 1.1 × empty)")
    pages.axhline(100, color="tab:red", linestyle=":", label="target p95 < 100 ms")
    pages.set_ylabel("p95 (ms)")
    pages.set_yscale("log")
    pages.set_title("Console pages and GET /requests?key=")
    for ax in (tput, lat):
        ax.legend(fontsize=7)
    pages.legend(fontsize=6)
    machine = history.get("machine") or {}
    fig.suptitle(
        f"esi bench, section history: {history.get('n'):,} past requests, C={history.get('concurrency')} — "
        f"{machine.get('nproc')} CPU {machine.get('cpu_model')}, RabbitMQ {machine.get('rabbitmq_version')}",
        fontsize=9,
    )
    return _save(fig, plt, path)


def make_sets_chart(sets: dict[str, Any], path: Path) -> Path:
    """Section sets against API processes: throughput (with the ideal: n × one set) and p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [sets.get("one") or {}, sets.get("two") or {}]
    if not all(r.get("round_trips_per_s") for r in runs):
        raise ValueError("section sets has no figures")
    n = [1, 2]
    tput = [r["round_trips_per_s"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(n, tput, "o-", color="tab:blue", label=f"esi on {sets.get('store')}")
    left.plot(n, [tput[0] * k for k in n], ":", color="tab:gray", label="ideal: n × one set")
    left.plot(n, [tput[0] * 0.9 * k for k in n], ":", color="tab:red", label="target: two sets ≥ 1.8 × one")
    for x, y in zip(n, tput):
        left.annotate(f"{y:.0f}/s", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    left.set_ylim(bottom=0)
    left.set_ylabel("create_user round trips / s (Prefer: wait)")
    left.set_title("Throughput against processes")
    right.plot(n, [r.get("p99_ms") for r in runs], "s-", color="tab:orange", label="p99")
    right.plot(n, [r.get("p50_ms") for r in runs], "o--", color="tab:green", label="p50")
    right.set_ylim(bottom=0)
    right.set_ylabel("latency (ms)")
    right.set_title("Latency against processes")
    for ax in (left, right):
        ax.set_xticks(n, ["one set", "two sets"])
        ax.set_xlabel("API, DMS and CRM processes (sets), the load split between the APIs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    machine = sets.get("machine") or {}
    fig.suptitle(
        f"esi bench, section sets: {sets.get('n')} requests at C={sets.get('concurrency')} — "
        f"{machine.get('nproc')} CPU {machine.get('cpu_model')}",
        fontsize=9,
    )
    return _save(fig, plt, path)


def make_drain_chart(drain: dict[str, Any], path: Path) -> Path:
    """Section drain against the backlog: the requests still waiting after the recovery over time (with the line
    the steady rate would draw), and the broker's memory through the run; the fresh requests' p99 in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = drain.get("drain_trace") or []
    if not trace:
        raise ValueError("section drain has no trace")
    n = drain["n"]
    times = [t for t, _ in trace]
    left_over = [n - done for _, done in trace]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(times, left_over, "-", color="tab:blue", label="backlog still waiting")
    steady = (drain.get("steady") or {}).get("rate_per_s")
    if steady:
        left.plot(
            [0, n / steady], [n, 0], ":", color="tab:gray", label=f"at the steady rate ({steady:.0f}/s, same run)"
        )
    left.set_xlabel("seconds since the system recovered")
    left.set_ylabel("requests")
    left.set_ylim(bottom=0)
    left.set_title(f"Draining {n:,} requests: {drain.get('drain_ratio')} × the steady rate (target ≥ 0.9)")
    memory = (drain.get("broker") or {}).get("memory_trace_mb") or []
    if memory:
        right.plot([t for t, _ in memory], [m for _, m in memory], "o-", color="tab:purple", label="node memory")
    alarms = (drain.get("broker") or {}).get("alarms") or []
    right.set_xlabel("seconds since the outage began")
    right.set_ylabel("RabbitMQ node memory (MB)")
    right.set_ylim(bottom=0)
    right.set_title(f"The broker: {len(alarms)} memory alarms")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fresh = drain.get("fresh") or {}
    machine = drain.get("machine") or {}
    fig.suptitle(
        f"esi bench, section drain: fresh requests during the drain p99 {fresh.get('p99_s')} s, "
        f"{fresh.get('done_within_5s_share')} done within 5 s (target p99 ≤ 5 s) — "
        f"{machine.get('nproc')} CPU {machine.get('cpu_model')}",
        fontsize=9,
    )
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: the growth charts: the section of a run each is drawn from, its file name beside chart.png, and how
GROWTH_CHARTS = {
    "history": ("history.png", make_history_chart),
    "sets": ("sets.png", make_sets_chart),
    "drain": ("drain.png", make_drain_chart),
}


def make_growth_charts(result: dict[str, Any], directory: Path) -> dict[str, dict[str, str | None]]:
    """Each growth chart whose section `result` holds, into `directory`: by section, its path or why not."""
    made: dict[str, dict[str, str | None]] = {}
    for section, (name, draw) in GROWTH_CHARTS.items():
        if not result.get(section):
            continue
        try:
            made[section] = {"path": str(draw(result[section], directory / name))}
        except Exception as exc:  # noqa: BLE001 - a chart is not worth the figures
            made[section] = {"path": None, "skipped": f"{type(exc).__name__}: {exc}"}
    return made


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else Path("bench/results/latest.json")
    target = Path(argv[1]) if len(argv) > 1 else source.with_name("chart.png")
    result = json.loads(source.read_text())
    if result.get("e2e"):
        print(make_chart(result, target))
    for section, made in make_growth_charts(result, target.parent).items():
        print(f"{section}: {made['path'] or made['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
