"""What the chaos run breaks, all of its own: a RabbitMQ cluster, a PostgreSQL server and TCP proxies in front of them.

Nothing here touches the shared RabbitMQ (5672) or PostgreSQL (5432) the tests and other users rely on:

    Broker       one or three RabbitMQ nodes `chaos<tag>n<i>@localhost` on free loopback ports, under a directory of
                 the run's own (the local.sh cluster's recipe, `deploy/cluster/local.sh`, with other names and ports)
    Postgres     a PostgreSQL server of its own (initdb into the run's directory, a free port), `restart()`, `stall()`
    Proxy        an asyncio TCP proxy in front of one of them: `pass`, `blackhole` (bytes held, as a partition that
                 heals), `delay` (each chunk held a while) and `reset()` (every open connection dropped with an RST)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from esi.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ADVANCED_CONFIG = ROOT / "deploy" / "rabbitmq" / "advanced.config"
PG_BIN = Path(os.environ.get("ESI_CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_user(user: str) -> list[str]:
    """The prefix running a command as `user` when we are root (PostgreSQL refuses root; RabbitMQ's files)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def _own(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
        for child in path.rglob("*"):
            shutil.chown(child, user, user)


def _ctl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


# --- RabbitMQ --------------------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One RabbitMQ node of the run's own."""

    name: str
    port: int
    dist_port: int
    dir: Path

    @property
    def pid_file(self) -> Path:
        return self.dir / "rabbit.pid"

    def env(self) -> dict[str, str]:
        return {
            **_ctl_env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
        }

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(  # noqa: S603 - the run's own node
            ["rabbitmqctl", "-q", "-n", self.name, *args],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_ctl_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def write_config(self, clustered: bool) -> None:
        (self.dir / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        lines = [
            f"listeners.tcp.local = 127.0.0.1:{self.port}",
            "disk_free_limit.absolute = 50MB",
            "log.console = false",
            "log.file.level = warning",
        ]
        if clustered:
            lines.append("cluster_partition_handling = pause_minority")
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        shutil.copy(ADVANCED_CONFIG, self.dir / "advanced.config")
        _own(self.dir, "rabbitmq")

    def start(self) -> None:
        """Start the node (detached) and wait for it to boot."""
        for attempt in range(3):  # on a loaded machine a detached start now and then never comes up: again
            launched = subprocess.run(
                ["rabbitmq-server", "-detached"],  # noqa: S607
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            try:
                self.ctl("wait", str(self.pid_file), "--timeout", "90", timeout=120)
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError(f"{self.name} did not start: {launched.stdout} {launched.stderr}") from None
        self.ctl("await_startup", "--timeout", "120", timeout=150)

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """kill -9 (a crash)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not self.running(), timeout=30, what=f"{self.name} to die")

    def stop(self) -> None:
        """A clean stop of the whole node."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("stop", str(self.pid_file), timeout=90)
        if self.running():
            self.kill()


class Broker:
    """`nodes` RabbitMQ nodes of the run's own, clustered when more than one; the default vhost, user guest."""

    def __init__(self, workdir: Path, nodes: int = 1) -> None:
        tag = uuid.uuid4().hex[:6]
        self.nodes = [
            Node(f"chaos{tag}n{i}@localhost", free_port(), free_port(), workdir / f"rabbit-n{i}")
            for i in range(1, nodes + 1)
        ]

    def up(self) -> None:
        clustered = len(self.nodes) > 1
        for node in self.nodes:
            node.write_config(clustered)
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            node.ctl("await_startup", "--timeout", "120", timeout=150)

    def down(self) -> None:
        for node in self.nodes:
            if node.running():
                node.kill()

    def via(self) -> Node:
        """A running node to ask."""
        for node in self.nodes:
            if node.running():
                try:
                    node.ctl("ping", timeout=15)
                    return node
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
        raise RuntimeError("no node of the chaos broker runs")

    def queues(self, *columns: str) -> list[list[str]]:
        out = self.via().ctl("list_queues", "name", *columns, "--no-table-headers", timeout=60)
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def leader_of(self, queue: str) -> Node:
        """The node leading `queue` (the first node when it has no leader or the broker has one node)."""
        if len(self.nodes) > 1:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, StopIteration):
                leader = next(row[1] for row in self.queues("leader") if row[0] == queue)
                return next(node for node in self.nodes if node.name == leader)
        return self.nodes[0]

    def channels_per_connection(self) -> dict[str, list[int]]:
        """The AMQP channels of each client connection, by the name the client gave it, over every running node."""
        found: dict[str, list[int]] = {}
        for node in self.nodes:
            if not node.running():
                continue
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                out = node.ctl("list_connections", "user_provided_name", "channels", "--no-table-headers")
                for line in out.splitlines():
                    name, _, channels = line.rpartition("\t")
                    if channels.strip().isdigit():
                        found.setdefault(name or "?", []).append(int(channels))
        return found


# --- PostgreSQL ------------------------------------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL server of the run's own: its own data directory and port, trust authentication, user postgres."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "pg"
        self.port = free_port()
        self.log = workdir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(  # noqa: S603 - the run's own server
            [*_as_user("postgres"), *args], check=True, capture_output=True, timeout=timeout
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.dir),
            "-l",
            str(self.log),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200 -c fsync=off",
            "-w",
            "-t",
            "120",
            *args,
        )

    def up(self) -> None:
        self.dir.mkdir(parents=True)
        self.log.touch()
        _own(self.dir, "postgres")
        if os.geteuid() == 0:
            shutil.chown(self.log, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._pg_ctl("start")

    def postmaster(self) -> int | None:
        try:
            return int((self.dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def ensure_running(self) -> None:
        pid = self.postmaster()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                for child in children(pid):
                    os.kill(child, signal.SIGCONT)
                return
        self._pg_ctl("start")

    def signal_all(self, sig: int) -> None:
        """`sig` to the postmaster and every backend (SIGSTOP: the server stalls as on a frozen VM)."""
        pid = self.postmaster()
        if pid is None:
            return
        for target in [pid, *children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)

    def down(self) -> None:
        self.signal_all(signal.SIGCONT)
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._pg_ctl("-m", "immediate", "stop")


# --- TCP proxy -------------------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A TCP proxy on a free port of 127.0.0.1 in front of `upstream_port`, in a thread of its own."""

    name: str
    upstream_port: int
    port: int = field(default_factory=free_port)
    mode: str = "pass"  # pass | blackhole | delay
    delay_s: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = None
    _conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"proxy {self.name} did not start")

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def set(self, mode: str, delay_s: float = 0.0) -> None:
        self.mode, self.delay_s = mode, delay_s

    def reset(self) -> int:
        """Drop every open connection with an RST; how many there were."""
        assert self._loop is not None  # noqa: S101 - started first
        return asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(10)

    async def _reset(self) -> int:
        conns = list(self._conns)
        for client, upstream in conns:
            for writer in (client, upstream):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._conns.clear()
        return len(conns)

    async def _hold(self) -> None:
        while self.mode == "blackhole":  # noqa: ASYNC110 - the mode is set from another thread
            await asyncio.sleep(0.05)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._hold()  # a new connection in a blackhole: accepted, never answered until it lifts
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._conns.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    await self._hold()
                    if self.mode == "delay" and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort() if dst.transport.is_closing() else dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._conns.discard(pair)


def wait_port(port: int, timeout: float = 60) -> None:
    def open_() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(open_, timeout=timeout, interval=0.2, what=f"port {port}")


def now() -> float:
    return time.time()
