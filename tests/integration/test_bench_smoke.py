"""The benchmark harness at tiny sizes, so that it cannot rot: it runs, completes every request, and writes every
section with numeric figures and ratios to the ceiling. The real run (`make bench`) is not a test."""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esi.systems.spec import DEFAULT_MAX_CONCURRENCY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    # the cluster section has a smoke test of its own (tests/integration/test_cluster.py)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--skip", "cluster", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, f"bench --quick exited {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc, json.loads(out.read_text()), out


@pytest.mark.timeout(570)
def test_quick_run_exits_0_and_every_request_completes(quick_run) -> None:
    proc, result, _ = quick_run
    assert result["ok"] is True
    assert result["errors"] == []
    assert "result: ok" in proc.stdout
    assert "÷ ceiling" in proc.stdout
    for run in result["e2e"]["runs"]:
        assert run["all_completed"], run
        assert run["completed"] == run["n"], run
    # the comparison run, completion followed by long polls instead of the POST's own wait
    polled = result["e2e"]["by_long_poll"]
    assert polled["all_completed"], polled
    assert polled["completed"] == polled["n"], polled
    assert polled["polls_per_request"] >= 1, polled
    assert "Prefer: wait=" in result["e2e"]["completion_detection"]
    for section in ("ingress", "slow"):
        assert result[section]["all_completed"], result[section]
        assert result[section]["failed"] == result[section]["timed_out"] == 0
    assert result["scaleout"]["two_adapters_run"]["all_completed"]
    # one set of processes, then two (the load split across two API processes), on PostgreSQL
    sets = result["sets"]
    assert sets["store"] == "postgres"
    assert sets["one"]["all_completed"], sets
    assert sets["two"]["all_completed"], sets
    assert _number(sets["two_vs_one"])
    assert sets["exit_codes"]
    # 300 requests accepted while the DMS was down, drained with a fresh client beside: every one completed once
    drain = result["drain"]
    assert drain["errors"] == [], drain["errors"]
    assert drain["by_status"] == {"completed": drain["n"]}, drain["by_status"]
    assert drain["dead_letters"] == 0
    assert _number(drain["drain_ratio"]), drain
    assert _number(drain["fresh"]["p99_s"]), drain["fresh"]
    assert drain["fresh"]["posted"] >= 1
    assert drain["fresh"]["outcomes"] == {"completed": drain["fresh"]["posted"]}
    assert drain["broker"]["samples"] >= 1
    # 20,000 past requests in an SQLite store against an empty one
    history = result["history"]["sqlite"]
    assert history["seed"]["rows"]["requests"] == 20_000
    assert history["e2e"]["full"][0]["all_completed"], history["e2e"]
    assert history["e2e"]["empty"][0]["all_completed"], history["e2e"]
    assert history["retention"]["deleted_requests"] == 5_000
    # a client at its quota beside another, the CPU shared as it comes and then with esi's processes first
    assert result["fairness"]["scheduling"] == "shared"
    assert _number(result["fairness"]["p99_ratio"])
    first = result["fairness_esi_first"]
    if os.geteuid() == 0:  # root may set real-time scheduling (CI runs as root here)
        assert first["scheduling"] == "esi-first"
        assert first["prioritized"] is True
        assert _number(first["p99_ratio"])
    else:
        assert "real-time" in first.get("skipped", ""), first
    assert all(code == 0 for code in sets["exit_codes"].values()), sets["exit_codes"]
    assert result["exit_codes"]
    assert all(code == 0 for code in result["exit_codes"].values())


def test_machine_is_recorded(quick_run) -> None:
    machine = quick_run[1]["machine"]
    assert _number(machine["nproc"])
    assert machine["nproc"] >= 1
    assert machine["cpu_model"]
    assert machine["rabbitmq_version"]
    assert machine["python_version"]
    assert _number(machine["memory_mb"])


