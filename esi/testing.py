"""A test harness for esi and for system packages built on it: esi run for real, in subprocesses, on throwaway
infrastructure, and driven over HTTP — what esi's own integration tests and its benchmark (`make bench`) use, and
what a package that adds a system to esi can use to test its system end to end with the rest of esi (as FastStream
ships `faststream.testing`).

    Vhost           a RabbitMQ vhost of its own (granted to guest), deleted by `delete()`
    PgDatabase      a PostgreSQL database of its own, dropped by `drop()`
    EsiSystem       esi in `esi run` subprocesses on a given broker URL and store, with every registered system's
                    fake on a free port; `start_all()`, `post()`, `wait_final()`, `fault()`, `stop_all()`, `logs()`
    EsiProcess      one `esi run <services>` process of an EsiSystem
    serve_in_thread a real uvicorn server for an ASGI app in a thread (a fake, a client under test)
    free_port, wait_until, rabbitmqctl
                    the small helpers the above are built on

For example, with pytest (`tmp_path` its temporary directory; the processes log to `<name>.log` in it):

    from esi.systems.registry import Registry, load_registry
    from esi.testing import EsiSystem, Vhost

    vhost = Vhost()
    system = EsiSystem(workdir=tmp_path, amqp_url=vhost.url, database_url=f"sqlite:///{tmp_path}/esi.db",
                       registry=Registry([*load_registry().systems, STOCK]),  # the harness's view: its fake's port
                       extra_env={"ESI_SYSTEMS": "my_package.system:STOCK"})  # the processes' view
    try:
        system.start_all()  # every fake, then every adapter in one process each; waits until the API is ready
        body = {"request_id": "ST-1", "sku": "SKU-1", "quantity": 3}
        assert system.post("/requests/stock/reserve_stock", json=body).status_code == 202
        assert system.wait_final("ST-1")["status"] == "completed"
    finally:
        system.stop_all()
        vhost.delete()

What it needs: a RabbitMQ node on 127.0.0.1:5672 whose `rabbitmqctl` is on PATH and may add vhosts (the user
guest/guest, as a fresh RabbitMQ has); for PgDatabase, a PostgreSQL server on 127.0.0.1:5432 that the user postgres
may log in to without a password and create databases on; and esi installed in the running interpreter's
environment (the `esi` script beside `sys.executable`).

The processes are configured for tests, not for production: short retry delays (ESI_RETRY_DELAYS, 4 attempts),
authentication off, no periodic readiness checks, JSON logs; `extra_env` (or `start(..., env=)`) overrides any of it.
The harness imports nothing of esi beyond the registry of systems (to give the fakes ports and settings): esi
itself runs in the subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from esi.systems.registry import Registry

__all__ = [
    "AMQP_HOST",
    "ESI",
    "PG_ADMIN_URL",
    "EsiProcess",
    "EsiSystem",
    "PgDatabase",
    "Vhost",
    "free_port",
    "rabbitmqctl",
    "serve_in_thread",
    "wait_until",
]

#: the RabbitMQ node the vhosts are made on (port 5672, user guest)
AMQP_HOST = "127.0.0.1"
#: where PgDatabase creates and drops its databases
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: the `esi` command of the running interpreter's environment: what EsiProcess runs
ESI = str(Path(sys.executable).parent / "esi")


@contextlib.contextmanager
def serve_in_thread(app: Any, *, name: str = "test-server") -> Iterator[str]:
    """Serve an ASGI app with a real uvicorn server in a thread on a free port of 127.0.0.1; yield its base URL."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:  # polling a flag with a deadline: uvicorn offers no start-up event
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"{name}: uvicorn did not start within 10 s")
        time.sleep(0.005)
    # port 0: the kernel chose a free one (binding a socket ourselves would leave Nagle on: 40 ms per request)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for a process that binds it itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q <args>` against the local node; its output, or RuntimeError if it fails."""
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)  # noqa: S603, S607 - the test harness runs the local node's rabbitmqctl
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


class Vhost:
    """A RabbitMQ vhost of its own for one test (or module), deleted afterwards."""

    def __init__(self) -> None:
        self.name = f"esi-test-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"amqp://guest:guest@{AMQP_HOST}:5672/{quote(self.name, safe='')}"

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


