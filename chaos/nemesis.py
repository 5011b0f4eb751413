"""The nemesis: from a seed, a schedule of faults over the run, every fault class at least once, then injected.

Each fault class is one entry of `FAULTS`: its name, what it promises (docs/reliability.md), its length and how to
inject it (an async function of the `Target`s and the fault's random draw). Faults run in `lanes` at once (two lanes:
a node restart can meet a frozen adapter or a PostgreSQL stall, as in a production week).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chaos.infra import Broker, Node, Postgres, Proxy
from esi.testing import EsiSystem


@dataclass
class Targets:
    """What the nemesis may break."""

    system: EsiSystem
    #: the esi processes it may kill or freeze (by name in `system.processes`), not the fakes
    esi: list[str]
    broker: Broker
    postgres: Postgres
    proxies: list[Proxy]
    #: the fakes whose faults it arms: system code -> URL
    fakes: dict[str, str]
    #: a work queue whose leader a node kill prefers
    queues: list[str] = field(default_factory=lambda: ["dms_queue", "crm_queue"])
    #: process name -> pid of the processes the nemesis has frozen (the supervisor leaves them alone)
    frozen: set[str] = field(default_factory=set)
    #: names the nemesis is restarting (the supervisor leaves them alone too)
    restarting: set[str] = field(default_factory=set)
    #: starts process `name` again with its services (and the environment it was first started with)
    restart: Callable[[str, list[str]], None] | None = None


@dataclass
class Injected:
    """One fault as it happened."""

    fault: str
    target: str
    started: float
    ended: float = 0.0
    detail: str = ""
    error: str | None = None


Inject = Callable[[Targets, random.Random, float], Awaitable[str]]


@dataclass(frozen=True)
class FaultClass:
    name: str
    #: seconds the fault lasts (drawn between the two)
    length: tuple[float, float]
    inject: Inject


async def _esi_kill(t: Targets, rng: random.Random, length: float) -> str:
    name = rng.choice(t.esi)
    process = t.system.processes[name]
    t.restarting.add(name)
    try:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.proc.wait, 30)
        await asyncio.sleep(length)  # a supervisor's restart delay
        (t.restart or t.system.start)(name, process.services)
    finally:
        t.restarting.discard(name)
    return f"kill -9 {name}, restarted after {length:.1f}s"


async def _esi_pause(t: Targets, rng: random.Random, length: float) -> str:
    choices = [n for n in t.esi if n not in t.frozen and n not in t.restarting]
    if not choices:
        return "nothing to freeze"
    name = rng.choice(choices)
    proc = t.system.processes[name].proc
    if proc is None or proc.poll() is not None:
        return f"{name} not running"
    t.frozen.add(name)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(length)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        t.frozen.discard(name)
    return f"SIGSTOP {name} for {length:.1f}s"


def _node(t: Targets, rng: random.Random, leader: bool) -> Node:
    running = [n for n in t.broker.nodes if n.running()]
    if leader and len(t.broker.nodes) > 1:
        node = t.broker.leader_of(rng.choice(t.queues))
        if node in running:
            return node
    return rng.choice(running or t.broker.nodes)


async def _broker_stop(t: Targets, rng: random.Random, length: float) -> str:
    node = await asyncio.to_thread(_node, t, rng, False)
    await asyncio.to_thread(node.stop)
    await asyncio.sleep(length)
    await asyncio.to_thread(node.start)
    return f"stop {node.name}, {length:.1f}s down"


async def _broker_kill(t: Targets, rng: random.Random, length: float) -> str:
    node = await asyncio.to_thread(_node, t, rng, True)
    await asyncio.to_thread(node.kill)
    await asyncio.sleep(length)
    await asyncio.to_thread(node.start)
    return f"kill -9 {node.name} (leader), {length:.1f}s down"


def _proxy(t: Targets, rng: random.Random) -> Proxy:
    return rng.choice(t.proxies)


async def _net(mode: str, t: Targets, rng: random.Random, length: float) -> str:
    proxy = _proxy(t, rng)
    delay = rng.uniform(0.05, 0.3) if mode == "delay" else 0.0
    proxy.set(mode, delay)
    try:
        await asyncio.sleep(length)
    finally:
        proxy.set("pass")
    return f"{mode} {proxy.name} for {length:.1f}s" + (f", {delay:.2f}s a chunk" if delay else "")


async def _net_blackhole(t: Targets, rng: random.Random, length: float) -> str:
    return await _net("blackhole", t, rng, length)


async def _net_delay(t: Targets, rng: random.Random, length: float) -> str:
    return await _net("delay", t, rng, length)


async def _net_reset(t: Targets, rng: random.Random, length: float) -> str:
    proxy = _proxy(t, rng)
    dropped = await asyncio.to_thread(proxy.reset)
    return f"reset {dropped} connections of {proxy.name}"


async def _pg_restart(t: Targets, rng: random.Random, length: float) -> str:
    await asyncio.to_thread(t.postgres.restart)
    return "pg_ctl restart -m fast"


async def _pg_stall(t: Targets, rng: random.Random, length: float) -> str:
    t.postgres.signal_all(signal.SIGSTOP)
    try:
        await asyncio.sleep(length)
    finally:
        t.postgres.signal_all(signal.SIGCONT)
    return f"SIGSTOP every PostgreSQL process for {length:.1f}s"


async def _fake(spec: dict[str, Any], t: Targets, rng: random.Random, length: float) -> str:
    code = rng.choice(sorted(t.fakes))
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{t.fakes[code]}/_fake/faults", json={**spec, "duration_s": length})
        response.raise_for_status()
        before = response.json()["injected"]
        await asyncio.sleep(length)
        after = (await client.post(f"{t.fakes[code]}/_fake/faults", json={})).json()["injected"]
    # the fake's own count of the calls the fault hit: it demonstrably fired
    return f"{code}: {spec} for {length:.1f}s, {after - before} calls hit"


async def _fake_503(t: Targets, rng: random.Random, length: float) -> str:
    return await _fake({"status": 503, "rate": rng.choice([0.5, 1.0])}, t, rng, length)


async def _fake_429(t: Targets, rng: random.Random, length: float) -> str:
    return await _fake({"status": 429, "rate": rng.choice([0.5, 1.0]), "retry_after": 2}, t, rng, length)


async def _fake_slow(t: Targets, rng: random.Random, length: float) -> str:
    return await _fake({"latency_ms": rng.randint(1000, 7000)}, t, rng, length)


async def _fake_reset(t: Targets, rng: random.Random, length: float) -> str:
    return await _fake({"reset_after_work": True, "rate": rng.choice([0.3, 0.6])}, t, rng, length)


async def _alarm(kind: str, t: Targets, rng: random.Random, length: float) -> str:
    # a limit above the free space of the node's disk (bytes)
    limit = (
        ("set_vm_memory_high_watermark", "0.0001")
        if kind == "memory"
        else ("set_disk_free_limit", str(2 * shutil.disk_usage(t.broker.nodes[0].dir).free))
    )
    for _ in range(20):  # the other lane may be stopping or restarting the node: wait for one that runs
        node = await asyncio.to_thread(_node, t, rng, False)
        try:
            await asyncio.to_thread(node.ctl, *limit)
            break
        except RuntimeError:
            await asyncio.sleep(3)
    else:
        raise RuntimeError(f"no running node took the {kind} alarm")
    try:
        await asyncio.sleep(length)
    finally:
        if node.running():
            if kind == "memory":
                await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
            else:
                await asyncio.to_thread(node.ctl, "set_disk_free_limit", "50MB")
    return f"{kind} alarm on {node.name} for {length:.1f}s"


async def _memory_alarm(t: Targets, rng: random.Random, length: float) -> str:
    return await _alarm("memory", t, rng, length)


async def _disk_alarm(t: Targets, rng: random.Random, length: float) -> str:
    return await _alarm("disk", t, rng, length)


FAULTS: tuple[FaultClass, ...] = (
    FaultClass("esi_kill", (1, 4), _esi_kill),
    FaultClass("esi_pause", (5, 30), _esi_pause),
    FaultClass("broker_stop", (3, 15), _broker_stop),
    FaultClass("broker_kill", (3, 15), _broker_kill),
    FaultClass("net_blackhole", (5, 20), _net_blackhole),
    FaultClass("net_delay", (5, 20), _net_delay),
    FaultClass("net_reset", (0, 0), _net_reset),
    FaultClass("pg_restart", (0, 0), _pg_restart),
    FaultClass("pg_stall", (20, 20), _pg_stall),
    FaultClass("fake_503", (5, 25), _fake_503),
    FaultClass("fake_429", (5, 25), _fake_429),
    FaultClass("fake_slow", (5, 20), _fake_slow),
    FaultClass("fake_reset", (5, 20), _fake_reset),
    FaultClass("broker_memory_alarm", (5, 15), _memory_alarm),
    FaultClass("broker_disk_alarm", (5, 15), _disk_alarm),
)


@dataclass
class Planned:
    at: float
    fault: FaultClass
    length: float
    seed: int


def plan(
    seed: int, *, start: float, end: float, lanes: int = 2, pause: tuple[float, float] = (2, 8)
) -> list[list[Planned]]:
    """The schedule: per lane, faults one after another from `start` to `end` seconds into the run; the classes in a
    shuffled order, again and again, so that each fires at least once when the window allows (`end - start` about
    `len(FAULTS) * 15 / lanes` seconds at least)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    schedule: list[list[Planned]] = [[] for _ in range(lanes)]
    order: list[FaultClass] = []
    cursor = [start + lane * rng.uniform(0, 5) for lane in range(lanes)]
    while True:
        if not order:
            order = list(FAULTS)
            rng.shuffle(order)
        lane = min(range(lanes), key=lambda i: cursor[i])
        fault = order.pop()
        length = rng.uniform(*fault.length)
        if cursor[lane] + length > end:
            break
        schedule[lane].append(Planned(cursor[lane], fault, length, rng.randrange(2**31)))
        cursor[lane] += length + rng.uniform(*pause) + (8 if fault.name.startswith("broker_") else 0)
    return schedule


