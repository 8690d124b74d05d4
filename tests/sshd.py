"""A real OpenSSH sshd for the tests, on 127.0.0.1 and a high port, with its own host key.

Needs root (sshd switches to the test user) and tests/cluster/setup-system.sh having run
(packages, the test user). Everything else lives in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_until

CLUSTER = Path(__file__).parent / "cluster"
TEST_USER = os.environ.get("JLABGW_TEST_USER", "jlabgw-test")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def unavailable_reason() -> str | None:
    """Why the sshd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the test sshd needs root"
    if not Path(SSHD).exists():
        return "openssh-server is not installed (run tests/cluster/setup-system.sh)"
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return f"user {TEST_USER} does not exist (run tests/cluster/setup-system.sh)"
    return None


@dataclass
class SSHDServer:
    """One sshd instance; ``known_hosts`` and ``client_key`` are what a client needs."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # environment for every session (sshd's SetEnv): a login node's SLURM_CONF, say
    set_env: dict[str, str] = field(default_factory=dict)

    host = "127.0.0.1"
    user = TEST_USER

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        # one file per server, and per test run: two servers (sshd, login node) and two pytest
        # runs at once (each has an "sshd0") must not overwrite each other's key
        name = f"authorized_keys.{self.root.parent.name}.{self.root.name}"
        return Path(pwd.getpwnam(self.user).pw_dir) / ".ssh" / name

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.root / "ssh_host_ed25519_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        account = pwd.getpwnam(self.user)
        ssh_dir = Path(account.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = self.authorized_keys
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        for path in (ssh_dir, authorized):
            os.chown(path, account.pw_uid, account.pw_gid)
        authorized.chmod(0o600)
        self.port = self.port or free_port()
        kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
        # under 127.0.0.1 and under this machine's name: the test SLURM's "compute node"
        names = (self.host, socket.gethostname())
        self.known_hosts.write_text(
            "".join(f"[{name}]:{self.port} {kind} {blob}\n" for name in names)
        )
        config = (
            (CLUSTER / "sshd_config.in")
            .read_text()
            .format(
                port=self.port,
                host_key=host_key,
                pid_file=self.root / "sshd.pid",
                authorized_keys=authorized,
                user=self.user,
            )
        )
        if self.set_env:  # sshd honours only the first SetEnv line: all of them on one
            config += "SetEnv " + " ".join(f'"{k}={v}"' for k, v in self.set_env.items()) + "\n"
        (self.root / "sshd_config").write_text(config)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._listening, timeout=15):
            raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5):
            return True
        return False

    def children(self) -> list[int]:
        """The per-connection sshd processes (the listener's descendants)."""
        if self.proc is None:
            return []
        parents = {self.proc.pid}
        found: list[int] = []
        for _ in range(4):  # privsep: listener -> [priv] -> user process
            level = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid in parents:
                    level.append(int(entry.name))
            found += level
            parents = set(level)
        return found

    def drop_connections(self) -> int:
        """Kill every open SSH connection; the listener stays up. Returns how many."""
        pids = self.children()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        self.drop_connections()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()
