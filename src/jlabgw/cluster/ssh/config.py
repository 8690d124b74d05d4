"""Where an SSH target leads, resolved the way OpenSSH would, and how its host key is checked.

From the user's ``~/.ssh/config`` (``JLABGW_SSH_CONFIG``): ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``ProxyJump`` (a comma-separated chain), ``ProxyCommand`` and
``ServerAliveInterval``; ``JLABGW_SSH_PORT``/``_USER``/``_KEY`` override them for the target.
Host keys are checked against ``known_hosts`` (``JLABGW_KNOWN_HOSTS``), never accepted
silently: an unknown key fails with its fingerprint and the command that adds it.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from jlabgw.errors import HostKeyError, SSHError

__all__ = ["HostSpec", "RejectUnknownHost", "fingerprint", "load_ssh_config", "resolve_host"]

_DEFAULT_KEEPALIVE = 30
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


class RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, saying how to verify and add them."""

    def __init__(self, known_hosts: Path, spec: HostSpec) -> None:
        self.known_hosts = known_hosts
        self.spec = spec

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        port = f"-p {self.spec.port} " if self.spec.port != 22 else ""
        where = (
            f"is not in {self.known_hosts}"
            if self.known_hosts.exists()
            else f"cannot be checked: {self.known_hosts} does not exist"
        )
        raise HostKeyError(
            f"the host key of {hostname} ({key.get_name()} {fingerprint(key)}) {where}. "
            "Compare the fingerprint with the one your cluster publishes, then add it with "
            f"`ssh-keyscan {port}{self.spec.hostname} >> {self.known_hosts}` (or log in once "
            "with `ssh`, which asks). jlabgw never accepts host keys by itself"
        )
