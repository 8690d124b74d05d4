"""NodeTunnel against a fake SSH connector (the one faked boundary: making a connection to a
node). The forwarder is real; nothing connects to it here, so it never opens a channel."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.cluster.ssh.tunnel import NodeTunnel
from jlabgw.errors import SSHConnectError

pytestmark = pytest.mark.anyio


@dataclass
class _Spec:
    alias: str


class FakeConnection:
    def __init__(self, node: str) -> None:
        self.spec = _Spec(node)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Connector:
    """Records each connection made (its alias is the name asked for, as SSHConnection's
    is); the first ``failures`` attempts cannot reach the node."""

    def __init__(self, failures: int = 0) -> None:
        self.made: list[FakeConnection] = []
        self.failures = failures
        self.release = threading.Event()
        self.release.set()

    def __call__(self, node: str) -> SSHConnection:
        self.release.wait(timeout=5)
        if self.failures > 0:
            self.failures -= 1
            raise SSHConnectError(f"cannot connect to {node}")
        conn = FakeConnection(node)
        self.made.append(conn)
        return conn  # type: ignore[return-value]


async def test_the_connection_made_ahead_is_taken() -> None:
    connector = Connector()
    tunnel = NodeTunnel(connector)
    tunnel.connect_ahead("node1")
    endpoint = await tunnel.open("node1", 5000, "tok")
    try:
        assert len(connector.made) == 1
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert endpoint.token == "tok"
    finally:
        await asyncio.to_thread(tunnel.close)
    assert connector.made[0].closed


async def test_an_ahead_connection_to_another_host_name_is_replaced() -> None:
    connector = Connector()
    tunnel = NodeTunnel(connector)
    tunnel.connect_ahead("n1")  # squeue's name for the node ...
    await tunnel.open("n1.cluster", 5000, "tok")  # ... is not the hostname the gateway gave
    first, second = connector.made
    assert first.closed
    assert second.spec.alias == "n1.cluster"
    assert not second.closed
    await asyncio.to_thread(tunnel.close)
    assert second.closed


async def test_a_failed_ahead_connection_is_tried_again() -> None:
    connector = Connector(failures=1)
    tunnel = NodeTunnel(connector)
    tunnel.connect_ahead("node1")
    await tunnel.open("node1", 5000, "tok")
    await asyncio.to_thread(tunnel.close)
    assert connector.failures == 0  # the ahead attempt failed ...
    assert len(connector.made) == 1  # ... and open() made its own


async def test_an_abandoned_ahead_connection_is_closed_once_made() -> None:
    connector = Connector()
    connector.release.clear()  # still connecting when it is abandoned
    tunnel = NodeTunnel(connector)
    tunnel.connect_ahead("node1")
    await asyncio.sleep(0.05)
    tunnel.abandon_ahead()
    connector.release.set()
    for _ in range(100):
        if connector.made and connector.made[0].closed:
            break
        await asyncio.sleep(0.02)
    assert connector.made[0].closed
