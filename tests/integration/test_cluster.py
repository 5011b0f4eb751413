"""esi on a three-node RabbitMQ cluster and PostgreSQL, every service in several processes.

The cluster is `deploy/cluster/local.sh` (`make cluster`): n1..n3@localhost on 5681-5683, next to the local broker.
The tests start it when it is not running (CI starts it beforehand: `.ci/run`) and leave it running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from esi.testing import EsiSystem, PgDatabase, free_port, wait_until
from tests.support import ROOT, unique
from tests.unit.test_cluster_deployment import configured_confirm_timeout

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "deploy" / "cluster" / "local.sh"
NODES = {1: "n1@localhost", 2: "n2@localhost", 3: "n3@localhost"}
REQUESTS = 2000
#: requests posted before the leader of dms_queue and a DMS adapter are killed, and before the node comes back
KILL_AFTER, RESTART_AFTER = 500, 1300


def _ctl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}


def ctl(node: int, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "-n", NODES[node], *args], capture_output=True, text=True, timeout=timeout, env=_ctl_env()
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl -n {NODES[node]} {' '.join(args)}: {result.stderr or result.stdout}")
    return result.stdout


def script(*args: str, timeout: float = 300) -> str:
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=_ctl_env())
    if result.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


def running_nodes(via: int) -> set[str]:
    out = ctl(via, "eval", "rabbit_nodes:all_running().")
    return set(re.findall(r"n\d@localhost", out))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed")
    script("up")  # nothing to do when `make cluster` (or CI) started it
    wait_until(lambda: running_nodes(1) == set(NODES.values()), timeout=60, interval=0.5, what="three nodes")
    return


def confirm_timeout(node: int) -> int | None:
    """The dead-letter worker's confirm timeout node `node` runs with (None: RabbitMQ's default, 180 s)."""
    out = ctl(node, "eval", "application:get_env(rabbit, dead_letter_worker_publisher_confirm_timeout).")
    match = re.search(r"\{ok,\s*(\d+)\}", out)
    return int(match.group(1)) if match else None


#: what deploy/rabbitmq/advanced.config sets it to
CONFIGURED_CONFIRM_TIMEOUT = configured_confirm_timeout()


class ClusterVhost:
    """A vhost of its own on the cluster, and the URLs of its three nodes."""

    def __init__(self) -> None:
        self.name = f"esi-cluster-{uuid.uuid4().hex[:10]}"
        ctl(1, "add_vhost", self.name)
        ctl(1, "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.urls = script("urls", self.name).strip()

    def via(self) -> int:
        """A running node to ask."""
        for node in NODES:
            try:
                ctl(node, "ping", timeout=15)
                return node
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
        raise AssertionError("no node of the cluster runs")

    def queues(self, *columns: str) -> list[list[str]]:
        out = ctl(self.via(), "list_queues", "-p", self.name, "name", *columns, "--no-table-headers")
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def delete(self) -> None:
        ctl(self.via(), "delete_vhost", self.name)


@pytest.fixture(scope="module")
def cluster_system(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EsiSystem, str]]:
    """Two API processes, two DMS adapters, one CRM adapter, the fakes; on the cluster and PostgreSQL."""
    vhost = ClusterVhost()
    db = PgDatabase()
    system = EsiSystem(
        workdir=tmp_path_factory.mktemp("cluster"),
        amqp_url=vhost.urls,
        database_url=db.url,
        extra_env={"ESI_PUBLISH_TIMEOUT": "5", "ESI_LOG_LEVEL": "INFO"},
    )
    second_api = f"http://127.0.0.1:{free_port()}"
    try:
        system.start_all(
            {"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec"], "dms": ["dms"], "dms2": ["dms"], "crm": ["crm"]}
        )
        system.start("onec2", ["onec"], env={"ESI_HTTP_PORT": second_api.rsplit(":", 1)[1]})
        system.wait_http(f"{second_api}/readyz")
        system.vhost = vhost  # type: ignore[attr-defined]
        system.db = db  # type: ignore[attr-defined]
        yield system, second_api
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, system.logs()[-3000:])
    except BaseException:
        print(system.logs()[-8000:])
        system.kill_all()
        raise
    finally:
        script("up")  # every node back for the next tests
        vhost.delete()
        db.drop()


def _query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _where_they_stuck(system: EsiSystem, vhost: ClusterVhost, pattern: str) -> str:
    """What a failed wait shows: the requests by status, the unsent outbox, the queues, a stuck request's timeline and
    the processes' last log lines."""
    url = system.database_url
    statuses = _query(
        url, "SELECT status, count(*) FROM esi_requests WHERE request_id LIKE $1 GROUP BY status", pattern
    )
    unsent = _query(url, "SELECT count(*) FROM esi_outbox WHERE request_id LIKE $1 AND sent_at IS NULL", pattern)
    stuck = _query(
        url,
        "SELECT request_id FROM esi_requests WHERE request_id LIKE $1 AND status <> 'completed' "
        "ORDER BY request_id LIMIT 3",
        pattern,
    )
    lines = [
        f"statuses: {[tuple(r) for r in statuses]}",
        f"unsent outbox rows: {unsent[0][0]}",
        f"queues: {vhost.queues('messages', 'messages_unacknowledged', 'consumers', 'leader')}",
    ]
    for (request_id,) in stuck:
        events = _query(
            url, "SELECT at, event, service, message_id FROM esi_events WHERE request_id = $1 ORDER BY id", request_id
        )
        lines.append(f"{request_id}: {[tuple(e) for e in events]}")
    for name, process in system.processes.items():
        if process.log_path.exists():
            lines.append(f"--- {name}\n" + "\n".join(process.log_path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(lines)


def _leader(vhost: ClusterVhost, queue: str) -> int:
    leaders = {row[0]: row[1] for row in vhost.queues("leader")}
    return next(number for number, name in NODES.items() if name == leaders[queue])


async def _post_all(apis: list[str], bodies: list[dict[str, Any]], on_progress: Any) -> dict[str, int]:
    """Post every body, alternately to each API, 40 at a time; a post that fails is posted again (same request_id,
    to the other API: ingress is idempotent). Returns each request's final status code."""
    codes: dict[str, int] = {}
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((i, body))
    posted = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            nonlocal posted
            while not queue.empty():
                i, body = queue.get_nowait()
                for attempt in range(20):
                    api = apis[(i + attempt) % len(apis)]
                    try:
                        response = await client.post(f"{api}/send_to_dms", json=body)
                    except httpx.HTTPError:
                        await asyncio.sleep(0.5)
                        continue
                    if response.status_code < 300:
                        codes[body["request_id"]] = response.status_code
                        break
                    await asyncio.sleep(0.5)
                posted += 1
                await on_progress(posted)

        await asyncio.gather(*(worker() for _ in range(40)))
    return codes


@pytest.mark.timeout(600)
def test_2000_requests_through_two_apis_survive_the_loss_of_the_queue_leader_and_an_adapter(
    cluster_system: tuple[EsiSystem, str],
) -> None:
    system, second_api = cluster_system
    vhost: ClusterVhost = system.vhost  # type: ignore[attr-defined]
    apis = [system.api_url, second_api]
    tag = uuid.uuid4().hex[:6]
    bodies = [
        {"request_id": f"CL-{tag}-{i}", "user_id": f"U-{tag}-{i}", "name": f"Кластер {i}", "email": f"c{i}@example.com"}
        for i in range(REQUESTS)
    ]
    killed: dict[str, Any] = {}

    async def on_progress(posted: int) -> None:
        if posted == KILL_AFTER:
            leader = await asyncio.to_thread(_leader, vhost, "dms_queue")
            killed["node"] = leader
            await asyncio.to_thread(script, "kill", str(leader))
            system.processes["dms2"].kill()  # and one DMS adapter, with whatever it held
            killed["at"] = time.monotonic()
        elif posted == RESTART_AFTER and "node" in killed:
            # restarting takes a while: the posts go on meanwhile
            killed["restart"] = asyncio.create_task(asyncio.to_thread(script, "start", str(killed["node"])))

    async def load() -> dict[str, int]:
        codes = await _post_all(apis, bodies, on_progress)
        if "restart" in killed:
            await killed["restart"]
        return codes

    started = time.monotonic()
    codes = asyncio.run(load())
    assert len(codes) == REQUESTS, f"{REQUESTS - len(codes)} requests were never accepted"
    assert "node" in killed
    # the killed node rejoined the cluster; the queue has a leader again and its replicas on every node
    wait_until(
        lambda: running_nodes(killed["node"]) == set(NODES.values()),
        timeout=120,
        interval=1,
        what="the killed node to rejoin",
    )
    # with esi's advanced.config: a retry whose confirm was lost with a leader goes again within seconds, not 180 s
    assert confirm_timeout(killed["node"]) == CONFIGURED_CONFIRM_TIMEOUT
    system.start("dms2", ["dms"])  # the killed adapter comes back too

    def settled() -> int:
        rows = _query(
            system.database_url,
            "SELECT count(*) FROM esi_requests WHERE request_id LIKE $1 AND status = 'completed'",
            f"CL-{tag}-%",
        )
        return rows[0][0] == REQUESTS

    try:
        wait_until(settled, timeout=300, interval=1, what="every accepted request to complete")
    except AssertionError:
        print(_where_they_stuck(system, vhost, f"CL-{tag}-%"))
        raise
    elapsed = time.monotonic() - started
    # each exactly once in the fake DMS
    ids = [u["external_id"] for u in system.dms_state()["users"] if u["external_id"].startswith(f"U-{tag}-")]
    assert len(ids) == REQUESTS, (len(ids), len(set(ids)))
    assert len(set(ids)) == REQUESTS, (len(ids), len(set(ids)))
    # nothing dead-lettered, nothing left in a queue
    depths = {row[0]: int(row[1]) for row in vhost.queues("messages")}
    assert all(depths[q] == 0 for q in depths if "dead_letter" in q), depths
    wait_until(lambda: all(int(r[1]) == 0 for r in vhost.queues("messages")), timeout=30, what="empty queues")
    # each request reads the same through either API process

    async def read_all() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            sem = asyncio.Semaphore(40)

            async def both(request_id: str) -> None:
                async with sem:
                    first, second = await asyncio.gather(*(client.get(f"{api}/requests/{request_id}") for api in apis))
                assert first.status_code == second.status_code == 200
                assert first.json() == second.json(), (first.text, second.text)
                assert first.json()["status"] == "completed", first.text

            await asyncio.gather(*(both(b["request_id"]) for b in bodies))

    asyncio.run(read_all())
    print(f"cluster: {REQUESTS} requests completed in {elapsed:.1f}s, node n{killed['node']} and dms2 killed mid-load")


def test_every_node_runs_with_the_advanced_config_esi_ships(cluster: None) -> None:
    assert CONFIGURED_CONFIRM_TIMEOUT is not None
    assert {node: confirm_timeout(node) for node in NODES} == {node: CONFIGURED_CONFIRM_TIMEOUT for node in NODES}


def test_the_same_request_posted_to_both_apis_at_once_is_stored_sent_and_done_once(
    cluster_system: tuple[EsiSystem, str],
) -> None:
    system, second_api = cluster_system
    apis = [system.api_url, second_api]
    tag = uuid.uuid4().hex[:6]
    request_ids = [f"TWICE-{tag}-{i}" for i in range(20)]
    calls_before = system.dms_state()["counters"]["calls"]["create_user"]

    async def post_twice() -> list[list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def both(request_id: str) -> list[httpx.Response]:
                body = {
                    "request_id": request_id,
                    "user_id": f"U-{request_id}",
                    "name": "Дважды",
                    "email": "twice@example.com",
                }
                return list(await asyncio.gather(*(client.post(f"{api}/send_to_dms", json=body) for api in apis)))

            return list(await asyncio.gather(*(both(r) for r in request_ids)))

    for pair in asyncio.run(post_twice()):
        assert all(r.status_code < 300 for r in pair), [r.text for r in pair]
        assert pair[0].json()["request_id"] == pair[1].json()["request_id"]
    for request_id in request_ids:
        assert system.wait_final(request_id, timeout=60)["status"] == "completed"
    db = system.database_url
    rows = _query(
        db,
        "SELECT request_id, count(*) AS n FROM esi_requests WHERE request_id LIKE $1 GROUP BY request_id",
        f"TWICE-{tag}-%",
    )
    assert len(rows) == len(request_ids)
    assert all(r["n"] == 1 for r in rows)
    outbox = _query(
        db,
        "SELECT request_id, count(*) AS n FROM esi_outbox WHERE request_id LIKE $1 GROUP BY request_id",
        f"TWICE-{tag}-%",
    )
    assert len(outbox) == len(request_ids)
    assert all(r["n"] == 1 for r in outbox)
    published = _query(
        db,
        "SELECT request_id, count(*) AS n FROM esi_events WHERE request_id LIKE $1 "
        "AND event = 'published' AND service = 'relay' GROUP BY request_id",
        f"TWICE-{tag}-%",
    )
    assert all(r["n"] == 1 for r in published)
    assert len(published) == len(request_ids)
    # one effect each: one call to the DMS per request
    assert system.dms_state()["counters"]["calls"]["create_user"] - calls_before == len(request_ids)


def test_a_long_poll_on_one_api_answers_when_the_other_settled_it(cluster_system: tuple[EsiSystem, str]) -> None:
    system, second_api = cluster_system
    request_id = unique("POLL")
    system.fault("dms", {"latency_ms": 1500, "count": 1})
    system.post(
        "/send_to_dms",
        json={"request_id": request_id, "user_id": unique("U"), "name": "Ждёт", "email": "poll@example.com"},
    )
    # the answer comes back on 1c_queue to whichever API process consumes it; the long poll is on the other one too
    response = httpx.get(f"{second_api}/requests/{request_id}", params={"wait": 20}, timeout=30)
    assert response.json()["status"] == "completed", response.text


@pytest.mark.timeout(400)
def test_the_cluster_benchmark_section_runs_and_reports_ratios(cluster: None, tmp_path: Any) -> None:
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cluster",
            "--n",
            "40",
            "--concurrency",
            "8",
            "--publishes",
            "300",
            "--warmup",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["nproc"] >= 1
    for name in ("cluster_vs_single", "two_apis_vs_one"):
        assert result["ratios"][name] > 0
    assert set(result["publish_per_s"]) == {"single_classic", "single_quorum", "cluster_classic", "cluster_quorum"}
