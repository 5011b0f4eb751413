"""OAuth 2.0 client credentials to Creatio, end to end: esi's CRM adapter on bearer tokens that expire every 5 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from esi.testing import EsiSystem, Vhost
from tests.support import unique

pytestmark = pytest.mark.integration

#: the fake Identity Service's token lifetime in this test
LIFETIME_S = 5.0
#: the share of it before expiry at which the client renews (esi.systems.crm.client.oauth.MAX_MARGIN_SHARE)
MARGIN_S = LIFETIME_S * 0.1


@pytest.fixture(scope="module")
def oauth_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    workdir: Path = tmp_path_factory.mktemp("oauth")
    vhost = Vhost()
    system = EsiSystem(
        workdir=workdir,
        amqp_url=vhost.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        # the adapter and the fake read the same settings: the fake's client application is the adapter's
        extra_env={"CRM_AUTH": "oauth", "CRM_FAKE_TOKEN_LIFETIME": str(LIFETIME_S)},
    )
    try:
        system.start_all()
        yield system
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), f"esi did not stop cleanly: {codes}"
    except BaseException:
        print(system.logs()[-5000:])
        system.kill_all()
        raise
    finally:
        vhost.delete()


def test_two_hundred_order_updates_on_tokens_that_expire_every_five_seconds(oauth_system: EsiSystem) -> None:
    statuses = ["Confirmed", "In progress", "Shipped", "Delivered"]
    orders = ["ORD9876", "ORD0001", "ORD0002"]
    started = time.monotonic()
    request_ids: list[str] = []
    # 40 waves of 5 updates, one wave every 0.3 s (a load's pace, not a wait for anything): the calls to Creatio
    # spread over 12 s, more than two token lifetimes
    for wave in range(40):
        time.sleep(max(0.0, started + wave * 0.3 - time.monotonic()))
        for i in range(5):
            request_id = unique(f"OAUTH-{wave}")
            body = {"request_id": request_id, "order_id": orders[i % 3], "status": statuses[(wave + i) % 4]}
            response = oauth_system.post("/send_to_crm", body)
            assert response.status_code == 202, response.text
            request_ids.append(request_id)
    finals = [oauth_system.wait_final(request_id, timeout=60) for request_id in request_ids]
    assert [f["status"] for f in finals] == ["completed"] * 200, [f for f in finals if f["status"] != "completed"]
    assert len(set(request_ids)) == 200
    # the time esi worked on them: from the first accepted to the last settled (reading 200 outcomes one by one
    # afterwards takes a while on a loaded machine and calls no Creatio)
    first = min(datetime.fromisoformat(f["created_at"]) for f in finals)
    last = max(datetime.fromisoformat(f["updated_at"]) for f in finals)
    elapsed = (last - first).total_seconds()

    counters = oauth_system.creatio_state()["counters"]
    issued = counters["tokens_issued"]
    print(f"200 updates in {elapsed:.1f} s: {issued} tokens, {counters['bearer_rejections']} bearer 401s")
    # one token request per expiry: renewed 0.5 s ahead of each 5 s lifetime, plus the first and a renewal after a
    # 401 at most
    assert counters["token_requests"] == issued, "every token request was granted"
    assert issued <= elapsed / (LIFETIME_S - MARGIN_S) + 2, (issued, elapsed)
    # and tokens did expire under the test: the calls spanned several lifetimes, each needing a token of its own
    # (a lower bound proportional to the time would assume calls at every moment: a loaded machine leaves gaps)
    assert elapsed > 2 * LIFETIME_S, f"esi worked {elapsed:.1f} s: too short to see tokens expire"
    assert issued >= 3, (issued, elapsed)
    # the renewal came before expiry: (almost) no call was refused for an expired token
    assert counters["bearer_rejections"] <= 2, counters
    assert counters["logins"] == 0, "no forms login in OAuth mode"
