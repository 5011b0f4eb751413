"""A chaos run: esi on a broker and a PostgreSQL of the run's own, the workload, the nemesis, then the checker.

    python -m chaos.run --duration 300 --seed 7                       # one node, one process of each service
    python -m chaos.run --duration 1800 --seed 7 --nodes 3 --replicas 2 --rate 8 --report var/chaos.json

(`make chaos DURATION=1800 SEED=7 NODES=3 REPLICAS=2`.) Exit status 0 when the checker found nothing and every fault
class fired; the table is printed and the JSON report written (`--report`). Every part is torn down at the end; the
run's directory (processes' logs, the broker's and PostgreSQL's) is kept when it failed, and printed.

Against a site's own staging RabbitMQ and PostgreSQL instead of the run's own (docs/reliability.md):
`--amqp-url` and `--database-url`, with `--nemesis esi,fakes` (the faults that need no control over the servers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from chaos import checker
from chaos.infra import Broker, Postgres, Proxy
from chaos.nemesis import FAULTS, Nemesis, Targets, plan
from chaos.workload import POST_GIVE_UP_S, Context, Workload
from esi.testing import EsiSystem, free_port, wait_until

#: retries long enough for the longest fault (two lanes overlapping: a 30 s freeze during a 20 s stall), so that a
#: request dead-letters only when a fault is permanent by design
RETRY_DELAYS = "[1, 2, 4, 8, 15, 30, 30, 30, 30]"
MAX_ATTEMPTS = "10"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed
        self.tag = f"{self.seed}{uuid.uuid4().hex[:4]}".upper()
        #: the secret the workload signs the DMS's webhook calls with (as the DMS does), set for the API processes
        self.dms_webhook_secret = uuid.uuid4().hex
        self.dir = Path(tempfile.mkdtemp(prefix="esi-chaos-"))
        os.chmod(self.dir, 0o755)  # noqa: S103 - the broker's and PostgreSQL's users enter it
        self.broker = Broker(self.dir, args.nodes)
        self.postgres = Postgres(self.dir)
        self.proxies: list[Proxy] = []
        self.system: EsiSystem | None = None
        self.extra_env: dict[str, dict[str, str]] = {}
        self.samples: list[checker.Sample] = []
        self.exits: Counter[str] = Counter()
        self.stopping = False
        #: when each esi process was last started (its warm-up counts from there)
        self.started_at: dict[str, float] = {}

    # --- set-up ---------------------------------------------------------------------------------------------------

    def up(self) -> EsiSystem:
        say(f"chaos: run directory {self.dir}")
        self.postgres.up()
        self.broker.up()
        for node in self.broker.nodes:
            self.proxies.append(Proxy(f"amqp-{node.name.split('@')[0][-2:]}", node.port))
        self.proxies.append(Proxy("postgres", self.postgres.port))
        for proxy in self.proxies:
            proxy.start()
        amqp = ",".join(f"amqp://guest:guest@127.0.0.1:{p.port}/" for p in self.proxies[:-1])
        database = f"postgresql://postgres@127.0.0.1:{self.proxies[-1].port}/postgres"
        system = EsiSystem(
            workdir=self.dir,
            amqp_url=amqp,
            database_url=database,
            extra_env={
                "ESI_RETRY_DELAYS": RETRY_DELAYS,
                "ESI_MAX_ATTEMPTS": MAX_ATTEMPTS,
                "ESI_PUBLISH_TIMEOUT": "5",
                "ESI_REPLICAS": str(self.args.replicas),
                "ESI_LOG_LEVEL": "INFO",
                # the event flows: the DMS's policy events (signed webhook calls) to Creatio's UsrPolicy and to 1C,
                # Creatio's order_changed to 1C, as they subscribe by default (`System.subscribes`); 1C gets them
                # pushed to its HTTP service, the fake 1C (ONEC_BASE_URL and its port: set by EsiSystem for every
                # fake)
                "DMS_WEBHOOK_SECRET": self.dms_webhook_secret,
                "ONEC_DELIVERY": "push",
            },
        )
        self.system = system
        say(f"chaos: {len(self.broker.nodes)} RabbitMQ node(s), PostgreSQL on {self.postgres.port}, proxies up")
        system.start_all(
            {"fakes": ["fake-creatio", "fake-dms", "fake-1c"], "onec": ["onec"], "dms": ["dms"], "crm": ["crm"]}
        )
        for i in range(2, self.args.replicas + 1):
            self.extra_env[f"onec{i}"] = {"ESI_HTTP_PORT": str(free_port())}
            self._start(f"onec{i}", ["onec"])
            self._start(f"dms{i}", ["dms"])
            self._start(f"crm{i}", ["crm"])
        for name in self.apis_names():
            system.wait_http(f"{self.api(name)}/readyz")
        return system

    def _start(self, name: str, services: list[str]) -> None:
        assert self.system is not None  # noqa: S101 - set up first
        self.system.start(name, services, env=self.extra_env.get(name))
        self.started_at[name] = time.time()

    def apis_names(self) -> list[str]:
        return ["onec", *(f"onec{i}" for i in range(2, self.args.replicas + 1))]

    def api(self, name: str) -> str:
        assert self.system is not None  # noqa: S101 - set up first
        port = self.extra_env.get(name, {}).get("ESI_HTTP_PORT", str(self.system.api_port))
        return f"http://127.0.0.1:{port}"

    def esi_names(self) -> list[str]:
        assert self.system is not None  # noqa: S101 - set up first
        return [n for n in self.system.processes if n != "fakes"]

    # --- during the run -------------------------------------------------------------------------------------------

    async def supervise(self, targets: Targets) -> None:
        """Restart an esi process that exited (as systemd or Kubernetes would), unless the nemesis has it."""
        assert self.system is not None  # noqa: S101 - set up first
        while not self.stopping:
            for name, process in list(self.system.processes.items()):
                if name in targets.restarting or name in targets.frozen or process.proc is None:
                    continue
                if process.proc.poll() is not None:
                    self.exits[name] += 1
                    say(f"supervisor: {name} exited with {process.proc.returncode}; restarting")
                    self._start(name, process.services)
            await asyncio.sleep(1.0)

    async def sampler(self) -> None:
        assert self.system is not None  # noqa: S101 - set up first
        while not self.stopping:
            self.sample()
            await asyncio.sleep(5.0)

    def sample(self) -> None:
        assert self.system is not None  # noqa: S101 - set up first
        now = time.time()
        for name, process in self.system.processes.items():
            if process.proc is not None and process.proc.poll() is None:
                started = self.started_at.get(name, now)
                s = checker.sample(name, process.proc.pid, started, now)
                if s is not None:
                    self.samples.append(s)

    def heal(self, targets: Targets) -> None:
        """Every fault lifted: proxies passing, nothing frozen, every node and PostgreSQL up, no fake fault armed."""
        assert self.system is not None  # noqa: S101 - set up first
        for proxy in self.proxies:
            proxy.set("pass")
        for process in self.system.processes.values():
            if process.proc is not None and process.proc.poll() is None:
                os.kill(process.proc.pid, signal.SIGCONT)
        self.postgres.ensure_running()
        for node in self.broker.nodes:
            if not node.running():
                node.start()
            with contextlib.suppress(Exception):
                node.ctl("set_vm_memory_high_watermark", "0.4")
                node.ctl("set_disk_free_limit", "50MB")
        for url in targets.fakes.values():
            httpx.post(f"{url}/_fake/faults", json={}, timeout=30).raise_for_status()

    # --- the whole run --------------------------------------------------------------------------------------------

    async def load(self, workload: Workload, nemesis: Nemesis, targets: Targets) -> None:
        t0 = time.monotonic()
        background = [
            asyncio.create_task(self.supervise(targets)),
            asyncio.create_task(self.sampler()),
        ]
        nemesis_task = asyncio.create_task(nemesis.run(t0, until=self.args.duration))
        await workload.run(self.args.duration)
        await nemesis_task
        self.stopping = True
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    def drain(self, workload: Workload) -> float:
        """Wait until every accepted request settled, the outbox is empty and every queue too; how long it took."""
        assert self.system is not None  # noqa: S101 - set up first
        started = time.monotonic()
        accepted = {s.request_id for s in workload.sent if s.accepted and s.record}
        database = self.postgres.url

        def settled() -> bool:
            final = asyncio.run(checker.finals(database, self.tag))
            waiting = [r for r in accepted if (final.get(r) or {}).get("settled_at") is None]
            return not waiting and asyncio.run(checker.unsent_outbox(database)) == 0

        with contextlib.suppress(AssertionError):
            wait_until(settled, timeout=self.args.drain, interval=2, what="every accepted request to settle")

        def empty() -> bool:
            return not checker.queue_violations(self.broker.queues("messages_ready", "messages_unacknowledged"))

        with contextlib.suppress(AssertionError):
            wait_until(empty, timeout=60, interval=3, what="every queue to empty")
        return time.monotonic() - started

    @staticmethod
    def dead_letters(api: str) -> list[dict[str, Any]]:
        """Every dead letter, as `GET /dlq` lists them (asked again while the API answers otherwise)."""

        def listed() -> list[dict[str, Any]] | None:
            try:
                response = httpx.get(f"{api}/dlq", params={"limit": 10000}, timeout=60)
            except httpx.HTTPError:
                return None
            return response.json()["messages"] if response.status_code == 200 else None

        letters: list[dict[str, Any]] = wait_until(
            lambda: (found := listed()) is not None and [found], timeout=120, interval=2, what="GET /dlq"
        )[0]
        return letters

    def main(self) -> int:
        wall = time.monotonic()
        ok = False
        try:
            system = self.up()
            fakes = {"crm": system.creatio_url, "dms": system.dms_url, "1c": system.fake_url("1c")}
            ctx = Context(self.tag, fakes, dms_webhook_secret=self.dms_webhook_secret)
            apis = [self.api(n) for n in self.apis_names()]
            workload = Workload(ctx, apis, rate=self.args.rate, seed=self.seed)
            workload.setup()
            for name in system.processes:
                self.started_at.setdefault(name, time.time())
            targets = Targets(
                system=system,
                esi=self.esi_names(),
                broker=self.broker,
                postgres=self.postgres,
                proxies=self.proxies,
                fakes=fakes,
            )
            targets.restart = self._start
            warmup = self.args.warmup
            schedule = plan(self.seed, start=warmup, end=self.args.duration - 10, lanes=self.args.lanes)
            nemesis = Nemesis(targets, schedule, log=say)
            say(
                f"chaos: {sum(len(lane) for lane in schedule)} faults planned over {self.args.duration:.0f}s, "
                f"{self.args.rate}/s of requests, tag {self.tag}"
            )
            warm_channels: dict[str, list[int]] = {}

            async def whole() -> None:
                async def channels_after_warmup() -> None:
                    await asyncio.sleep(max(5.0, warmup - 5))
                    warm_channels.update(await asyncio.to_thread(self.broker.channels_per_connection))

                await asyncio.gather(self.load(workload, nemesis, targets), channels_after_warmup())

            asyncio.run(whole())
            say(f"chaos: load over, {len(workload.sent)} requests sent; healing and draining")
            self.heal(targets)
            drain_s = self.drain(workload)
            time.sleep(5)
            self.sample()
            end_channels = self.broker.channels_per_connection()
            final = asyncio.run(checker.finals(self.postgres.url, self.tag))
            ctx.store_events = asyncio.run(checker.event_store(self.postgres.url, self.tag))
            violations = checker.request_violations(workload.sent, final)
            violations += checker.flow_violations(workload.flows, ctx, workload.sent, final)
            violations += checker.queue_violations(self.broker.queues("messages_ready", "messages_unacknowledged"))
            letters = self.dead_letters(apis[0])
            violations += checker.dead_letters(letters, workload.sent, final)
            copies = checker.duplicate_dead_letters(letters)
            unsent = asyncio.run(checker.unsent_outbox(self.postgres.url))
            if unsent:
                violations.append(checker.Violation("stuck_outbox", f"{unsent} outbox rows never published"))
            resource, resource_table = checker.resource_violations(self.samples, warmup_s=self.args.resource_warmup)
            violations += resource
            violations += checker.channel_violations(warm_channels, end_channels)
            sent_by_id = {s.request_id: s for s in workload.sent}
            table, charged = checker.fault_table(
                nemesis.history, violations, sent_by_id, final, lambda at: workload.in_flight(at, final)
            )
            report = checker.Report(
                seed=self.seed,
                duration_s=self.args.duration,
                nodes=len(self.broker.nodes),
                replicas=self.args.replicas,
                requests=len(workload.sent),
                accepted=sum(1 for s in workload.sent if s.accepted),
                by_flow=dict(Counter(s.flow for s in workload.sent)),
                by_mode=dict(Counter(s.mode for s in workload.sent)),
                table=table,
                violations=charged,
                faults=[vars(h) for h in nemesis.history],
                resources=resource_table,
                drain_s=round(drain_s, 1),
                unexpected_exits=dict(self.exits),
                extra={
                    "unanswered": sum(1 for s in workload.sent if s.indeterminate),
                    "give_up_s": POST_GIVE_UP_S,
                    "dead_letters": len(letters),
                    "duplicate_dead_letters": copies,
                    "channels": {"warm": warm_channels, "end": end_channels},
                    "tag": self.tag,
                    "flows": {flow.name: stats for flow in workload.flows if (stats := flow.stats())},
                    # of the requests (an event has no request record: its flow's stats count it)
                    "outcomes": dict(
                        Counter((final.get(s.request_id) or {}).get("status", "-") for s in workload.sent if s.record)
                    ),
                },
            )
            report.wall_s = round(time.monotonic() - wall, 1)
            print(report.text(), flush=True)
            if self.args.report:
                Path(self.args.report).parent.mkdir(parents=True, exist_ok=True)
                report.write(Path(self.args.report))
                say(f"chaos: report written to {self.args.report}")
            ok = report.ok
            return 0 if ok else 1
        finally:
            self.down(keep=not ok)

    def down(self, keep: bool) -> None:
        self.stopping = True
        if self.system is not None:
            for process in self.system.processes.values():
                if process.proc is not None and process.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.proc.pid, signal.SIGCONT)
            self.system.kill_all()
        for proxy in self.proxies:
            proxy.stop()
        self.broker.down()
        self.postgres.down()
        if keep or self.args.keep:
            say(f"chaos: the run's directory is kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300, help="seconds of load and faults")
    p.add_argument("--seed", type=int, default=None, help="the workload's and the nemesis's seed (default: random)")
    p.add_argument("--nodes", type=int, default=1, choices=(1, 3), help="RabbitMQ nodes (3: a cluster)")
    p.add_argument("--replicas", type=int, default=1, help="processes of each esi service")
    p.add_argument("--rate", type=float, default=4.0, help="requests a second")
    p.add_argument("--lanes", type=int, default=2, help="faults at once")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the first fault")
    p.add_argument(
        "--resource-warmup", type=float, default=60.0, help="seconds of a process's life before its memory counts"
    )
    p.add_argument("--drain", type=float, default=300.0, help="seconds the run may take to settle after the load")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--keep", action="store_true", help="keep the run's directory even when it passed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    say(f"chaos: seed {args.seed}")
    return Run(args).main()


def fault_names() -> list[str]:
    return [f.name for f in FAULTS]


if __name__ == "__main__":
    sys.exit(main())
