"""What the harness reads about processes and the machine: RSS and CPU from /proc, nothing installed."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in kB (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def read_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of `pid` (its threads included), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of `pid`: writing 5 to clear_refs (Linux ≥ 4.0, our own children)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def find_rabbitmq_pid(port: int | None = None) -> int | None:
    """The broker's Erlang VM (beam.smp running rabbit), looked up read-only in /proc: with `port`, the one listening
    on it (other nodes may run beside it: the local cluster's, on ports of their own), else the first found."""
    beams: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if not f.read().startswith("beam"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"rabbit" in f.read():
                    beams.append(int(entry))
        except OSError:
            continue
    if port is None or len(beams) < 2:
        return beams[0] if beams else None
    sockets = listening_sockets(port)
    for pid in beams:
        try:
            if fd_links(pid) & sockets:
                return pid
        except OSError:
            continue
    return None


def fd_links(pid: int) -> set[str]:
    """What the process's open file descriptors point at (`socket:[inode]`, paths); a descriptor closed while they
    are read is skipped (a busy broker opens and closes them all the time)."""
    links: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return links


def listening_sockets(port: int) -> set[str]:
    """The sockets listening on TCP `port` (IPv4 or IPv6), as their /proc/<pid>/fd links read: `socket:[inode]`."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address as hex ip:port; state 0A is LISTEN; the inode is the tenth field
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(f"socket:[{fields[9]}]")
    return found


#: the pseudo-process standing for the whole machine: CPU busy on all cores (anyone's, not only ours)
MACHINE = "machine(all)"


def set_scheduling(pid: int, *, realtime: bool, priority: int = 10) -> bool:
    """Every thread of process `pid` under round-robin real-time scheduling at `priority` (`realtime`), or back under
    the normal policy; threads it starts later inherit it from the thread that starts them. False when this process
    may not (no CAP_SYS_NICE), the platform has no such policy, or `pid` is gone.

    Section fairness uses it to give the system under test the CPU before the programs that share this machine with
    it but would not share its host on a site (the broker, the runaway client, other work): see bench.fairness."""
    policy = getattr(os, "SCHED_RR" if realtime else "SCHED_OTHER", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return False
    param = os.sched_param(priority if realtime else 0)
    try:
        for tid in threads:
            try:
                os.sched_setscheduler(tid, policy, param)
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
    except PermissionError:
        return False
    return True


def machine_busy_seconds() -> float | None:
    """CPU seconds the machine spent busy (all cores, all processes) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


@dataclass
class Sample:
    t: float
    name: str
    pid: int
    rss_kb: int
    cpu_s: float


class ProcSampler(threading.Thread):
    """Samples RSS and CPU of named processes every `interval` seconds, in a thread of its own.

    Phases are windows of time: `mark(name)` starts one, `close(name)` ends it, `report(name)` says, per process,
    the peak RSS seen (sampled VmRSS, and VmHWM reset at the phase's start where the kernel lets us) and the CPU used.
    """

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(name="proc-sampler", daemon=True)
        self.interval = interval
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._halt = threading.Event()
        self._phases: dict[str, list[float | None]] = {}
        self._hwm: dict[str, dict[str, int]] = {}
        self._resettable: set[int] = set()

    def watch(self, name: str, pid: int, *, resettable: bool = True) -> None:
        with self._lock:
            self._pids[name] = pid
            if resettable:
                self._resettable.add(pid)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def watched(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pids)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample_once()
            self._halt.wait(self.interval)

    def sample_once(self) -> None:
        now = time.monotonic()
        busy = machine_busy_seconds()
        if busy is not None:
            with self._lock:
                self._samples.append(Sample(now, MACHINE, 0, 0, busy))
        for name, pid in self.watched().items():
            status = read_status(pid)
            cpu = read_cpu_seconds(pid)
            if "VmRSS" in status and cpu is not None:
                with self._lock:
                    self._samples.append(Sample(now, name, pid, status["VmRSS"], cpu))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    # --- phases -------------------------------------------------------------------------------------------------

    def mark(self, phase: str) -> None:
        for pid in self.watched().values():
            if pid in self._resettable:
                reset_peak(pid)
        self.sample_once()
        self._phases[phase] = [time.monotonic(), None]
        self._hwm[phase] = {}

    def close(self, phase: str) -> None:
        self.sample_once()
        self._phases[phase][1] = time.monotonic()
        for name, pid in self.watched().items():
            hwm = read_status(pid).get("VmHWM")
            if hwm is not None and pid in self._resettable:
                self._hwm[phase][name] = hwm

    def report(self, phase: str) -> dict[str, dict[str, Any]]:
        """Per process name: peak RSS (MB), last RSS (MB), CPU seconds and share of one core during the phase."""
        start, end = self._phases[phase]
        end = end if end is not None else time.monotonic()
        with self._lock:
            window = [s for s in self._samples if start <= s.t <= end]
        out: dict[str, dict[str, Any]] = {}
        for name in sorted({s.name for s in window}):
            mine = [s for s in window if s.name == name]
            cpu = 0.0
            for pid in {s.pid for s in mine}:
                of_pid = [s for s in mine if s.pid == pid]
                cpu += of_pid[-1].cpu_s - of_pid[0].cpu_s
            peak_kb = max(s.rss_kb for s in mine)
            peak_kb = max(peak_kb, self._hwm.get(phase, {}).get(name, 0))
            seconds = max(end - start, 1e-9)
            if name == MACHINE:
                out[name] = {"cpu_s": round(cpu, 2), "cpu_pct_of_one_core": round(100 * cpu / seconds, 1)}
                continue
            out[name] = {
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "last_rss_mb": round(mine[-1].rss_kb / 1024, 1),
                "cpu_s": round(cpu, 2),
                "cpu_pct_of_one_core": round(100 * cpu / seconds, 1),
            }
        return out


# --- the machine --------------------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mem_total_mb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _rabbitmq_version() -> str | None:
    try:
        result = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_model": _cpu_model(),
        "memory_mb": _mem_total_mb(),
        "rabbitmq_version": _rabbitmq_version(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
