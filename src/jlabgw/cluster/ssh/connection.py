"""SSH connections with paramiko, configured the way OpenSSH would configure them.

Targets resolve through the user's ``~/.ssh/config`` (:mod:`jlabgw.cluster.ssh.config`: the
keywords honoured, the ``JLABGW_SSH_*`` overrides, the host-key policy). ``ProxyJump`` is a
chain: each hop's own config applies, and a direct-tcpip channel from one hop is the socket of
the next. ``ProxyCommand`` runs through ``paramiko.ProxyCommand`` (also the way to ride an
OpenSSH ControlMaster on clusters with two-factor login). Keys come from the agent and from
key files (encrypted keys through the agent).

Every connection gets TCP_NODELAY, keepalives, and one short session channel (``true``):
OpenSSH's sshd leaves Nagle on for a connection that only forwards, which costs ~40 ms per
kernel execution through a tunnel. A dead connection is re-established on next use with a
bounded backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import select
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from jlabgw.cluster.ssh.config import HostSpec, load_ssh_config, resolve_host, ssh_command
from jlabgw.cluster.ssh.hop import connect_hop, prime
from jlabgw.config import Settings
from jlabgw.errors import CommandError, SSHConnectError, SSHError

__all__ = ["CommandResult", "SSHConnection"]

log = logging.getLogger(__name__)

_MAX_HOPS = 8
_RECONNECT_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)  # bounded: five tries, ~7.5 s plus timeouts


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class SSHConnection:
    """An SSH connection to one host (possibly through jump hosts), re-made when it dies."""

    def __init__(
        self,
        target: str,
        settings: Settings,
        *,
        port: int | None = None,
        jump: str | None = None,
    ) -> None:
        """``port`` overrides ``JLABGW_SSH_PORT`` (compute nodes use their own); ``jump`` makes
        the connection go through that host (the login node), replacing any ProxyJump/Command."""
        self.settings = settings
        self._config = load_ssh_config(settings.ssh_config)
        spec = resolve_host(
            target,
            self._config,
            port=port or settings.ssh_port,
            user=settings.ssh_user,
            key=settings.ssh_key,
        )
        # The login node as a jump host takes the JLABGW_SSH_* settings, as it does when
        # jlabgw connects to it directly; other hops come from ~/.ssh/config alone.
        self._hop_specs: dict[str, HostSpec] = {}
        if jump:
            spec = dataclasses.replace(spec, proxy_jump=(jump,), proxy_command=None)
            hop = self._hop_specs[jump] = resolve_host(
                jump,
                self._config,
                port=settings.ssh_port,
                user=settings.ssh_user,
                key=settings.ssh_key,
            )
            # a cluster's accounts are the same on its login and compute nodes: the user of
            # JLABGW_SSH_HOST=user@login goes to the nodes too, unless the config names one
            configured = self._config.lookup(spec.alias).get("user")
            if not (settings.ssh_user or "@" in target or configured):
                spec = dataclasses.replace(spec, user=hop.user)
        self.spec = spec
        self._chain: list[paramiko.SSHClient] = []
        self._proxies: list[paramiko.ProxyCommand] = []
        self._lock = threading.RLock()
        self.reconnects = 0
        self._ever_connected = False

    # -- lifecycle ---------------------------------------------------------------------------

    def _open_chain(self, spec: HostSpec, depth: int = 0) -> list[paramiko.SSHClient]:
        if depth > _MAX_HOPS:
            raise SSHConnectError(f"ProxyJump chain to {spec.alias} is longer than {_MAX_HOPS}")
        chain: list[paramiko.SSHClient] = []
        sock: Any = None
        try:
            via = None
            if spec.proxy_jump:
                first = self._hop(spec.proxy_jump[0])
                chain = self._open_chain(first, depth + 1)
                for n, hop in enumerate(spec.proxy_jump[1:], 1):
                    hop_spec = self._hop(hop)
                    chain.append(
                        connect_hop(
                            hop_spec,
                            self._channel_via(chain[-1], hop_spec),
                            self.settings.known_hosts,
                            self.settings.ssh_timeout,
                            self.ssh_command(spec.proxy_jump[:n]),
                        )
                    )
                sock = self._channel_via(chain[-1], spec)
                via = self.ssh_command(spec.proxy_jump)
            elif spec.proxy_command:
                sock = paramiko.ProxyCommand(spec.proxy_command)
                self._proxies.append(sock)
            chain.append(
                connect_hop(spec, sock, self.settings.known_hosts, self.settings.ssh_timeout, via)
            )
        except BaseException:
            for client in chain:
                client.close()
            raise
        return chain

    def _hop(self, name: str) -> HostSpec:
        return self._hop_specs.get(name) or resolve_host(name, self._config)

    def ssh_command(self, hops: Sequence[str]) -> str:
        """An OpenSSH command line to the last of ``hops`` through the others, as this
        connection reaches it (the login node with the JLABGW_SSH_* settings, the same ssh
        config and known_hosts), to paste into a shell."""
        default_config = Path("~/.ssh/config").expanduser().absolute()
        default_known = Path("~/.ssh/known_hosts").expanduser().absolute()
        config = self.settings.ssh_config
        known = self.settings.known_hosts
        return ssh_command(
            self._hop(hops[-1]),
            jumps=hops[:-1],
            ssh_config=config if config.is_file() and config != default_config else None,
            known_hosts=known if known != default_known else None,
        )

    def _channel_via(self, client: paramiko.SSHClient, spec: HostSpec) -> paramiko.Channel:
        transport = client.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip",
                (spec.hostname, spec.port),
                ("127.0.0.1", 0),
                timeout=self.settings.ssh_timeout,
            )
        except (paramiko.SSHException, OSError) as exc:
            raise SSHConnectError(
                f"the jump host cannot reach {spec.hostname}:{spec.port}: {exc}"
            ) from exc

    @property
    def client(self) -> paramiko.SSHClient:
        """The live client to the target, connecting (or reconnecting) first if needed."""
        with self._lock:
            if self._chain:
                transport = self._chain[-1].get_transport()
                if transport is not None and transport.is_active():
                    return self._chain[-1]
                log.warning("SSH connection to %s was lost; reconnecting", self.spec.label)
                self._close_chain()
            self._chain = self._connect_with_backoff()
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            return self._chain[-1]

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        assert transport is not None
        return transport

    def _connect_with_backoff(self) -> list[paramiko.SSHClient]:
        last: SSHConnectError | None = None
        for attempt, delay in enumerate(_RECONNECT_DELAYS, 1):
            time.sleep(delay)
            try:
                chain = self._open_chain(self.spec)
                for client in chain:  # every hop: a jump host's sshd relays our packets too
                    prime(client)
                log.info("SSH connected to %s", self.spec.label)
                return chain
            except SSHConnectError as exc:  # host keys and auth do not get better by retrying
                last = exc
                log.info("SSH attempt %d/%d failed: %s", attempt, len(_RECONNECT_DELAYS), exc)
        assert last is not None
        raise last

    def _close_chain(self) -> None:
        for client in reversed(self._chain):
            transport = client.get_transport()
            client.close()
            if transport is not None and transport is not threading.current_thread():
                # its thread closes the socket, i.e. calls ProxyCommand.close(), on the way out
                transport.join(timeout=5)
        self._chain = []
        # paramiko's ProxyCommand.close() signals the process but neither reaps it nor closes
        # its pipes; reap only after the transport threads are done signalling it.
        for proxy in self._proxies:
            process = proxy.process
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._proxies = []

    def close(self) -> None:
        with self._lock:
            self._close_chain()

    @property
    def connected(self) -> bool:
        with self._lock:
            if not self._chain:
                return False
            transport = self._chain[-1].get_transport()
            return transport is not None and transport.is_active()

    # -- use ---------------------------------------------------------------------------------

    def open_channel(self, host: str, port: int) -> paramiko.Channel:
        """A direct-tcpip channel to ``host:port`` as seen from the far end."""
        try:
            return self.transport.open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=self.settings.ssh_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectError(
                f"{self.spec.hostname} cannot open a connection to {host}:{port}: {exc}"
            ) from exc

    def sftp(self) -> paramiko.SFTPClient:
        try:
            sftp = self.client.open_sftp()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"SFTP to {self.spec.label} failed: {exc}") from exc
        return sftp

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on the host (each argument shell-quoted); stdin gets ``input``."""
        command = shlex.join(argv)
        try:
            channel = self.transport.open_session(timeout=self.settings.ssh_timeout)
            channel.exec_command(command)
            if input:
                channel.sendall(input)
            channel.shutdown_write()
            stdout, stderr = _drain(channel, timeout)
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectError(
                f"running `{command}` on {self.spec.label} failed: {exc or type(exc).__name__}"
            ) from exc
        result = CommandResult(
            list(argv), code, stdout.decode(errors="replace"), stderr.decode(errors="replace")
        )
        if check and code != 0:
            raise CommandError(result.argv, code, result.stdout, result.stderr, self.spec.label)
        return result


def _drain(channel: paramiko.Channel, timeout: float | None) -> tuple[bytes, bytes]:
    """Read stdout and stderr together (so neither window fills up) until the command ends."""
    out: list[bytes] = []
    err: list[bytes] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if channel.recv_ready():
            out.append(channel.recv(1 << 16))
            continue
        if channel.recv_stderr_ready():
            err.append(channel.recv_stderr(1 << 16))
            continue
        if channel.exit_status_ready() and channel.eof_received:
            break
        if channel.closed:
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise TimeoutError(f"no exit within {timeout} s")
        select.select([channel], [], [], 0.1)
    return b"".join(out), b"".join(err)
