"""The benchmark's process lookups (bench/procs.py): the broker it measures is the one it talks to."""

from __future__ import annotations

import os
import socket

import pytest

from bench.procs import fd_links, find_rabbitmq_pid, listening_sockets


def test_a_listening_socket_is_found_by_its_port_and_only_while_it_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        link = os.readlink(f"/proc/self/fd/{server.fileno()}")
        assert link not in listening_sockets(port)  # bound, not yet listening
        server.listen()
        assert link in listening_sockets(port)
        assert link not in listening_sockets(port + 1 if port < 65535 else port - 1)
    assert link not in listening_sockets(port)


def test_the_broker_measured_is_the_one_listening_on_the_port_even_beside_other_nodes() -> None:
    """With the local cluster's nodes running beside the broker on 5672 (CI starts them first), the first Erlang VM
    found was one of theirs: its CPU was reported as the broker's (0.02 ms per request)."""
    pid = find_rabbitmq_pid(5672)
    if pid is None and os.geteuid() != 0:
        pytest.skip("the broker's file descriptors are readable by root or its own user only")
    assert pid is not None, "the broker on 5672 runs (the tests need it)"
    assert fd_links(pid) & listening_sockets(5672)
    if listening_sockets(5681):  # the local cluster's first node runs too
        assert find_rabbitmq_pid(5681) not in (None, pid)
