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
    keyscan_command,
    load_ssh_config,
    resolve_host,
    ssh_command,
)
from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.config import load_settings
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


def test_behind_a_jump_host_the_fix_runs_ssh_keyscan_there(tmp_path: Path) -> None:
    """A compute node the laptop cannot reach: `ssh-keyscan c1` here would fail, so the fix
    runs it on the jump host (the login node) and appends its output here."""
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path)))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    node = resolve_host("c1", config(), port=2200)
    login = "ssh -p 2222 -l alice hpc"
    policy = RejectUnknownHost(known_hosts, node, via=login)
    with pytest.raises(HostKeyError) as caught:
        policy.missing_host_key(paramiko.SSHClient(), node.known_hosts_name, key)
    error = caught.value
    assert f"the host key of [c1]:2200 (ssh-ed25519 {fingerprint(key)}) is not in" in str(error)
    assert str(error) == f"{error.problem}. {error.fix}"
    assert fingerprint(key) in error.problem
    assert f"`{login} ssh-keyscan -p 2200 c1 >> {known_hosts}`" in error.fix
    assert "`ssh-keyscan" not in str(error)  # no scan from this machine
    assert "never accepts host keys" in error.fix


def test_the_ssh_command_to_a_jump_host_can_be_pasted() -> None:
    spec = resolve_host("hpc", config(), port=22, user="bob", key=Path("/keys/my key"))
    assert ssh_command(spec) == "ssh -p 22 -l bob -i '/keys/my key' hpc"
    assert ssh_command(
        resolve_host("hpc", config()),
        jumps=("bastion", "gate"),
        ssh_config=Path("/etc/jlabgw/ssh_config"),
        known_hosts=Path("/etc/jlabgw/known_hosts"),
    ) == (
        "ssh -F /etc/jlabgw/ssh_config -J bastion,gate -p 2222 -l alice "
        f"-i {Path('~/.ssh/id_hpc').expanduser()} "
        "-o UserKnownHostsFile=/etc/jlabgw/known_hosts hpc"
    )
    node = resolve_host("c1", config())
    assert keyscan_command(node, Path("/kh")) == "ssh-keyscan c1 >> /kh"
    assert keyscan_command(node, Path("/k h"), via="ssh login") == (
        "ssh login ssh-keyscan c1 >> '/k h'"
    )


def test_a_compute_node_connection_names_the_login_node_as_jlabgw_reaches_it(
    tmp_path: Path,
) -> None:
    """The jump to a node is the login node with the JLABGW_SSH_* settings, the ssh config
    and the known_hosts of jlabgw's config: the command the host-key fix runs through."""
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host login\n    HostName 10.0.0.2\n    User nobody\n")
    empty = tmp_path / "empty.toml"
    empty.touch()
    settings = load_settings(
        environ={
            "JLABGW_CONFIG": str(empty),
            "JLABGW_SSH_HOST": "login",
            "JLABGW_SSH_PORT": "2022",
            "JLABGW_SSH_USER": "alice",
            "JLABGW_SSH_KEY": str(tmp_path / "id"),
            "JLABGW_SSH_CONFIG": str(ssh_config),
            "JLABGW_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        }
    )
    conn = SSHConnection("c1", settings, port=22, jump="login")  # not connected
    assert conn.spec.proxy_jump == ("login",)
    assert conn.ssh_command(conn.spec.proxy_jump) == (
        f"ssh -F {ssh_config} -p 2022 -l alice -i {tmp_path / 'id'} "
        f"-o UserKnownHostsFile={tmp_path / 'known_hosts'} login"
    )


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


def test_compute_nodes_get_the_login_nodes_user_unless_named(tmp_path: Path) -> None:
    """JLABGW_SSH_HOST=alice@login: the cluster account is alice on its nodes too (as with
    ``ssh -J alice@login node`` plus a config that says so); a User in ~/.ssh/config for the
    node, or JLABGW_SSH_USER, still wins."""
    from jlabgw.cluster.ssh.connection import SSHConnection
    from tests.helpers import make_settings

    config = tmp_path / "ssh_config"
    config.write_text("Host c2\n  User bob\n")
    settings = make_settings(tmp_path, ssh_host="alice@login:2222", ssh_config=str(config))
    node = SSHConnection("c1", settings, port=22, jump=settings.ssh_host)
    assert node.spec.user == "alice"
    assert SSHConnection("c2", settings, port=22, jump=settings.ssh_host).spec.user == "bob"
    named = make_settings(
        tmp_path, ssh_host="alice@login:2222", ssh_user="carol", ssh_config=str(config)
    )
    assert SSHConnection("c1", named, port=22, jump=named.ssh_host).spec.user == "carol"