def test_every_section_has_figures_and_ratios_to_the_ceiling(quick_run) -> None:
    result = quick_run[1]
    ceiling = result["ceiling"]
    assert _number(ceiling["round_trips_per_s"])
    assert ceiling["round_trips_per_s"] > 0
    assert ceiling["queue_type"] == "quorum"

    runs = result["e2e"]["runs"]
    assert [r["concurrency"] for r in runs] == result["config"]["concurrency"]
    for run in runs:
        for key in (
            "round_trips_per_s",
            "ratio_to_ceiling",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "seconds",
            "client_cpu_pct_of_one_core",
        ):
            assert _number(run[key]), (key, run)
        assert run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
        assert abs(run["ratio_to_ceiling"] - run["round_trips_per_s"] / ceiling["round_trips_per_s"]) < 0.01
        assert {"onec", "dms", "crm", "fakes"} <= set(run["processes"])
        assert all(_number(run["stages"][s]["p50_ms"]) for s in ("api", "relay", "to_dms", "back", "poll"))

    ingress = result["ingress"]
    for key in ("rate_per_s", "ratio_to_ceiling", "p50_ms", "p95_ms", "p99_ms"):
        assert _number(ingress[key]), (key, ingress)

    slow = result["slow"]
    for key in ("seconds", "ideal_seconds", "ratio_to_ideal", "round_trips_per_s", "ratio_to_ceiling"):
        assert _number(slow[key]), (key, slow)
    # runs 4 and 6 run at the default limit of DMS calls per adapter, which the ideal divides by
    assert slow["dms_max_concurrency"] == DEFAULT_MAX_CONCURRENCY
    assert slow["ideal_seconds"] == pytest.approx(
        slow["n"] * slow["latency_ms"] / 1000 / slow["dms_max_concurrency"], rel=0.01
    )
    assert 0 < slow["dms_calls_in_flight_peak"] <= DEFAULT_MAX_CONCURRENCY

    scaleout = result["scaleout"]
    assert _number(scaleout["speedup"])
    for side in ("one", "two"):
        assert _number(scaleout[side]["round_trips_per_s"])
        assert _number(scaleout[side]["ratio_to_ceiling"])

    bound = result["bound"]
    assert _number(bound["speedup"])
    assert bound["prefetch"] == 5 * bound["dms_max_concurrency"]
    for side, adapters in (("one", 1), ("two", 2)):
        run = bound[side]
        assert run["all_completed"]
        assert run["adapters"] == adapters
        assert run["ideal_seconds"] == pytest.approx(
            run["n"] * run["latency_ms"] / 1000 / (bound["dms_max_concurrency"] * adapters), rel=0.01
        )
        # the limit holds: the fake DMS never saw more calls at once than the adapters may make
        assert 0 < run["dms_calls_in_flight_peak"] <= bound["dms_max_concurrency"] * adapters

    backlog = result["backlog"]
    assert backlog["in_queue_before"] == backlog["messages"] == result["config"]["backlog"]
    assert backlog["drained"] > 0
    for key in ("drain_rate_per_s", "ratio_to_ceiling", "dms_peak_rss_mb"):
        assert _number(backlog[key]), (key, backlog)

    memory = result["memory"]
    for phase in ("e2e", "slow", "backlog"):
        peaks = memory[phase]["peak_rss_mb"]
        assert all(_number(peaks[p]) and peaks[p] > 10 for p in ("onec", "dms", "crm")), (phase, peaks)

    targets = {t["target"]: t for t in result["targets"]}
    assert len(targets) >= 5
    assert all(isinstance(t["pass"], bool) and _number(t["value"]) for t in targets.values())


def test_cpu_per_request_is_also_a_ratio_to_the_ceilings_cpu(quick_run) -> None:
    result = quick_run[1]
    ceiling = result["ceiling"]
    assert _number(ceiling["cpu_ms_per_round_trip"])
    assert ceiling["cpu_ms_per_round_trip"] > 0
    assert ceiling["cpu_ms_per_round_trip"] == pytest.approx(
        ceiling["requester_cpu_ms"] + ceiling["responder_cpu_ms"], abs=0.002
    )
    for run in result["e2e"]["runs"]:
        for name in ("onec", "dms"):
            ratio = run["cpu_ratio_to_ceiling"][name]
            assert _number(ratio)
            assert ratio > 0
            assert ratio == pytest.approx(run["cpu_ms_per_request"][name] / ceiling["cpu_ms_per_round_trip"], abs=0.02)
    # the services ran with the defaults `make run` uses, log level and authentication included
    assert result["config"]["log_level"].startswith("INFO")
    assert result["config"]["auth"].startswith("on")


