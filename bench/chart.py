"""The chart of a bench run: throughput and p99 latency against concurrency (end-to-end runs), with the ceiling.

python -m bench.chart [bench/results/latest.json] [bench/results/chart.png]
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


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else Path("bench/results/latest.json")
    target = Path(argv[1]) if len(argv) > 1 else source.with_name("chart.png")
    print(make_chart(json.loads(source.read_text()), target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
