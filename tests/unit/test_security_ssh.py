"""What reaches SSH from the cluster is checked (issue 13): a compute node's name comes from the
job's connection file or from squeue, and becomes an SSH target (paramiko's ``Match exec`` in an
ssh config would hand it to a shell)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from jlabgw.cluster.ssh import tunnel
from jlabgw.config import Settings
from jlabgw.errors import SSHError


class _Recorded:
    """Stands in for SSHConnection: records the targets it was given, connects nowhere."""

    targets: ClassVar[list[str]] = []

    def __init__(self, target: str, settings: Settings, **_: Any) -> None:
        self.targets.append(target)

    @property
    def transport(self) -> None:
        return None


@pytest.fixture
def connect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tunnel.Connect:
    _Recorded.targets = []
    monkeypatch.setattr(tunnel, "SSHConnection", _Recorded)
    return tunnel.node_connector(Settings(state_dir=tmp_path, ssh_host="login"))


@pytest.mark.parametrize(
    "node", ["c1;touch /tmp/x", "-oProxyCommand=x", "c1 c2", "c1\n", "$(id)", "", "a" * 254]
)
def test_hostile_node_names_never_become_ssh_targets(connect: tunnel.Connect, node: str) -> None:
    with pytest.raises(SSHError, match="not a host name") as info:
        connect(node)
    assert repr(node) in str(info.value)
    assert _Recorded.targets == []


@pytest.mark.parametrize("node", ["c1.cluster.local", "c1", "gpu-07", "10.0.0.7"])
def test_host_names_pass(connect: tunnel.Connect, node: str) -> None:
    connect(node)
    assert _Recorded.targets == [node]


@pytest.mark.anyio
async def test_the_tunnel_refuses_a_hostile_node_from_the_connection_file() -> None:
    opened = tunnel.NodeTunnel(lambda node: pytest.fail(f"connected to {node!r}"))
    with pytest.raises(SSHError, match="not a host name"):
        await opened.open("c1;touch /tmp/x", 8888, "token")
