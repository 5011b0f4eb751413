"""Operations: readiness, metrics as messages flow, secrets kept out of logs, timelines, search by business key."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from esi.testing import ESI, EsiSystem, Vhost, wait_until
from tests.support import unique

pytestmark = pytest.mark.integration

SECRET = "S3cr3t-Creatio-pw-7781"


@pytest.fixture(scope="module")
def ops_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    """Adapters split over two processes (the DMS adapter has its own health port), logging at DEBUG."""
    workdir = tmp_path_factory.mktemp("esi-ops")
    v = Vhost()
    system = EsiSystem(
        workdir=workdir,
        amqp_url=v.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        extra_env={"CREATIO_PASSWORD": SECRET, "ESI_LOG_LEVEL": "DEBUG"},
    )
    try:
        system.start_all({"fakes": ["fake-creatio", "fake-dms"], "onec": ["onec", "crm"], "dms": ["dms"]})
        system.wait_http(f"{system.processes['dms'].health_url}/readyz")
        yield system
    finally:
        system.stop_all()
        v.delete()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_process_reports_readiness_per_dependency(ops_system: EsiSystem) -> None:
    api = httpx.get(f"{ops_system.api_url}/readyz", timeout=10).json()
    assert api["status"] == "ready"
    assert {"broker (onec)", "broker (crm)", "store", "creatio"} <= set(api["checks"])
    assert all(c["status"] == "ok" and c["latency_ms"] >= 0 for c in api["checks"].values())
    dms = httpx.get(f"{ops_system.processes['dms'].health_url}/readyz", timeout=10).json()
    assert set(dms["checks"]) == {"broker (dms)", "store", "dms", "circuit (dms)"}
    assert dms["checks"]["circuit (dms)"]["state"] == "closed"
    for probe in ("/livez", "/healthz"):  # Kubernetes' name, and the alias kept for existing probes
        assert httpx.get(f"{ops_system.processes['dms'].health_url}{probe}", timeout=10).json() == {"status": "ok"}


def test_readiness_names_the_external_system_that_is_down(ops_system: EsiSystem) -> None:
    dms_health = ops_system.processes["dms"].health_url
    ops_system.processes["fakes"].stop()
    try:
        wait_until(
            lambda: httpx.get(f"{dms_health}/readyz", timeout=10).status_code == 503,
            timeout=15,
            what="the DMS adapter to report its DMS down",
        )
        checks = httpx.get(f"{dms_health}/readyz", timeout=10).json()["checks"]
        assert checks["dms"]["status"] == "down"
        assert checks["dms"]["error"]
        assert checks["broker (dms)"]["status"] == "ok"
        api = httpx.get(f"{ops_system.api_url}/readyz", timeout=10)
        assert api.status_code == 503
        assert api.json()["checks"]["creatio"]["status"] == "down"
    finally:
        ops_system.start("fakes", ["fake-creatio", "fake-dms"])
        ops_system.wait_http(f"{ops_system.dms_url}/_fake/state")
        ops_system.wait_http(f"{ops_system.creatio_url}/_fake/state")
    wait_until(
        lambda: httpx.get(f"{dms_health}/readyz", timeout=10).status_code == 200,
        timeout=15,
        what="readiness to come back by itself",
    )


def test_metrics_follow_the_messages(ops_system: EsiSystem) -> None:
    dms_url = ops_system.processes["dms"].health_url
    before_dms, before_api = scrape(dms_url), scrape(ops_system.api_url)
    request_id = unique("MET")
    ops_system.post(
        "/send_to_dms", {"request_id": request_id, "user_id": unique("U"), "name": "Метрика", "email": "m@example.com"}
    )
    assert ops_system.wait_final(request_id)["status"] == "completed"

    def moved() -> bool:
        after = scrape(dms_url)
        return (
            value(after, "esi_messages_consumed_total", queue="dms_queue", message_type="create_user", outcome="ok")
            == value(
                before_dms, "esi_messages_consumed_total", queue="dms_queue", message_type="create_user", outcome="ok"
            )
            + 1
        )

    wait_until(moved, timeout=10, what="esi_messages_consumed_total to count the message")
    after_dms, after_api = scrape(dms_url), scrape(ops_system.api_url)
    assert (
        value(after_dms, "esi_messages_published_total", message_type="user_created")
        == value(before_dms, "esi_messages_published_total", message_type="user_created") + 1
    )
    assert (
        value(after_dms, "esi_external_call_duration_seconds_count", system="dms", operation="create_user")
        == value(before_dms, "esi_external_call_duration_seconds_count", system="dms", operation="create_user") + 1
    )
    assert value(after_dms, "esi_handler_duration_seconds_count", queue="dms_queue", message_type="create_user") >= 1
    assert (
        value(after_api, "esi_http_requests_total", route="/send_to_dms", method="POST", status="202")
        == value(before_api, "esi_http_requests_total", route="/send_to_dms", method="POST", status="202") + 1
    )
    assert (
        value(after_api, "esi_messages_consumed_total", queue="1c_queue", message_type="user_created", outcome="ok")
        >= 1
    )
    wait_until(
        lambda: ("esi_queue_messages", (("queue", "dms_dead_letter_queue"),)) in scrape(dms_url),
        timeout=15,
        what="the queue depth gauges",
    )
    assert ("esi_outbox_backlog", ()) in scrape(ops_system.api_url)


def test_timelines_hold_every_hop_of_both_original_flows(ops_system: EsiSystem) -> None:
    user_req, order_req = unique("TL-USER"), unique("TL-ORDER")
    ops_system.post(
        "/send_to_dms", {"request_id": user_req, "user_id": unique("U"), "name": "Хронология", "email": "t@example.com"}
    )
    ops_system.post(
        "/send_to_crm",
        {
            "request_id": order_req,
            "order_id": "ORD9876",
            "status": "Shipped",
            "needs_policy_info": True,
            "policy_number": "POL-0001",
        },
    )
    assert ops_system.wait_final(user_req)["status"] == "completed"
    assert ops_system.wait_final(order_req)["status"] == "completed"

    def hops(request_id: str, expected: int) -> list[tuple]:
        events = httpx.get(f"{ops_system.api_url}/requests/{request_id}/timeline", timeout=10).json()["events"]
        got = [
            (e["service"], e["event"], e.get("message_type") or (e.get("detail") or {}).get("operation"))
            for e in events
        ]
        return got if len(got) >= expected else []

    user = wait_until(lambda: hops(user_req, 7), timeout=10, what="the create_user timeline")
    assert user == [
        ("api", "accepted", "create_user"),
        ("relay", "published", None),
        ("dms", "consumed", "create_user"),
        ("dms", "external_call", "create_user"),
        ("dms", "published", "user_created"),
        ("onec", "consumed", "user_created"),
        ("onec", "completed", "user_created"),
    ]
    order = wait_until(lambda: hops(order_req, 14), timeout=10, what="the update_order_status timeline")
    assert order == [
        ("api", "accepted", "update_order_status"),
        ("relay", "published", None),
        ("crm", "consumed", "update_order_status"),
        ("crm", "external_call", "find_order"),
        ("crm", "external_call", "find_status_id"),
        ("crm", "external_call", "set_order_status"),
        ("crm", "published", "get_policy_info"),
        ("dms", "consumed", "get_policy_info"),  # the CRM → DMS sub-request, inside its parent's timeline
        ("dms", "external_call", "get_policy"),
        ("dms", "published", "policy_info_response"),
        ("crm", "consumed", "policy_info_response"),
        ("crm", "published", "order_status_updated"),
        ("onec", "consumed", "order_status_updated"),
        ("onec", "completed", "order_status_updated"),
    ]

    traced = subprocess.run(
        [ESI, "trace", order_req, "--api", ops_system.api_url], capture_output=True, text=True, timeout=30
    )
    assert traced.returncode == 0, traced.stderr
    assert "get_policy_info" in traced.stdout
    assert "completed" in traced.stdout


def test_requests_are_found_by_business_key(ops_system: EsiSystem) -> None:
    policy_req = unique("KEY")
    ops_system.post("/requests/dms/get_policy_info", {"request_id": policy_req, "policy_number": "POL-12345"})
    assert ops_system.wait_final(policy_req)["status"] == "completed"
    found = httpx.get(f"{ops_system.api_url}/requests", params={"key": "POL-12345"}, timeout=10).json()
    assert policy_req in [r["request_id"] for r in found["requests"]]
    orders = httpx.get(f"{ops_system.api_url}/requests", params={"key": "ORD9876"}, timeout=10).json()
    assert all(r["target"] == "crm" for r in orders["requests"])
    # `esi find`: a page at a time (the cursor of the next on stderr), or every page with --all
    more = [unique("KEY") for _ in range(2)]
    for request_id in more:
        ops_system.post("/requests/dms/get_policy_info", {"request_id": request_id, "policy_number": "POL-12345"})
    api = ["--api", ops_system.api_url]
    page = subprocess.run([ESI, "find", "POL-12345", "--limit", "2", *api], capture_output=True, text=True, timeout=30)
    assert page.returncode == 0, page.stderr
    assert [line.split()[1] for line in page.stdout.splitlines()] == more[::-1]
    assert page.stderr.startswith("next: ")
    rest = subprocess.run(
        [ESI, "find", "POL-12345", "--limit", "2", "--after", page.stderr.split()[1], "--json", *api],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert policy_req in [json.loads(line)["request_id"] for line in rest.stdout.splitlines()]
    every = subprocess.run(
        [ESI, "find", "POL-12345", "--limit", "1", "--all", *api], capture_output=True, text=True, timeout=30
    )
    found_ids = [line.split()[1] for line in every.stdout.splitlines()]
    assert found_ids[:3] == [*more[::-1], policy_req]
    assert len(found_ids) == len(set(found_ids))


def test_secrets_never_reach_the_logs(ops_system: EsiSystem) -> None:
    request_id = unique("SEC")
    ops_system.post("/send_to_crm", {"request_id": request_id, "order_id": "ORD0001", "status": "Confirmed"})
    assert ops_system.wait_final(request_id)["status"] == "completed"
    httpx.post(f"{ops_system.creatio_url}/_fake/expire-session", json={"mode": "401"}, timeout=10)
    second = unique("SEC")
    ops_system.post("/send_to_crm", {"request_id": second, "order_id": "ORD0001", "status": "Shipped"})
    assert ops_system.wait_final(second)["status"] == "completed"
    logs = ops_system.logs()
    assert request_id in logs  # the logs do carry the request ids
    assert SECRET not in logs
    # no cookie or CSRF value in any form, and no Authorization header value
    leaks = re.findall(
        r"(?i)(?:aspxauth|bpmcsrf|bpmloader|authorization|set-cookie)"
        r"[\"']?\s*[:=]\s*[\"']?(?!\*\*\*)[A-Za-z0-9]{6,}",
        logs,
    )
    assert leaks == []
