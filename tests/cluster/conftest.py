"""A 3-node local KRaft cluster for the tests of this folder, and consecutive free ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devtools.localkafka import LocalCluster, LocalKafkaError, port_open
from devtools.testing import NoBrokerError


def consecutive_free_ports(n: int, start: int = 30000, stop: int = 32000) -> int:
    """The first of ``n`` consecutive ports on 127.0.0.1 that nothing listens on and that
    can be bound now, below Linux's ephemeral range (32768+) so that no client connection
    takes one meanwhile. Raises ``RuntimeError`` when there is none in [start, stop)."""
    for first in range(start, stop, n):
        ports = range(first, first + n)
        if any(port_open(p) for p in ports):
            continue
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {n} consecutive free ports in [{start}, {stop})")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """Three combined broker+controller nodes, client listeners on consecutive free ports
    of 19300-19399 (kept apart from the ports other local brokers use), data in a
    temporary directory; stopped (and the directory removed) after the session."""
    first = consecutive_free_ports(3, 19300, 19400)
    try:
        c = LocalCluster(3, ports=[first, first + 1, first + 2], heap="384m").start()
    except LocalKafkaError as exc:
        raise NoBrokerError(str(exc)) from exc
    try:
        yield c
    finally:
        c.stop()
