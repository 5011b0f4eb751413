"""The CI-length chaos run: about five minutes of every flow under every fault class, on a seed fixed here.

`python -m chaos.run` (`make chaos` for longer runs) in a subprocess, on a RabbitMQ node and a PostgreSQL server of
its own (never the shared ones on 5672 and 5432); the checker's JSON report is read back. Any violation, or a fault
class that never fired, fails the test, with the table and the violations in its output (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.infra import PG_BIN
from chaos.nemesis import FAULTS
from tests.support import ROOT

pytestmark = pytest.mark.integration

#: the fixed seed of the CI run, and its length (seconds of load; set-up, draining and checking come on top)
SEED = 20261207
DURATION = 240


def _needs(tool: str, present: bool) -> None:
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing")
        pytest.skip(f"{tool} is not installed")


@pytest.mark.timeout(900)
def test_a_fixed_seed_chaos_run_finds_nothing_lost_nothing_doubled_nothing_stuck(tmp_path: Path) -> None:
    _needs("rabbitmq-server", shutil.which("rabbitmq-server") is not None)
    _needs("PostgreSQL's server binaries", (PG_BIN / "initdb").exists())
    report_path = tmp_path / "chaos.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos.run",
            "--duration",
            str(DURATION),
            "--seed",
            str(SEED),
            "--report",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    print(result.stdout[-20000:])
    print(result.stderr[-5000:])
    assert report_path.exists(), "the run wrote no report"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    # every fault class fired (the run cannot pass by injecting nothing), each at least once
    injected = {row["fault"]: row["injected"] for row in report["table"]}
    assert {f.name for f in FAULTS} <= set(injected)
    assert all(injected[f.name] >= 1 for f in FAULTS), injected
    # the workload ran: every flow, every 1C behaviour, most requests accepted
    assert set(report["by_flow"]) == {
        "create_user",
        "update_order_status",
        "get_policy_info",
        "send_pdf_file",
        "policy_events",
        "order_events",
    }
    assert set(report["by_mode"]) == {"fire", "wait", "poll", "repeat", "conflict"}
    # liveness: 1C gets a definite answer to nearly every post within the client's patience (the checker's
    # violations are about safety: nothing lost, nothing doubled, nothing stuck)
    assert report["accepted"] >= 0.9 * report["requests"] > 0, report["extra"]["unanswered"]
    # nothing lost, nothing doubled, nothing stuck, resources flat: the checker's violations, listed when any
    assert report["violations"] == [], report["violations"][:20]
    assert report["ok"] is True
    assert result.returncode == 0
