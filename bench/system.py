"""The system under test: esi in separate processes on a vhost of its own, with a store in a temporary directory.

Layout (one `esi run` per line):  fakes = fake-creatio fake-dms | onec | dms (and dms2 for the scale-out) | crm
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika
from yarl import URL

from bench.procs import ProcSampler, find_rabbitmq_pid
from esi.systems.spec import DEFAULT_MAX_CONCURRENCY
from esi.testing import EsiSystem, PgDatabase, Vhost, free_port, wait_until

LAYOUT: dict[str, list[str]] = {
    "fakes": ["fake-creatio", "fake-dms"],
    "onec": ["onec"],
    "dms": ["dms"],
    "crm": ["crm"],
}


def _with_retries(make, attempts: int = 3):
    """rabbitmqctl now and then fails when other clients use it at the same moment: try again."""
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except RuntimeError:
            if attempt == attempts:
                raise
            time.sleep(2 * attempt)


class BenchSystem:
    """Owns the vhost, the store, the processes and the sampler; `close()` undoes all of it."""

    def __init__(self, *, store: str = "sqlite", prefetch: int | None = None, keep_workdir: bool = False) -> None:
        self.vhost: Vhost | None = _with_retries(Vhost)
        self.workdir = Path(tempfile.mkdtemp(prefix="esi-bench-"))
        self.keep_workdir = keep_workdir
        try:
            self.db: PgDatabase | None = PgDatabase() if store == "postgres" else None
        except BaseException:
            _with_retries(self.vhost.delete)
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.store = store
        database_url = self.db.url if self.db else f"sqlite:///{self.workdir}/esi.db"
        # the services run with the defaults `make run` and the compose file use: log level INFO (JSON lines, as
        # in the compose file), authentication on with the demo client, readiness checks every 30 s
        extra = {"ESI_AUTH": "on", "ESI_READINESS_INTERVAL": "30", "DMS_TIMEOUT": "10", "CREATIO_TIMEOUT": "10"}
        # EsiSystem hands the services none of our ESI_* variables: pass the prefetch on explicitly
        if prefetch is None and os.environ.get("ESI_PREFETCH"):
            prefetch = int(os.environ["ESI_PREFETCH"])
        if prefetch is not None:
            extra["ESI_PREFETCH"] = str(prefetch)
        self.prefetch = prefetch if prefetch is not None else 200  # esi.config's default
        #: DMS calls under way at once per adapter process: what the ideal of the slow runs divides by
        self.dms_limit = int(os.environ.get("DMS_MAX_CONCURRENCY") or DEFAULT_MAX_CONCURRENCY)
        extra["DMS_MAX_CONCURRENCY"] = str(self.dms_limit)
        self.esi = EsiSystem(workdir=self.workdir, amqp_url=self.vhost.url, database_url=database_url, extra_env=extra)
        self.sampler = ProcSampler()
        self.sampler.start()
        rabbit = find_rabbitmq_pid(URL(self.vhost.url).port or 5672)
        if rabbit is not None:
            self.sampler.watch("rabbitmq", rabbit, resettable=False)
        self.sampler.watch("bench-client", os.getpid(), resettable=False)

    @property
    def amqp_url(self) -> str:
        assert self.vhost is not None
        return self.vhost.url

    @property
    def api_url(self) -> str:
        return self.esi.api_url

    @property
    def dms_url(self) -> str:
        return self.esi.dms_url

    # --- processes ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        # onec first, alone: the store's migration is not safe against several processes starting at once on
        # SQLite ("table ... already exists"), so the others start once it is ready (see the report)
        self.esi.start_all({"fakes": LAYOUT["fakes"], "onec": LAYOUT["onec"]})
        for name in ("dms", "crm"):
            self.esi.start(name, LAYOUT[name])
        for name in LAYOUT:
            self._watch(name)
        self.wait_consumers(dms=1)
        self.wait_consumers(queue="crm_queue", count=1)

    def stop(self) -> dict[str, int]:
        """Stop every process, keeping the store, the vhost and the work directory: `start()` starts them again
        (section history seeds a store while its system is down)."""
        codes = self.esi.stop_all()
        for process in self.esi.processes.values():
            process.proc = None  # stopped on purpose: what start() waits on must not count it as one that died
        return codes

    def _watch(self, name: str) -> None:
        proc = self.esi.processes[name].proc
        assert proc is not None
        self.sampler.watch(name, proc.pid)

    def start_dms(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start (again) a DMS adapter process under `name` (dms, dms2), with `env` over the usual settings."""
        self.esi.start(name, ["dms"], env)
        self._watch(name)

    def start_second_set(self) -> str:
        """A second API process (onec2, on a port of its own), DMS adapter (dms2) and CRM adapter (crm2) beside the
        first set: what a site adds when traffic grows. Returns the second API's URL."""
        port = free_port()
        self.esi.start("onec2", ["onec"], {"ESI_HTTP_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        self.esi.wait_http(f"{url}/readyz")
        self.esi.start("dms2", ["dms"])
        self.esi.start("crm2", ["crm"])
        for name in ("onec2", "dms2", "crm2"):
            self._watch(name)
        self.wait_consumers(dms=2)
        self.wait_consumers(queue="crm_queue", count=2)
        return url

    def store_counters(self) -> dict[str, dict[str, float]]:
        """Each esi process's store counters as they stand (`esi_store_round_trips` by kind, `esi_store_writes`),
        read from its /metrics on its health port; a process that does not answer is left out."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        counters: dict[str, dict[str, float]] = {}
        for name, process in self.esi.processes.items():
            if name == "fakes":
                continue
            # an API process serves /metrics beside its API, an adapter on its health port
            port = process.env.get("ESI_HTTP_PORT") if process.services == ["onec"] else None
            try:
                text = httpx.get(f"http://127.0.0.1:{port or process.env['ESI_HEALTH_PORT']}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
            found: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "esi_store_round_trips_total":
                        found[sample.labels["kind"]] = sample.value
                    elif sample.name == "esi_store_writes_total":
                        found["writes"] = sample.value
            counters[name] = found
        return counters

    def stop_process(self, name: str) -> int:
        process = self.esi.processes[name]
        code = process.stop(timeout=60)
        self.sampler.unwatch(name)
        del self.esi.processes[name]
        return code

    def dms_processes(self) -> list[str]:
        return [name for name, p in self.esi.processes.items() if p.services == ["dms"]]

    def check_alive(self) -> None:
        for name, p in self.esi.processes.items():
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(
                    f"esi process {name} ({' '.join(p.services)}) exited with {p.proc.returncode}; "
                    f"log tail:\n{self.log_tail()}"
                )

    def pids(self) -> dict[str, int]:
        return {name: p.proc.pid for name, p in self.esi.processes.items() if p.proc is not None}

    def log_tail(self, chars: int = 3000) -> str:
        return self.esi.logs()[-chars:]

    # --- the broker ---------------------------------------------------------------------------------------------

    async def queue_state(self, queue: str = "dms_queue") -> tuple[int, int]:
        """(ready messages, consumers) of a queue, by a passive declare."""
        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            return result.message_count, result.consumer_count
        finally:
            await connection.close()

    def wait_consumers(
        self, *, dms: int | None = None, queue: str = "dms_queue", count: int | None = None, timeout: float = 60
    ) -> None:
        expected = dms if dms is not None else count

        def ok() -> bool:
            self.check_alive()
            return asyncio.run(self.queue_state(queue))[1] == expected

        wait_until(ok, timeout=timeout, interval=0.2, what=f"{expected} consumer(s) on {queue}")

    # --- the fakes ----------------------------------------------------------------------------------------------

    def dms_fault(self, spec: dict[str, Any]) -> None:
        self.esi.fault("dms", spec)

    def reset_fakes(self) -> None:
        self.esi.reset_fakes()

    # --- the end ------------------------------------------------------------------------------------------------

    def close(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for name, p in reversed(list(self.esi.processes.items())):
            if p.proc is None:
                continue
            try:
                codes[name] = p.stop(timeout=60)
            except Exception:  # noqa: BLE001 - stopping is best effort: what does not stop is killed
                p.kill()
                codes[name] = -9
        self.sampler.stop()
        try:
            if self.vhost is not None:
                vhost, self.vhost = self.vhost, None
                _with_retries(vhost.delete)
            if self.db is not None:
                db, self.db = self.db, None
                db.drop()
        finally:
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return codes