class Nemesis:
    def __init__(self, targets: Targets, schedule: list[list[Planned]], *, log: Callable[[str], None] = print) -> None:
        self.targets = targets
        self.schedule = schedule
        self.log = log
        self.history: list[Injected] = []

    async def run(self, t0: float, until: float | None = None) -> None:
        """Inject the schedule from `t0` (monotonic); none starts after `until` seconds (a loaded machine makes the
        injections overrun their plan: the load is over by then)."""
        await asyncio.gather(*(self._lane(lane, t0, until) for lane in self.schedule))

    async def _lane(self, lane: list[Planned], t0: float, until: float | None) -> None:
        for planned in lane:
            if until is not None and time.monotonic() - t0 > until:
                self.log(f"nemesis: {len(lane) - lane.index(planned)} faults of a lane left out: past the load")
                return
            wait = t0 + planned.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            record = Injected(planned.fault.name, "", time.time())
            self.history.append(record)
            try:
                rng = random.Random(planned.seed)  # noqa: S311 - a reproducible draw
                record.detail = await planned.fault.inject(self.targets, rng, planned.length)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                record.error = f"{type(exc).__name__}: {exc}"[:500]
            record.ended = time.time()
            self.log(f"nemesis: {planned.fault.name}: {record.error or record.detail}")
