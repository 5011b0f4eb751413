"""Tracing's configuration: off unless the OTEL_* variables ask for it, and then nothing of it is installed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esi import tracing
from esi.store.events import EventRecorder


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "esi", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(environ: dict[str, str], exporters: list[str]) -> None:
    assert tracing.exporters_from(environ) == exporters


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/json"),
    ],
)
def test_what_esi_cannot_export_is_refused_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.exporters_from(environ)


def test_with_tracing_off_nothing_is_installed(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    assert tracing.configure(["onec"], environ={}) is False
    assert tracing.enabled is False
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert tracing.aiohttp_trace_configs() == []
    assert tracing.current_ids() is None
    with caplog.at_level(logging.INFO):
        logging.getLogger("esi.test").info("a line")
    assert not hasattr(caplog.records[-1], "trace_id")


async def test_with_tracing_off_timeline_events_carry_no_trace_id() -> None:
    class Rows:
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        async def add_events(self, rows: list[dict[str, Any]]) -> None:
            self.rows.extend(rows)

    store = Rows()
    events = EventRecorder(store)
    events.record("R1", "accepted", service="api", routing_key="1c.request.dms.create_user")
    await events.flush()
    assert json.loads(store.rows[0]["detail"]) == {"routing_key": "1c.request.dms.create_user"}


def test_with_tracing_off_the_process_never_imports_the_sdk() -> None:
    """`esi run` without OTEL_* variables: every hot-path module loaded, and neither the SDK nor an exporter (the
    API comes with FastAPI, whose own telemetry esi switches off)."""
    code = (
        "import sys\n"
        "import esi.cli, esi.runtime, esi.bus.consumer, esi.bus.relay, esi.api.hot, esi.systems.calls\n"
        "from esi import tracing\n"
        "assert tracing.configure(['onec', 'crm', 'dms'], environ={}) is False\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_otel_variables_of_the_env_file_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from `.env` too: so do the OTEL_* variables (the environment's own win)."""
    (tmp_path / ".env").write_text("OTEL_TRACES_EXPORTER=none\nOTEL_SERVICE_NAME=from-file\nESI_PREFETCH=5\n")
    monkeypatch.chdir(tmp_path)
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.setenv(name, "")  # recorded, so that what configure sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-environment")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert tracing.configure(["dms"]) is False  # the file's OTEL_TRACES_EXPORTER=none wins over no exporter
    assert os.environ["OTEL_TRACES_EXPORTER"] == "none"
    assert os.environ["OTEL_SERVICE_NAME"] == "from-environment"
    assert "ESI_PREFETCH" not in os.environ