def test_the_naive_peer_ran_beside_esi_or_says_why_not(quick_run) -> None:
    peer = quick_run[1]["peer"]
    try:
        import faststream  # noqa: F401
    except ImportError:
        assert "faststream" in peer["skipped"]
        assert ".[bench]" in peer["skipped"]
        return
    assert len(peer["peer_runs"]) == len(peer["esi_runs"]) == 2
    for run in peer["peer_runs"]:
        assert run["all_completed"], run
        assert run["failed"] == run["timed_out"] == 0, run
        assert {"peer-api", "peer-worker"} <= set(run["cpu_ms_per_request"])
    assert _number(peer["esi_over_peer"])
    assert peer["esi_over_peer"] > 0
    assert peer["esi_over_peer"] == pytest.approx(peer["esi_per_s"] / peer["peer_per_s"], rel=0.01)


def test_chart_is_drawn_when_matplotlib_is_installed(quick_run) -> None:
    result, out = quick_run[1], quick_run[2]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result["chart"]["path"] is None
        assert "matplotlib" in result["chart"]["skipped"]
        return
    chart = Path(result["chart"]["path"])
    assert chart == out.with_name("chart.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the growth charts of the sections that ran (issue 31): history against stored rows, sets against processes
    for section, name in (("history", "history.png"), ("sets", "sets.png"), ("drain", "drain.png")):
        made = result["growth_charts"][section]
        assert made["path"] is not None, made
        assert Path(made["path"]).name == name
        assert out.with_name(name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_dlq_section_measures_pages_the_cli_and_a_replay(tmp_path: Path) -> None:
    """Section dlq (`bench.dlq`) alone, at a tiny size: a system of its own, seeded, measured, stopped."""
    out = tmp_path / "dlq.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dlq", "--n", "300", "--store", "sqlite", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    dlq = json.loads(out.read_text())
    assert dlq["n"] == 300
    for page in ("first_page", "filtered_page"):
        assert _number(dlq[page]["p95_ms"])
        assert dlq[page]["loads"] == 20
    assert _number(dlq["cli_list"]["median_s"])
    assert _number(dlq["index_queries"]["p95_ms"])
    replay = dlq["replay"]
    assert replay["finished"], replay
    assert replay["replayed"] == 300
    assert _number(replay["rss_growth_mb"])


def test_the_history_section_seeds_measures_pages_e2e_and_retention_on_postgres(tmp_path: Path) -> None:
    """Section history (`bench.history`) alone on PostgreSQL (the quick run above takes SQLite), at a tiny size."""
    out = tmp_path / "history.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.history", "--quick", "--n", "2000", "--store", "postgres", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # the growth steps restart the full system twice: 2-4 min on a busy machine
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    history = json.loads(out.read_text())["postgres"]
    assert history["seed"]["rows"]["requests"] == 2000
    assert history["seed"]["rows"]["events"] > 5 * 2000  # a timeline each (shorter for those still under way)
    for name, page in history["pages"].items():
        assert _number(page["p95_ms"]), name
    assert {"console: overview", "console: requests, next page", "GET /requests?key= (shared key)"} <= set(
        history["pages"]
    )
    assert all(plan for plan in history["plans"].values())
    for side in ("empty", "full"):
        assert all(run["all_completed"] for run in history["e2e"][side]), history["e2e"]
    assert _number(history["throughput_ratio"])
    assert _number(history["p99_ratio"])
    # the growth steps are the full run's (quick: one seeding, no growth points)
    assert history["seed"]["steps"] == 1
    assert history["growth"] == []
    retention = history["retention"]
    assert retention["deleted_requests"] == 500  # the quarter seeded expired, and only they
    assert _number(retention["ratio"])
