"""Delivery into 1C under stress (issue 28): the 1C side killed -9 while 300 pushes are in flight, and the pull
feed read in pages by a client that stops and resumes — real broker, store and fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from esi.testing import EsiSystem, Vhost, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost() -> Iterator[Vhost]:
    host = Vhost()
    try:
        yield host
    finally:
        host.delete()


def _system(tmp_path: Path, vhost: Vhost, **env: str) -> EsiSystem:
    system = EsiSystem(workdir=tmp_path, amqp_url=vhost.url, database_url=f"sqlite:///{tmp_path}/esi.db")
    system.extra_env.update(env)
    return system


def _announce(system: EsiSystem, count: int) -> list[str]:
    """`count` orders changed in Creatio, handed in by its webhook (8 at a time); their message ids."""
    start = datetime.now(UTC)

    def one(i: int, client: httpx.Client) -> str:
        body = {"Id": str(uuid.uuid4()), "Number": f"ORD{i:05d}", "Status": "Paid",
                "ModifiedOn": (start + timedelta(milliseconds=i)).isoformat()}  # fmt: skip
        answer = client.post(f"{system.api_url}/events/crm/order_changed", json=body)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["message_id"])

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: one(i, client), range(count)))


def test_pushes_survive_the_1c_side_killed_with_300_in_flight(tmp_path: Path, vhost: Vhost) -> None:
    system = _system(tmp_path, vhost, ONEC_MAX_CONCURRENCY="64")
    try:
        system.start_all({"fakes": list(system.registry.fakes), "onec": ["onec"], "others": ["crm", "dms"]})
        # 1C records each message at once and answers it 2 s later: a sender killed meanwhile sends it again
        slow = httpx.post(f"{system.fake_url('1c')}/_fake/answer-delay", json={"ms": 2000}, timeout=10)
        assert slow.json() == {"answer_delay_s": 2.0}
        sent = _announce(system, 300)

        def some_received() -> bool:
            return len(system.fake_state("1c")["received"]) >= 40

        wait_until(some_received, timeout=30, interval=0.05, what="the first pushes to arrive")
        system.processes["onec"].kill()  # SIGKILL: no acks, no clean-up, pushes cut off mid-answer
        cut_off = len(system.fake_state("1c")["received"])
        assert cut_off < 300, "every message had arrived before the kill: nothing was in flight"
        system.start("onec", ["onec"])
        system.wait_http(f"{system.api_url}/readyz")
        httpx.post(f"{system.fake_url('1c')}/_fake/answer-delay", json={"ms": 0}, timeout=10)

        def all_received() -> bool:
            return len(system.fake_state("1c")["received"]) >= 300

        wait_until(all_received, timeout=90, interval=0.3, what="all 300 messages in the fake 1C")
        state = system.fake_state("1c")
        ids = [r["message_id"] for r in state["received"]]
        assert len(ids) == len(set(ids)) == 300, "the fake 1C holds a message twice"
        assert set(ids) == set(sent), "a message is missing, or one has an id esi did not give it"
        # what was cut off was sent again with the id it had: the fake counted the repeats and recorded none
        assert state["repeats"] >= 1, state["posts"]
        assert state["posts"] == 300 + state["repeats"]
        codes = system.stop_all()
        assert codes["onec"] == 0, system.logs()[-3000:]
    except BaseException:
        print(system.logs()[-5000:])
        system.kill_all()
        raise


def test_the_pull_feed_read_in_pages_by_a_client_that_stops_and_resumes(tmp_path: Path, vhost: Vhost) -> None:
    system = _system(tmp_path, vhost, ONEC_DELIVERY="pull")
    feed = f"{system.api_url}/feed/1c"
    try:
        system.start_all()
        sent = _announce(system, 1000)

        def kept() -> bool:
            return len(httpx.get(feed, params={"after": 0, "limit": 1000}, timeout=30).json()["entries"]) == 1000

        wait_until(kept, timeout=120, interval=0.5, what="1,000 events in the feed")
        assert system.fake_state("1c")["posts"] == 0, "pull mode pushes nothing"
        handled: list[str] = []
        seen: set[str] = set()

        def read_pages(pages: int, *, ack_last: bool = True) -> bool:
            """A 1C scheduled job's run: from the acknowledged cursor, `pages` pages of 100; False once at the end."""
            for page in range(pages):
                answer = httpx.get(feed, params={"limit": 100}, timeout=30).json()
                for entry in answer["entries"]:
                    if entry["message_id"] not in seen:  # as the BSL job: a message already handled is skipped
                        seen.add(entry["message_id"])
                        handled.append(entry["message_id"])
                if not answer["entries"]:
                    return False
                if ack_last or page < pages - 1:
                    httpx.post(f"{feed}/ack", json={"cursor": answer["next"]}, timeout=30).raise_for_status()
            return True

        read_pages(3)  # a run, then the job stops
        read_pages(2, ack_last=False)  # a run that died after handling its last page, before acknowledging it
        lag = httpx.post(f"{feed}/ack", json={"cursor": 0}, timeout=30).json()  # an old cursor moves nothing back
        assert (lag["acked"], lag["pending"]) == (400, 600), lag
        while read_pages(4):  # the next runs resume from the acknowledged cursor, to the end
            pass
        assert len(handled) == len(set(handled)) == 1000
        assert set(handled) == set(sent)
        final = httpx.post(f"{feed}/ack", json={"cursor": 0}, timeout=30).json()
        assert final["pending"] == 0, final
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), codes
    except BaseException:
        print(system.logs()[-5000:])
        system.kill_all()
        raise
