"""The `cluster` section of `make bench`: what replication and a second API process cost or give, as ratios measured
in the same run on the same machine. It reports; it is not a test.

1. queue types   confirmed persistent publishes (bare aio-pika, `in_flight` at once) into a classic and a quorum queue,
                 on the single local node and on the three-node cluster (`make cluster`)
2. e2e           N create_user requests end to end (one API process, one DMS adapter, PostgreSQL), posted as fast
                 as they are accepted, until the last completes: on the single node and on the cluster
3. api           the same on the cluster with one API process and with two (requests alternate): two / one

Every figure is requests (or messages) per second; the ratios are what to quote, absolute figures drift.

    python -m bench.cluster [--n 1000] [--concurrency 64] [--publishes 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import machine_info  # noqa: E402
from esi.testing import EsiSystem, PgDatabase, Vhost, free_port  # noqa: E402

SCRIPT = ROOT / "deploy" / "cluster" / "local.sh"


def _script(*args: str) -> str:
    return subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, text=True, timeout=600).stdout


class ClusterVhost:
    def __init__(self) -> None:
        self.name = f"esi-bench-{uuid.uuid4().hex[:10]}"
        for args in (["add_vhost", self.name], ["set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"]):
            subprocess.run(["rabbitmqctl", "-q", "-n", "n1@localhost", *args], check=True, capture_output=True)
        self.url = _script("urls", self.name).strip()

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "-n", "n1@localhost", "delete_vhost", self.name], capture_output=True)


async def publish_rate(url: str, queue_type: str, n: int, in_flight: int = 200) -> float:
    """Persistent messages per second into one queue of `queue_type`, each confirmed, `in_flight` at once."""
    connection = await aio_pika.connect(url.split(",")[0])
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench-{queue_type}-{uuid.uuid4().hex[:6]}"
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": queue_type})
        body = b"x" * 600  # about a create_user envelope
        semaphore = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with semaphore:
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
                )

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        seconds = time.perf_counter() - started
        await channel.queue_delete(name)
        return n / seconds
    finally:
        await connection.close()


async def e2e_rate(apis: list[str], database_url: str, n: int, concurrency: int) -> float:
    """create_user requests per second: `concurrency` clients post (alternating APIs) as fast as they are accepted,
    until all N have completed (counted in the store every 0.1 s). The capacity of the layout, not a long poll's
    latency."""
    import asyncpg

    tag = uuid.uuid4().hex[:6]
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = {"request_id": f"B-{tag}-{i}", "user_id": f"U-{tag}-{i}", "name": "Bench", "email": "b@example.com"}
            response = await client.post(f"{apis[i % len(apis)]}/send_to_dms", json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"POST answered {response.status_code}: {response.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    conn = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            started = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        deadline = time.perf_counter() + 300
        while (
            await conn.fetchval(
                "SELECT count(*) FROM esi_requests WHERE request_id LIKE $1 AND status = 'completed'", f"B-{tag}-%"
            )
            < n
        ):
            if time.perf_counter() > deadline:
                raise RuntimeError("requests did not complete within 300 s")
            await asyncio.sleep(0.1)
        return n / (time.perf_counter() - started)
    finally:
        await conn.close()


def _system(workdir: Path, amqp_url: str, database_url: str, apis: int) -> tuple[EsiSystem, list[str]]:
    system = EsiSystem(
        workdir=workdir, amqp_url=amqp_url, database_url=database_url, extra_env={"ESI_LOG_LEVEL": "WARNING"}
    )
    system.start_all({"fakes": ["fake-dms", "fake-creatio"], "onec": ["onec"], "dms": ["dms"]})
    urls = [system.api_url]
    for k in range(1, apis):
        port = free_port()
        system.start(f"onec{k + 1}", ["onec"], env={"ESI_HTTP_PORT": str(port)})
        system.wait_http(f"http://127.0.0.1:{port}/readyz")
        urls.append(f"http://127.0.0.1:{port}")
    return system, urls


def _e2e(label: str, amqp_url: str, apis: int, n: int, concurrency: int, warmup: int) -> float:
    db = PgDatabase()
    with tempfile.TemporaryDirectory(prefix=f"esi-bench-{label}-") as workdir:
        system, urls = _system(Path(workdir), amqp_url, db.url, apis)
        try:
            asyncio.run(e2e_rate(urls, db.url, warmup, concurrency))
            return asyncio.run(e2e_rate(urls, db.url, n, concurrency))
        finally:
            system.stop_all()
            db.drop()


def run(
    *, n: int = 1000, concurrency: int = 64, publishes: int = 5000, warmup: int = 100, say: Any = print
) -> dict[str, Any]:
    _script("up")
    result: dict[str, Any] = {"machine": machine_info(), "n": n, "concurrency": concurrency}
    single, cluster = Vhost(), ClusterVhost()
    try:
        rates = {}
        for where, url in (("single", single.url), ("cluster", cluster.url)):
            for queue_type in ("classic", "quorum"):
                rates[f"{where}_{queue_type}"] = round(asyncio.run(publish_rate(url, queue_type, publishes)), 1)
                say(f"cluster: confirmed publishes, {where} node(s), {queue_type}: {rates[f'{where}_{queue_type}']}/s")
        result["publish_per_s"] = rates
        result["publish_ratios"] = {
            "single_quorum_vs_classic": round(rates["single_quorum"] / rates["single_classic"], 3),
            "cluster_quorum_vs_single_quorum": round(rates["cluster_quorum"] / rates["single_quorum"], 3),
            "cluster_classic_vs_single_classic": round(rates["cluster_classic"] / rates["single_classic"], 3),
        }
        e2e = {
            "single_1api": _e2e("single", single.url, 1, n, concurrency, warmup),
            "cluster_1api": _e2e("cluster1", cluster.url, 1, n, concurrency, warmup),
            "cluster_2api": _e2e("cluster2", cluster.url, 2, n, concurrency, warmup),
        }
        result["e2e_per_s"] = {k: round(v, 1) for k, v in e2e.items()}
        result["ratios"] = {
            "cluster_vs_single": round(e2e["cluster_1api"] / e2e["single_1api"], 3),
            "two_apis_vs_one": round(e2e["cluster_2api"] / e2e["cluster_1api"], 3),
        }
        say(f"cluster: e2e {result['e2e_per_s']} → ratios {result['ratios']}")
    finally:
        single.delete()
        cluster.delete()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--publishes", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", help="write the result as JSON here too")
    args = parser.parse_args(argv)
    result = run(n=args.n, concurrency=args.concurrency, publishes=args.publishes, warmup=args.warmup)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
