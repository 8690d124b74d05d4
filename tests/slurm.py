"""A real one-node SLURM (munged, slurmctld, slurmd) for the tests, from tests/cluster/.

Needs root and Debian's slurm-wlm + munge (tests/cluster/setup-system.sh). Everything lives in
one temporary directory; ``SLURM_CONF`` points the client commands at it. That directory is
world-readable (pytest's own temp dirs are 0700), so the non-root test user, logged in over
SSH as on a login node, can read the config and reach munged's socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_until
from tests.sshd import SSHDServer

CLUSTER = Path(__file__).parent / "cluster"


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test SLURM needs root"
    for tool in ("slurmctld", "slurmd", "sbatch", "munged", "mungekey"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (run tests/cluster/setup-system.sh)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def setup(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge = self.root / "munge"
        munge.chmod(0o755)  # munged: "execute permissions for all required" on the socket dir
        key = munge / "munge.key"
        if not key.exists():
            subprocess.run([_tool("mungekey"), "-c", "-k", str(key)], check=True)
        node_line = subprocess.run(
            [_tool("slurmd"), "-C"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        nodename = node_line.split()[0].split("=", 1)[1]
        config = (
            (CLUSTER / "slurm.conf.in")
            .read_text()
            .format(
                hostname=socket.gethostname(),
                ctld_port=free_port(),
                slurmd_port=free_port(),
                munge_socket=munge / "munge.socket",
                root=self.root,
                node_line=node_line,
                nodename=nodename,
            )
        )
        self.conf.write_text(config)
        self.root.chmod(0o755)
        self.conf.chmod(0o644)

    def _spawn(self, argv: list[str], log: str) -> None:
        with (self.root / log).open("ab") as out:
            self.procs.append(
                subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
                )
            )

    def start(self) -> None:
        munge = self.root / "munge"
        self._spawn(
            [
                _tool("munged"),
                "--foreground",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
                "--force",
            ],
            "munged.out",
        )
        if not wait_until((munge / "munge.socket").exists, timeout=15):
            raise RuntimeError(f"munged did not start: {self._tail('munged.out')}")
        self._spawn([_tool("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([_tool("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        if not wait_until(self._idle, timeout=60, interval=0.2):
            raise RuntimeError(
                f"SLURM did not come up: {self._tail('slurmctld.log')} {self._tail('slurmd.log')}"
            )

    def _tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / name).read_text()[-1500:]
        return ""

    def _idle(self) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a SLURM daemon exited: {proc.args}")
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env, timeout=10
        )
        return done.stdout.strip() == "idle"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs = []


# -- what the SLURM backend's test servers are given -----------------------------------------


def slurm_backend_env(tmp_path: Path, sshd: SSHDServer) -> dict[str, str]:
    """What every SLURM test server has: a home of its own, the test user's key and known
    hosts for ``sshd`` (whose port is the compute node's), a short job with no idle exit."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "JLABGW_BACKEND": "slurm",
        "JLABGW_COMPUTE_SSH_PORT": str(sshd.port),
        "JLABGW_SSH_USER": sshd.user,
        "JLABGW_SSH_KEY": str(sshd.client_key),
        "JLABGW_KNOWN_HOSTS": str(sshd.known_hosts),
        "JLABGW_SSH_CONFIG": str(tmp_path / "no-ssh-config"),
        "JLABGW_SLURM_TIME": "00:10:00",
        "JLABGW_JOB_IDLE_TIMEOUT": "0",
        "JLABGW_WALLTIME_WARN": "0",  # a 10-minute job would be warned about in every result
    }


def slurm_env(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer, **extra: str
) -> dict[str, str]:
    """sbatch runs here (as root); the node is reached through ``sshd``."""
    return {
        **slurm_backend_env(tmp_path, sshd),
        "SLURM_CONF": str(slurm.conf),
        "JLABGW_PYTHON": sys.executable,
        **extra,
    }


def squeue(slurm: SlurmCluster, job_id: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        capture_output=True,
        text=True,
        env=slurm.env,
        timeout=10,
    ).stdout.strip()


JOB_VENV = Path(os.environ.get("JLABGW_TEST_JOB_VENV", "/opt/jlabgw-test/job-venv"))


def login_env(tmp_path: Path, login: SSHDServer, **extra: str) -> dict[str, str]:
    """The MCP server on a "laptop": no SLURM here; everything goes through the login node,
    whose sshd is the node's too here (one machine)."""
    return {
        **slurm_backend_env(tmp_path, login),
        "JLABGW_SSH_HOST": login.host,
        "JLABGW_SSH_PORT": str(login.port),
        # how a site provides the gateway's Python: module load, conda, or a venv like this
        "JLABGW_REMOTE_SETUP": f". {JOB_VENV}/bin/activate",
        **extra,
    }
