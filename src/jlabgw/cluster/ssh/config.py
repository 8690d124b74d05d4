"""Where an SSH target leads, resolved the way OpenSSH would, and how its host key is checked.

From the user's ``~/.ssh/config`` (``JLABGW_SSH_CONFIG``): ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``ProxyJump`` (a comma-separated chain), ``ProxyCommand`` and
``ServerAliveInterval``; ``JLABGW_SSH_PORT``/``_USER``/``_KEY`` override them for the target.
Host keys are checked against the system's ``/etc/ssh/ssh_known_hosts`` (first, as OpenSSH's
GlobalKnownHostsFile) and ``known_hosts`` (``JLABGW_KNOWN_HOSTS``), never accepted
silently: an unknown key fails with its fingerprint and the command that adds it. For a host
reached through a jump host (a compute node behind the login node), that command runs
``ssh-keyscan`` on the jump host: this machine may not reach the host at all.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from jlabgw.errors import HostKeyError, SSHError

__all__ = [
    "HostSpec",
    "RejectUnknownHost",
    "check_node_name",
    "fingerprint",
    "keyscan_command",
    "load_ssh_config",
    "resolve_host",
    "ssh_command",
]

_DEFAULT_KEEPALIVE = 30
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")  # read before the user's, like OpenSSH
# a host name (RFC 1123 letters, digits, '-', '.'; or an IPv4 address): nothing a shell, an
# ssh option or paramiko's "Match exec" could read as more than a name
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_TARGET = re.compile(r"^(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to reach one host, resolved from ssh config and overrides."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...] = ()
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None
    keepalive: int = _DEFAULT_KEEPALIVE

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def check_node_name(node: str) -> str:
    """``node`` if it is a plain host name, else :class:`SSHError`. A compute node's name comes
    from the job (its connection file, squeue): it must not reach ssh config matching (paramiko
    runs ``Match exec`` commands through a shell, with the name in them) or an ssh argv."""
    if not _NODE_NAME.fullmatch(node):
        raise SSHError(
            f"refusing the compute node name {node!r} (from the job's connection file or "
            "squeue) as an SSH target: it is not a host name (letters, digits, '-' and '.', "
            "at most 253 characters, not starting with '-' or '.')"
        )
    return node


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_ssh_config(path: Path) -> paramiko.SSHConfig:
    if path.is_file():
        try:
            return paramiko.SSHConfig.from_path(str(path))
        except Exception as exc:  # paramiko raises several types for bad lines
            raise SSHError(f"cannot parse the ssh config {path}: {exc}") from exc
    return paramiko.SSHConfig()


def resolve_host(
    target: str,
    config: paramiko.SSHConfig,
    *,
    port: int | None = None,
    user: str | None = None,
    key: Path | None = None,
) -> HostSpec:
    """Resolve ``[user@]host[:port]`` (or a config alias) like ``ssh`` would."""
    match = _TARGET.match(target.strip())
    if not match:
        raise SSHError(f"cannot parse SSH target {target!r}; expected [user@]host[:port]")
    alias = match["host"].strip("[]")
    opts: dict[str, Any] = dict(config.lookup(alias))
    hostname = str(opts.get("hostname", alias))
    resolved_port = port or (int(match["port"]) if match["port"] else int(opts.get("port", 22)))
    resolved_user = user or match["user"] or str(opts.get("user") or getpass.getuser())
    if key is not None:
        identities: tuple[Path, ...] = (key,)
    else:
        identities = tuple(Path(p).expanduser() for p in opts.get("identityfile", []))
    jump = str(opts.get("proxyjump", "")).strip()
    command = str(opts.get("proxycommand", "")).strip()
    return HostSpec(
        alias=alias,
        hostname=hostname,
        port=resolved_port,
        user=resolved_user,
        identity_files=identities,
        proxy_jump=tuple(h.strip() for h in jump.split(",") if h.strip())
        if jump and jump.lower() != "none"
        else (),
        proxy_command=command if command and command.lower() != "none" else None,
        keepalive=int(opts.get("serveraliveinterval", _DEFAULT_KEEPALIVE)),
    )


def ssh_command(
    spec: HostSpec,
    *,
    jumps: Sequence[str] = (),
    ssh_config: Path | None = None,
    known_hosts: Path | None = None,
) -> str:
    """An OpenSSH command line, to paste into a shell, that reaches ``spec`` the way jlabgw
    does: its port, user and keys as resolved (overrides included), through ``jumps`` (hosts
    as the ssh config names them, ``-J``), reading ``ssh_config`` (``-F``; None: OpenSSH's
    own) and checking host keys against ``known_hosts`` (None: OpenSSH's own)."""
    argv = ["ssh"]
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    if jumps:
        argv += ["-J", ",".join(jumps)]
    argv += ["-p", str(spec.port), "-l", spec.user]
    for key in spec.identity_files:
        argv += ["-i", str(key)]
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    argv.append(spec.alias)
    return shlex.join(argv)


def keyscan_command(spec: HostSpec, known_hosts: Path, via: str | None = None) -> str:
    """The command that appends ``spec``'s host key to ``known_hosts``: ``ssh-keyscan`` run
    here, or, with ``via`` (an :func:`ssh_command` to the jump host that reaches ``spec``),
    run there, its output appended here."""
    scan = ["ssh-keyscan", *(["-p", str(spec.port)] if spec.port != 22 else []), spec.hostname]
    prefix = f"{via} " if via else ""
    return f"{prefix}{shlex.join(scan)} >> {shlex.quote(str(known_hosts))}"


class RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, saying how to verify and add them. ``via``: the
    :func:`ssh_command` to the jump host ``spec`` is reached through, if any (the key is
    fetched there)."""

    def __init__(self, known_hosts: Path, spec: HostSpec, via: str | None = None) -> None:
        self.known_hosts = known_hosts
        self.spec = spec
        self.via = via

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        where = (
            f"is not in {self.known_hosts}"
            if self.known_hosts.exists()
            else f"cannot be checked: {self.known_hosts} does not exist"
        )
        add = f"add it with `{keyscan_command(self.spec, self.known_hosts, self.via)}`"
        if self.via:
            add += (
                f" (ssh-keyscan runs on the jump host, which reaches {self.spec.hostname}; "
                "this machine may not)"
            )
        else:
            add += " (or log in once with `ssh`, which asks)"
        raise HostKeyError(
            f"the host key of {hostname} ({key.get_name()} {fingerprint(key)}) {where}",
            f"Compare the fingerprint with the one your cluster publishes, then {add}. "
            "jlabgw never accepts host keys by itself",
        )
