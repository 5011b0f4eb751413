"""A process started while no broker node answers waits for one (ESI_CONNECT_TIMEOUT), and a list of nodes is
tried in turn."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from esi.testing import EsiSystem, Vhost, free_port, wait_until

pytestmark = pytest.mark.integration


def _dead_url(vhost: Vhost) -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost.name}"


def _system(tmp_path: Path, amqp_url: str, **env: str) -> EsiSystem:
    return EsiSystem(
        workdir=tmp_path, amqp_url=amqp_url, database_url=f"sqlite:///{tmp_path / 'esi.db'}", extra_env=env
    )


def test_a_process_waits_for_the_broker_not_ready_and_still_stops_on_sigterm(vhost: Vhost, tmp_path: Path) -> None:
    system = _system(tmp_path, _dead_url(vhost))
    process = system.start("dms", ["dms"])
    try:
        # one log line per attempt, and nothing answers health checks meanwhile (not ready)
        wait_until(lambda: system.logs().count("not ready, next attempt in") >= 3, timeout=30, what="three attempts")
        assert process.proc is not None
        assert process.proc.poll() is None
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{process.health_url}/readyz", timeout=2)
        assert process.stop(signal.SIGTERM, timeout=20) == 0
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


def test_connect_timeout_keeps_a_fail_fast(vhost: Vhost, tmp_path: Path) -> None:
    system = _system(tmp_path, _dead_url(vhost), ESI_CONNECT_TIMEOUT="2")
    started = time.monotonic()
    process = system.start("dms", ["dms"])
    assert process.proc is not None
    code = process.proc.wait(30)
    assert code == 3, system.logs()[-2000:]
    assert time.monotonic() - started >= 2
    assert "cannot connect to RabbitMQ" in system.logs()


def test_a_list_of_nodes_with_one_down_still_connects(vhost: Vhost, tmp_path: Path) -> None:
    system = _system(tmp_path, f"{_dead_url(vhost)},{vhost.url}")
    process = system.start("dms", ["dms"])
    try:

        def broker_ok() -> bool:  # the DMS itself is not running here: only the broker's check matters
            try:
                checks = httpx.get(f"{process.health_url}/readyz", timeout=2).json()["checks"]
            except httpx.HTTPError:
                return False
            return checks["broker (dms)"]["status"] == "ok"

        wait_until(broker_ok, timeout=60, interval=0.2, what="the broker check to pass")
        assert process.stop() == 0
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()
