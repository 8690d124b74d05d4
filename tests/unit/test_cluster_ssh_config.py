"""Target resolution through an ssh config (pure: parsed from text), and the host-key policy
against a generated key (no server)."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from jlabgw.cluster.ssh.config import (
    HostSpec,
    RejectUnknownHost,
    fingerprint,
    load_ssh_config,
    resolve_host,
)
from jlabgw.errors import HostKeyError, SSHError

CONFIG = """
Host hpc
    HostName login.hpc.example.org
    User alice
    Port 2222
    IdentityFile ~/.ssh/id_hpc
    ProxyJump bastion, gate
    ServerAliveInterval 15

Host direct
    HostName 10.0.0.5
    ProxyJump none
    ProxyCommand none
"""


def config() -> paramiko.SSHConfig:
    return paramiko.SSHConfig.from_text(CONFIG)


def test_an_alias_resolves_like_ssh_would() -> None:
    spec = resolve_host("hpc", config())
    assert spec == HostSpec(
        alias="hpc",
        hostname="login.hpc.example.org",
        port=2222,
        user="alice",
        identity_files=(Path("~/.ssh/id_hpc").expanduser(),),
        proxy_jump=("bastion", "gate"),
        proxy_command=None,
        keepalive=15,
    )
    assert spec.label == "alice@login.hpc.example.org:2222"
    assert spec.known_hosts_name == "[login.hpc.example.org]:2222"


def test_the_target_and_the_settings_override_the_config() -> None:
    spec = resolve_host("bob@hpc:2200", config())
    assert (spec.user, spec.port) == ("bob", 2200)
    spec = resolve_host("bob@hpc:2200", config(), port=22, user="carol", key=Path("/k"))
    assert (spec.user, spec.port, spec.identity_files) == ("carol", 22, (Path("/k"),))
    assert spec.known_hosts_name == "login.hpc.example.org"


def test_none_turns_jumps_and_commands_off() -> None:
    spec = resolve_host("direct", config())
    assert spec.proxy_jump == ()
    assert spec.proxy_command is None


def test_an_unparsable_target_or_config_is_an_ssh_error(tmp_path: Path) -> None:
    with pytest.raises(SSHError, match="cannot parse SSH target"):
        resolve_host("user@host:port", config())
    bad = tmp_path / "config"
    bad.write_text("Host x\n  ProxyCommand\n")
    with pytest.raises(SSHError, match="cannot parse the ssh config"):
        load_ssh_config(bad)
    assert load_ssh_config(tmp_path / "missing").get_hostnames() == set()  # no file: empty


def test_an_unknown_host_key_is_refused_with_its_fingerprint_and_the_fix(tmp_path: Path) -> None:
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path)))
    spec = resolve_host("hpc", config())
    policy = RejectUnknownHost(tmp_path / "known_hosts", spec)
    with pytest.raises(HostKeyError) as caught:
        policy.missing_host_key(paramiko.SSHClient(), spec.hostname, key)
    message = str(caught.value)
    assert fingerprint(key) in message
    assert fingerprint(key).startswith("SHA256:")
    assert "does not exist" in message
    assert f"ssh-keyscan -p 2222 login.hpc.example.org >> {tmp_path / 'known_hosts'}" in message


def _ed25519(tmp_path: Path) -> Path:
    """An Ed25519 private key file made with cryptography (paramiko cannot generate one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "id_ed25519"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    return path
