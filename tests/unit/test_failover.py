"""Several broker nodes: the URLs of a cluster, and each connection attempt going to the next node."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from esi.bus.failover import FailoverConnection, node_urls
from esi.config import Settings


def test_node_urls_split_name_and_check_the_nodes_agree() -> None:
    nodes = node_urls("amqp://u:p@a:5672/vh, amqp://u:p@b:5673/vh", name="esi-dms")
    assert [(n.host, n.port, n.path, n.query["name"]) for n in nodes] == [
        ("a", 5672, "/vh", "esi-dms"),
        ("b", 5673, "/vh", "esi-dms"),
    ]
    for other in ("amqp://u:p@b:5672/other", "amqp://x:p@b:5672/vh", "amqps://u:p@b:5671/vh"):
        with pytest.raises(ValueError, match="may differ only in host and port"):
            node_urls(f"amqp://u:p@a:5672/vh,{other}")
    with pytest.raises(ValueError, match="no AMQP URL"):
        node_urls(" , ")


def test_settings_read_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESI_AMQP_URL", "amqp://u:p@a:5672/,amqp://u:p@b:5672/")
    settings = Settings()
    assert settings.broker_urls() == ["amqp://u:p@a:5672/", "amqp://u:p@b:5672/"]
    assert settings.broker_url() == "amqp://u:p@a:5672/"
    assert settings.connect_timeout == 0


def test_each_attempt_goes_to_the_next_node_round_robin() -> None:
    async def attempts() -> list[tuple[str | None, int | None]]:
        nodes = node_urls("amqp://g:g@a:1/,amqp://g:g@b:2/,amqp://g:g@c:3/")
        connection = FailoverConnection(nodes[0], nodes=nodes, first=1)
        chosen = [connection.next_node() for _ in range(4)]
        assert connection.url == chosen[-1]  # the connection reports the node it is on
        assert connection.kwargs["transport_factory"]._choose == connection.next_node
        return [(u.host, u.port) for u in chosen]

    assert asyncio.run(attempts()) == [("b", 2), ("c", 3), ("a", 1), ("b", 2)]


def test_a_single_url_stays_on_its_node() -> None:
    async def attempts() -> set[URL]:
        connection = FailoverConnection(URL("amqp://g:g@a:1/"))
        return {connection.next_node() for _ in range(3)}

    assert asyncio.run(attempts()) == {URL("amqp://g:g@a:1/")}