class PgDatabase:
    """A PostgreSQL database of its own, dropped afterwards."""

    def __init__(self) -> None:
        import asyncpg

        self.name = f"esi_test_{uuid.uuid4().hex[:10]}"
        self._asyncpg = asyncpg
        asyncio.run(self._exec(f'CREATE DATABASE "{self.name}"'))
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"

    async def _exec(self, sql: str) -> None:
        conn = await self._asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def drop(self) -> None:
        asyncio.run(self._exec(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class EsiProcess:
    """One `esi run <services>` subprocess with its environment, logging to `log_path` (appended across restarts)."""

    services: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        """Where this process answers /healthz, /readyz and /metrics."""
        if "onec" in self.services:
            return f"http://127.0.0.1:{self.env['ESI_HTTP_PORT']}"
        return f"http://127.0.0.1:{self.env['ESI_HEALTH_PORT']}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(  # noqa: S603 - the test harness starts the installed esi with its own arguments
                [ESI, "run", *self.services], env=self.env, stdout=log, stderr=log, cwd=self.log_path.parent
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None  # noqa: S101 - started before it is stopped; narrows for mypy
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None  # noqa: S101 - started before it is stopped; narrows for mypy
        self.proc.kill()
        self.proc.wait(10)


def _registry() -> Registry:
    from esi.systems.registry import load_registry

    return load_registry()


@dataclass
class EsiSystem:
    """esi running in subprocesses on the given broker URL and store, with every system's fake, driven over HTTP.

    `workdir` holds each process's log (`<name>.log`; `logs()` joins them). The API listens on `api_port`, each
    fake on its `fake_ports[code]`, each other process's /healthz on the ESI_HEALTH_PORT of its environment.
    """

    workdir: Path
    amqp_url: str
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    #: the registry of systems the processes run with (its fakes get ports here); by default the installed
    #: systems (`load_registry()`); the processes load theirs from their environment
    registry: Registry = field(default_factory=_registry)
    fake_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, EsiProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for system in self.registry.systems:
            if system.fake is not None:
                self.fake_ports.setdefault(system.code, free_port())

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def fake_url(self, code: str) -> str:
        return f"http://127.0.0.1:{self.fake_ports[code]}"

    @property
    def creatio_url(self) -> str:
        return self.fake_url("crm")

    @property
    def dms_url(self) -> str:
        return self.fake_url("dms")

    def env(self) -> dict[str, str]:
        """The processes' environment: this one's without its ESI_/RABBITMQ_/systems' settings, then the harness's."""
        prefixes = (
            "ESI_",
            "RABBITMQ_",
            *(s.settings.model_config.get("env_prefix", "") for s in self.registry.systems if s.settings is not None),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(p for p in prefixes if p))}
        env.update(
            {
                "ESI_AMQP_URL": self.amqp_url,
                "ESI_DATABASE_URL": self.database_url,
                "ESI_HTTP_PORT": str(self.api_port),
                "ESI_RETRY_DELAYS": "[0.2, 0.4, 0.8, 1.6]",
                "ESI_MAX_ATTEMPTS": "4",
                "ESI_LOG_FORMAT": "json",
                "ESI_AUTH": "off",  # the authentication tests turn it on with their own clients
                # no readiness checks on a timer: they would call the fakes behind the tests' backs (and their faults)
                "ESI_READINESS_INTERVAL": "0",
            }
        )
        for system in self.registry.systems:
            if system.settings is None:
                continue
            env[system.settings.env_name("timeout")] = "5"
            if system.fake is not None:
                env[system.settings.env_name("fake_port")] = str(self.fake_ports[system.code])
                env[system.settings.env_name("url")] = self.fake_url(system.code)
        env.update(self.extra_env)
        return env

    def start(self, name: str, services: list[str], env: dict[str, str] | None = None) -> EsiProcess:
        """Start `esi run <services>` as process `name` (a restart keeps its health port), with `env` on top."""
        previous = self.processes.get(name)
        port = previous.env["ESI_HEALTH_PORT"] if previous else str(free_port())
        process = EsiProcess(
            services, {**self.env(), "ESI_HEALTH_PORT": port, **(env or {})}, self.workdir / f"{name}.log"
        )
        process.start()
        self.processes[name] = process
        return process

    def start_all(self, layout: dict[str, list[str]] | None = None) -> None:
        """Start a process per `layout` entry (default: every fake in one, every adapter in another); wait for the
        fakes and the API to answer."""
        fakes = list(self.registry.fakes)
        layout = layout or {"fakes": fakes, "adapters": list(self.registry.services)}
        for name, services in layout.items():
            self.start(name, services)
        for fake, system in self.registry.fakes.items():
            if any(fake in s for s in layout.values()):
                self.wait_http(f"{self.fake_url(system.code)}/_fake/state")
        if any(self.registry.origin.service in s for s in layout.values()):
            self.wait_http(f"{self.api_url}/readyz")

    def wait_http(self, url: str, timeout: float = 60) -> None:
        """Wait until `url` answers 200; fail at once, with the logs, if a process has exited."""

        def ok() -> bool:
            for p in self.processes.values():
                if p.proc is not None and p.proc.poll() is not None:
                    raise AssertionError(f"esi {p.services} exited with {p.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ok, timeout=timeout, interval=0.1, what=f"{url} to answer 200")

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every process, last started first; their exit codes by name."""
        return {name: p.stop() for name, p in reversed(list(self.processes.items())) if p.proc is not None}

    def kill_all(self) -> None:
        """SIGKILL every process still running (a test that failed cleans up without waiting on them)."""
        for process in self.processes.values():
            if process.proc is not None and process.proc.poll() is None:
                process.kill()

    def logs(self) -> str:
        return "".join(p.log_path.read_text(errors="replace") for p in self.processes.values() if p.log_path.exists())

    # --- driving it ---------------------------------------------------------------------------------------------

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.api_url}{path}", json=json, timeout=30, **kwargs)

    def get_request(self, request_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api_url}/requests/{request_id}", timeout=10)
        assert response.status_code == 200, response.text  # noqa: S101 - the test harness's check
        record: dict[str, Any] = response.json()
        return record

    def wait_final(
        self, request_id: str, timeout: float = 20, final: tuple[str, ...] = ("completed", "failed", "dead_lettered")
    ) -> dict[str, Any]:
        """The request's record once its status is one of `final`."""

        def settled() -> dict[str, Any] | None:  # a long poll: one GET usually does it
            response = httpx.get(f"{self.api_url}/requests/{request_id}", params={"wait": 2}, timeout=10)
            assert response.status_code == 200, response.text  # noqa: S101 - the test harness's check
            record = response.json()
            return record if record["status"] in final else None

        what = f"request {request_id} to reach one of {final}"
        record: dict[str, Any] = wait_until(settled, timeout=timeout, what=what)
        return record

    def fake_state(self, code: str) -> dict[str, Any]:
        """What the fake of system `code` holds (GET /_fake/state)."""
        state: dict[str, Any] = httpx.get(f"{self.fake_url(code)}/_fake/state", timeout=10).json()
        return state

    def creatio_state(self) -> dict[str, Any]:
        return self.fake_state("crm")

    def dms_state(self) -> dict[str, Any]:
        return self.fake_state("dms")

    def reset_fakes(self) -> None:
        """Put every fake this system runs back to its seed, its faults cleared (POST /_fake/reset); a layout may
        leave one out (the fake 1C, where no test needs it)."""
        running = {s for p in self.processes.values() for s in p.services}
        for code in self.fake_ports:
            system = self.registry.system(code)
            if system.fake is not None and system.fake.service in running:
                httpx.post(f"{self.fake_url(code)}/_fake/reset", timeout=10).raise_for_status()

    def fault(self, system: str, spec: dict[str, Any]) -> None:
        """Make the fake of `system` misbehave as `spec` says (POST /_fake/faults; see esi.fakes.faults)."""
        httpx.post(f"{self.fake_url(system)}/_fake/faults", json=spec, timeout=10).raise_for_status()
