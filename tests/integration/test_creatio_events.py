"""A change made in Creatio reaches 1C (issue 28): by the business process's webhook, by the poller when the webhook
is off or esi was down, and once when both see it — the fake Creatio playing the manager, real broker and store.

One esi for the module (fakes in one process, esi's services in another, so esi can be stopped alone); the poller
reads every POLL_INTERVAL; each test changes orders of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from esi.testing import EsiSystem, Vhost, wait_until

pytestmark = pytest.mark.integration

POLL_INTERVAL = 2.0
STATUSES = ("In progress", "Confirmed", "Shipped", "Completed")


@pytest.fixture(scope="module")
def esi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    workdir: Path = tmp_path_factory.mktemp("creatio-events")
    vhost = Vhost()
    system = EsiSystem(workdir=workdir, amqp_url=vhost.url, database_url=f"sqlite:///{workdir}/esi.db")
    system.extra_env.update(
        {
            "CRM_POLL_INTERVAL": f"{POLL_INTERVAL}s",
            "CRM_FAKE_WEBHOOK_URL": system.api_url,
            "CRM_POLL_PAGE_SIZE": "7",
            # from now on, not from Creatio's newest change at the first pass: an order created before that pass
            # would otherwise be taken or not depending on which came first
            "CRM_POLL_FROM": datetime.now(UTC).isoformat(),
        }
    )
    try:
        system.start_all({"fakes": list(system.registry.fakes), "esi": list(system.registry.services)})
        yield system
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, system.logs()[-3000:])
    except BaseException:
        print(system.logs()[-6000:])
        system.kill_all()
        raise
    finally:
        vhost.delete()


def new_order(esi: EsiSystem) -> dict[str, Any]:
    number = f"ORD-{uuid.uuid4().hex[:10]}"
    r = httpx.post(f"{esi.creatio_url}/_fake/orders", json={"Number": number, "Amount": 10.0}, timeout=10)
    assert r.status_code == 201, r.text
    row: dict[str, Any] = r.json()
    return row


def change(esi: EsiSystem, number: str, status: str) -> dict[str, Any]:
    r = httpx.post(f"{esi.creatio_url}/_fake/orders/{number}", json={"Status": status}, timeout=10)
    assert r.status_code == 200, r.text
    row: dict[str, Any] = r.json()
    return row


def webhook(esi: EsiSystem, *, enabled: bool) -> None:
    r = httpx.post(f"{esi.creatio_url}/_fake/webhook", json={"enabled": enabled}, timeout=10)
    assert r.status_code == 200, r.text


def received(esi: EsiSystem, order_id: str) -> list[dict[str, Any]]:
    return [r for r in esi.fake_state("1c")["received"] if r["key"] == order_id.lower()]


def polled_past(esi: EsiSystem, since: float) -> None:
    """Wait until the poller has certainly run a pass that began after `since` (two intervals: one may be under way)."""
    wait_until(lambda: time.monotonic() - since > 2 * POLL_INTERVAL + 0.5, timeout=10, interval=0.1, what="two polls")


def taken_order(esi: EsiSystem) -> dict[str, Any]:
    """A new order, once its creation (a first version, status New) has reached the fake 1C through the poller: what
    a test changes next is then the order's one further message."""
    order = new_order(esi)
    wait_until(lambda: received(esi, order["Id"]), timeout=POLL_INTERVAL + 10, interval=0.1, what="the new order")
    return order


def test_by_the_webhook_within_2_s_and_still_once_after_the_poller_saw_it_too(esi: EsiSystem) -> None:
    webhook(esi, enabled=True)
    order = taken_order(esi)
    started = time.monotonic()
    change(esi, order["Number"], "Confirmed")
    wait_until(lambda: len(received(esi, order["Id"])) == 2, timeout=2, interval=0.05, what="the change in the fake 1C")
    assert time.monotonic() - started < 2
    got = received(esi, order["Id"])[-1]
    assert (got["type"], got["body"]["payload"]["Status"]) == ("order_changed", "Confirmed")
    polled_past(esi, started)
    assert len(received(esi, order["Id"])) == 2  # the poller saw the change too: nothing more reached 1C
    event = httpx.get(f"{esi.api_url}/events", params={"key": order["Id"]}, timeout=10).json()
    assert event["count"] == 2, event  # the creation and the change, each taken once


def test_with_the_webhook_off_the_poller_brings_it_within_one_interval(esi: EsiSystem) -> None:
    webhook(esi, enabled=False)
    try:
        order = taken_order(esi)
        calls = esi.creatio_state()["counters"]["webhooks_sent"]
        started = time.monotonic()
        change(esi, order["Number"], "Shipped")
        wait_until(
            lambda: len(received(esi, order["Id"])) == 2,
            timeout=POLL_INTERVAL + 3,
            interval=0.1,
            what="the polled change",
        )
        # one interval, plus the pass's own reads and the delivery
        assert time.monotonic() - started < POLL_INTERVAL + 3
        assert received(esi, order["Id"])[-1]["body"]["payload"]["Status"] == "Shipped"
        assert esi.creatio_state()["counters"]["webhooks_sent"] == calls  # the business process stayed silent
    finally:
        webhook(esi, enabled=True)


def test_changes_made_while_esi_was_stopped_all_reach_1c_once_after_its_start(esi: EsiSystem) -> None:
    orders = [new_order(esi) for _ in range(50)]
    # the new orders are taken (each order's first version) before esi stops
    wait_until(lambda: all(received(esi, o["Id"]) for o in orders), timeout=30, interval=0.2, what="the new orders")
    before = {o["Id"]: len(received(esi, o["Id"])) for o in orders}
    # esi down: the business process's calls fail (Creatio drops them), only the poller can catch up
    esi.processes["esi"].stop()
    try:
        for i, order in enumerate(orders):
            change(esi, order["Number"], STATUSES[i % len(STATUSES)])
        assert esi.creatio_state()["counters"]["webhooks_failed"] >= 1
    finally:
        esi.start("esi", list(esi.registry.services))
        esi.wait_http(f"{esi.api_url}/readyz")

    def all_there() -> bool:
        return all(len(received(esi, o["Id"])) > before[o["Id"]] for o in orders)

    wait_until(all_there, timeout=60, interval=0.2, what="the 50 changes in the fake 1C")
    polled_past(esi, time.monotonic())
    for i, order in enumerate(orders):
        got = received(esi, order["Id"])
        assert len(got) == before[order["Id"]] + 1, got  # the change made while esi was down: once
        assert got[-1]["body"]["payload"]["Status"] == STATUSES[i % len(STATUSES)]
