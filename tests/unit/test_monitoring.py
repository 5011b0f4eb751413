"""The alert rules, their tests and the Grafana dashboard (deploy/prometheus, deploy/grafana) against the metrics esi
exports; the metrics behind them (readiness by dependency, requests answered and their end-to-end time)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from esi import metrics
from esi.config import Settings, parse_duration
from esi.health import run_checks

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
#: minute-scale tests, and those of the alerts that look a week back (evaluated every 10 minutes: promtool is quick)
ALERT_TESTS = (PROMETHEUS / "alerts.test.yml", PROMETHEUS / "alerts.weekly.test.yml")
DASHBOARD = ROOT / "deploy" / "grafana" / "esi.json"
README = ROOT / "README.md"

#: the series Prometheus itself adds to every scrape
PROMETHEUS_SERIES = {"up"}


def exported_series() -> set[str]:
    """Every series name esi can export, from its registry: counters with `_total`, histograms as `_bucket`,
    `_sum` and `_count` (families are described even before any label has a child)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def series_in(expr: str) -> set[str]:
    """The series a PromQL expression reads: esi's (esi_...) and Prometheus' own."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"\besi_[a-z0-9_]+\b", without_strings))
    names.update(n for n in PROMETHEUS_SERIES if re.search(rf"\b{n}\s*[{{\[]", without_strings))
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


# --- promtool ---------------------------------------------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing on CI: .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=PROMETHEUS, check=False)


def test_promtool_accepts_the_rules_and_the_config() -> None:
    promtool = _promtool()
    for args in (("check", "rules", ALERTS.name), ("check", "config", "prometheus.yml")):
        result = _run(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rule_tests_pass() -> None:
    result = _run(_promtool(), "test", "rules", *(path.name for path in ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(ALERT_TESTS)


# --- the files, without promtool --------------------------------------------------------------------------------------


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in ALERT_TESTS:
        tests = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert tests["rule_files"] == [ALERTS.name]
        for group in tests["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), f"alerts never tested firing: {sorted(names - fires)}"
    assert names - silent == set(), f"alerts never tested staying silent: {sorted(names - silent)}"


def test_every_alert_has_a_duration_severity_annotations_and_a_runbook_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "### Alerts and dashboard" in readme
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: give it a for: duration"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        assert annotations.get("runbook") == f"README.md#alerts-and-dashboard ({name})", name
        assert f"`{name}`" in readme, f"the README's alert table does not explain {name}"


def test_the_rules_read_only_series_esi_exports() -> None:
    exported = exported_series() | PROMETHEUS_SERIES
    for rule in alert_rules():
        used = series_in(rule["expr"])
        assert used, f"{rule['alert']}: no series found in {rule['expr']!r}"
        assert used <= exported, f"{rule['alert']} reads {sorted(used - exported)}, which esi does not export"


def test_the_dashboard_reads_only_series_esi_exports_and_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"]
    assert dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exported = exported_series() | PROMETHEUS_SERIES
    shown: set[str] = set()
    for title, expr in dashboard_exprs():
        used = series_in(expr)
        assert used, f"panel {title!r}: no series in {expr!r}"
        assert used <= exported, f"panel {title!r} reads {sorted(used - exported)}, which esi does not export"
        shown |= used
    wanted = {
        "esi_http_requests_total",
        "esi_requests_settled_total",
        "esi_request_duration_seconds_bucket",
        "esi_messages_dead_lettered_total",
        "esi_queue_messages",
        "esi_outbox_backlog",
        "esi_circuit_open",
        "esi_external_call_duration_seconds_count",
        "esi_external_call_errors_total",
        "esi_external_call_duration_seconds_bucket",
        "esi_dependency_ready",
    }
    assert wanted <= shown, f"the dashboard does not show {sorted(wanted - shown)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", "the provisioned data source's uid"


def test_the_series_check_notices_an_unknown_metric() -> None:
    exported = exported_series()
    assert "esi_circuit_open" in exported
    assert "esi_http_requests_total" in exported
    assert "esi_http_request_duration_seconds_bucket" in exported
    assert "esi_http_requests" not in exported
    assert series_in('rate(esi_http_requests_totl{route=~"esi_x"}[5m])') == {"esi_http_requests_totl"}
    assert series_in('up{job=~"esi-.+"} == 0') == {"up"}


# --- the metrics behind them ------------------------------------------------------------------------------------------


def _sample(name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_readiness_runs_set_the_dependency_gauge() -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionError("refused")

    ready, report = await run_checks({"store": ok, "dms": down}, service="unit-test")
    assert not ready
    assert report["dms"]["status"] == "down"
    assert _sample("esi_dependency_ready", {"service": "unit-test", "dependency": "store"}) == 1.0
    assert _sample("esi_dependency_ready", {"service": "unit-test", "dependency": "dms"}) == 0.0
    await run_checks({"dms": ok}, service="unit-test")
    assert _sample("esi_dependency_ready", {"service": "unit-test", "dependency": "dms"}) == 1.0


def test_an_answered_request_is_counted_with_its_end_to_end_time() -> None:
    labels = {"target": "unit", "message_type": "ping"}
    before = _sample("esi_request_duration_seconds_sum", labels) or 0.0
    accepted = (datetime.now(UTC) - timedelta(seconds=2)).isoformat(timespec="microseconds")
    metrics.request_settled(target="unit", message_type="ping", status="completed", created_at=accepted)
    assert _sample("esi_requests_settled_total", {**labels, "status": "completed"}) == 1.0
    elapsed = (_sample("esi_request_duration_seconds_sum", labels) or 0.0) - before
    assert 2.0 <= elapsed < 10.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400.0),
        ("12h", 43200.0),
        ("15m", 900.0),
        ("90s", 90.0),
        ("3600", 3600.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("off", 0.0),
        (7, 7.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, name="X") == seconds


@pytest.mark.parametrize("text", ["-1d", "soon", "12x", "", "inf"])
def test_bad_durations_name_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match="ESI_REQUEST_RETENTION"):
        Settings(_env_file=None, ESI_REQUEST_RETENTION=text)


def test_retention_settings() -> None:
    settings = Settings(_env_file=None, ESI_REQUEST_RETENTION="12h", ESI_RETENTION_INTERVAL="5m")
    assert (settings.request_retention_s, settings.retention_interval_s) == (43200.0, 300.0)
    assert Settings(_env_file=None, ESI_REQUEST_RETENTION="off").request_retention_s == 0
    assert Settings(_env_file=None).request_retention_s == 30 * 86400
    with pytest.raises(ValueError, match="ESI_RETENTION_INTERVAL"):
        Settings(_env_file=None, ESI_RETENTION_INTERVAL="0")
