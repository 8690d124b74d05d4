"""Host keys the system's known_hosts (/etc/ssh/ssh_known_hosts, an admin's list of the
cluster's keys) records are known to jlabgw as to OpenSSH, read before the user's file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paramiko
import pytest

from jlabgw.cluster.ssh import config as ssh_config
from jlabgw.cluster.ssh import hop
from jlabgw.cluster.ssh.config import resolve_host
from jlabgw.errors import SSHConnectError


def _line(host: str, key: paramiko.PKey) -> str:
    return f"{host} {key.get_name()} {key.get_base64()}\n"


def test_system_known_hosts_is_read_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    admins, users = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    system = tmp_path / "ssh_known_hosts"
    system.write_text(_line("c1", admins) + _line("c3", admins))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(_line("c2", users) + _line("c3", users))
    monkeypatch.setattr(ssh_config, "SYSTEM_KNOWN_HOSTS", system)
    seen: list[paramiko.SSHClient] = []

    def connect(self: paramiko.SSHClient, *args: Any, **kwargs: Any) -> None:
        seen.append(self)  # the client as it checks the server's key: what it knows
        raise paramiko.SSHException("no server here")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    spec = resolve_host("c1", paramiko.SSHConfig())
    with pytest.raises(SSHConnectError):
        hop.connect_hop(spec, None, known_hosts, timeout=1)
    (client,) = seen
    # paramiko's check: the system's keys, then the user's
    system_keys = client._system_host_keys  # no public accessor
    assert system_keys.lookup("c1") == {"ecdsa-sha2-nistp256": admins}
    assert client.get_host_keys().lookup("c2") == {"ecdsa-sha2-nistp256": users}
    assert system_keys.lookup("c3") == {"ecdsa-sha2-nistp256": admins}
