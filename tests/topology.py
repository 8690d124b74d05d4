"""The multi-host test cluster of tests/cluster/topology.sh, seen from the tests: bring it up and
down, cut and restore its links, run commands inside a node's namespaces (as root or as the test
user), restart a node's sshd, and probe TCP paths from the laptop (the root namespace).

    laptop (root ns) --jlgw-login/eth0-- login (10.231.0.2; br0 10.231.1.1) --vc1/vc2-- c1, c2

Every wait here is bounded in count and time; every address is loopback or the topology's own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import wait_until

SCRIPT = Path(__file__).parent / "cluster" / "topology.sh"
TEST_USER = os.environ.get("JLABGW_TEST_USER", "jlabgw-test")
# another unprivileged user of the same nodes (a shared node's other tenant), never logged in
OTHER_USER = os.environ.get("JLABGW_OTHER_USER", "jlabgw-other")
JOB_VENV = Path(os.environ.get("JLABGW_TEST_JOB_VENV", "/opt/jlabgw-test/job-venv"))

LOGIN = "login"
COMPUTE = ("c1", "c2")
LOGIN_ADDR = "10.231.0.2"  # the login node as the laptop sees it
LOGIN_INTERNAL = "10.231.1.1"  # the login node on the cluster network
NODE_ADDR = {"c1": "10.231.1.11", "c2": "10.231.1.12"}
LAPTOP_LINK = "jlgw-login"  # the laptop's end of the laptop <-> login veth pair
NODE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}


def node_link(node: str) -> str:
    """The login namespace's end of the veth pair to compute node ``node`` (on bridge br0)."""
    return f"v{node}"


# -- can it run here -------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why the topology cannot come up on this machine, or None."""
    if os.geteuid() != 0:
        return (
            "the multi-host topology (tests/cluster/topology.sh) needs root: it creates network "
            "namespaces, veth pairs and a bridge"
        )
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: the topology needs `ip netns`"
    problem = _netns_problem()
    if problem:
        return f"`ip netns` is unusable here, so the topology cannot be built: {problem}"
    for tool in ("nsenter", "unshare", "slurmctld", "slurmd", "munged", "sshd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (run tests/cluster/setup-system.sh)"
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return f"user {TEST_USER} does not exist (run tests/cluster/setup-system.sh)"
    if not (JOB_VENV / "bin" / "python").exists():
        return f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)"
    return None


def _netns_problem() -> str | None:
    """Create and delete a throw-away namespace: listing alone proves nothing."""
    had_run_netns = Path("/run/netns").exists()
    probe = f"jlgw-probe-{os.getpid()}"
    try:
        added = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10
        )
        if added.returncode != 0:
            return f"`ip netns add` failed: {added.stderr.strip()[:200]}"
        run = subprocess.run(
            ["ip", "-n", probe, "link", "set", "lo", "up"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if run.returncode != 0:
            return f"`ip -n NS link set lo up` failed: {run.stderr.strip()[:200]}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` did not run: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
        # `ip netns add` made /run/netns (a bind mount of itself): leave the machine as it was
        if (
            not had_run_netns
            and Path("/run/netns").is_dir()
            and not any(Path("/run/netns").iterdir())
        ):
            subprocess.run(["umount", "/run/netns"], capture_output=True, timeout=10, check=False)
            with contextlib.suppress(OSError):
                Path("/run/netns").rmdir()


# -- up and down -----------------------------------------------------------------------------


@dataclass
class Topology:
    """A running topology: ``state`` is its state dir, ``config`` the laptop's jlabgw config."""

    config: Path

    @property
    def state(self) -> Path:
        return self.config.parent.parent  # STATE/laptop/jlabgw.toml

    @property
    def known_hosts(self) -> Path:
        return self.state / "ssh_known_hosts"

    @property
    def user_home(self) -> Path:
        """The test user's home: shared by every node, like a cluster's."""
        return Path(pwd.getpwnam(TEST_USER).pw_dir)

    # -- running things inside nodes ----------------------------------------------------

    def init_pid(self, node: str) -> int:
        return int((self.state / "nodes" / node / "init.pid").read_text().strip())

    def in_node(self, node: str, argv: Sequence[str], as_user: bool | str = False) -> list[str]:
        """The command line that runs ``argv`` inside ``node``'s network, mount and UTS
        namespaces, as root, the test user (True) or the user named."""
        command = ["nsenter", "-t", str(self.init_pid(node)), "-n", "-m", "-u", "--"]
        if as_user:
            command += ["runuser", "-u", TEST_USER if as_user is True else str(as_user), "--"]
        return [*command, *argv]

    def run_in(
        self,
        node: str,
        argv: Sequence[str],
        *,
        as_user: bool | str = False,
        timeout: float = 30,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside ``node``'s network, mount and UTS namespaces (its hostname,
        /etc/hosts, /etc/slurm), as root, as the test user (True) or as the user named (a clean
        environment: plain sbatch/squeue read the node's /etc/slurm)."""
        result = subprocess.run(
            self.in_node(node, argv, as_user),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=NODE_ENV,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {node} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[:500]}"
            )
        return result

    def squeue_state(self, job_id: str) -> str:
        """The job's state as the login node's squeue shows it ('' once it left the queue)."""
        out = self.run_in(LOGIN, ["squeue", "-h", "-j", job_id, "-o", "%T"], check=False)
        return out.stdout.strip()

    def user_jobs(self) -> dict[str, tuple[str, str]]:
        """job id -> (state, node) of every job of the test user."""
        out = self.run_in(
            LOGIN, ["squeue", "-h", "-u", TEST_USER, "-o", "%i %T %N"], check=False
        ).stdout
        jobs: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                jobs[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
        return jobs

    def sbatch(self, *options: str, script: str = "sleep 600") -> str:
        """Submit a job as the test user on the login node; its id. (Its directory and output
        are set: the directory we run in is not the user's to write.)"""
        argv = ["sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", *options]
        out = self.run_in(LOGIN, [*argv, "--wrap", script], as_user=True).stdout.strip()
        return out.split(";", 1)[0]

    def scancel(self, job_id: str) -> None:
        """Cancel a job as the test user on the login node (as they would themselves)."""
        self.run_in(LOGIN, ["scancel", job_id], as_user=True)

    def wait_running(self, job_id: str, timeout: float = 30) -> str:
        """Wait until ``job_id`` runs; its node."""
        assert wait_until(
            lambda: self.user_jobs().get(job_id, ("", ""))[0] == "RUNNING",
            timeout=timeout,
            interval=0.2,
        ), f"job {job_id} not RUNNING after {timeout} s: {self.user_jobs()}"
        return self.user_jobs()[job_id][1]

    def cancel_user_jobs(self) -> None:
        """Cancel every job of the test user and wait (bounded) until the queue is empty."""
        self.run_in(LOGIN, ["scancel", "-u", TEST_USER], check=False)
        wait_until(lambda: not self.user_jobs(), timeout=30, interval=0.2)

    # -- links --------------------------------------------------------------------------

    def set_link(self, name: str, up: bool, netns: str | None = None) -> None:
        prefix = ["ip", "-n", netns] if netns else ["ip"]
        subprocess.run(
            [*prefix, "link", "set", name, "up" if up else "down"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def link_is_up(self, name: str, netns: str | None = None) -> bool:
        prefix = ["ip", "-n", netns] if netns else ["ip"]
        out = subprocess.run(
            [*prefix, "-o", "link", "show", name], capture_output=True, text=True, timeout=10
        ).stdout
        return "state UP" in out or ",UP" in out.split(">", 1)[0]

    @contextlib.contextmanager
    def link_down(self, name: str, netns: str | None = None) -> Iterator[None]:
        """``name`` down for the body of the with block, then up again (also on failure)."""
        self.set_link(name, False, netns)
        try:
            yield
        finally:
            self.set_link(name, True, netns)

    def laptop_link(self) -> tuple[str, str | None]:
        """The laptop <-> login link: (name, namespace) for :meth:`link_down`."""
        return LAPTOP_LINK, None

    def compute_link(self, node: str) -> tuple[str, str | None]:
        """The login <-> ``node`` link, cut on the login side (the node's port of br0)."""
        return node_link(node), LOGIN

    # -- sshd on a node -----------------------------------------------------------------

    def sshd_pids(self, node: str) -> list[int]:
        """Every sshd process in ``node``'s network namespace: the listener and one per
        connection (and its privilege-separated child)."""
        out = subprocess.run(
            ["ip", "netns", "pids", node], capture_output=True, text=True, timeout=10
        ).stdout
        pids = []
        for word in out.split():
            try:
                comm = Path(f"/proc/{word}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "sshd":
                pids.append(int(word))
        return pids

    def sshd_listener(self, node: str) -> int | None:
        try:
            pid = int((self.state / "nodes" / node / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def restart_sshd(self, node: str, *, drop_connections: bool = True) -> int:
        """Stop ``node``'s sshd and start it again the way topology/node.sh does (same config,
        inside the node's namespaces). ``drop_connections``: also end every connection's sshd,
        as a crash or a node-wide restart does (a plain restart leaves them running). Returns
        the new listener's pid."""
        old_listener = self.sshd_listener(node)
        victims = self.sshd_pids(node) if drop_connections else []
        if old_listener is not None and old_listener not in victims:
            victims.append(old_listener)
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGTERM)
        assert wait_until(lambda: not any(_alive(p) for p in victims), timeout=5), (
            f"sshd of {node} did not exit"
        )
        assert not self.sshd_answers(node), f"{node}'s port 22 still answers after the kill"
        directory = self.state / "nodes" / node
        with (directory / "sshd.log").open("ab") as log:
            # setsid -f: the daemon is not our child (no zombie, no Popen to reap); `down`
            # finds it among the namespace's pids
            subprocess.run(
                [
                    "setsid",
                    "-f",
                    "nsenter",
                    "-t",
                    str(self.init_pid(node)),
                    "-n",
                    "-m",
                    "-u",
                    "--",
                    "/usr/sbin/sshd",
                    "-D",
                    "-e",
                    "-f",
                    str(directory / "sshd_config"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
                timeout=10,
            )
        assert wait_until(
            lambda: self.sshd_listener(node) not in (None, old_listener), timeout=10
        ), f"{node}'s new sshd wrote no pid file"
        assert wait_until(lambda: self.sshd_answers(node), timeout=10, interval=0.1), (
            f"{node}'s new sshd does not answer"
        )
        listener = self.sshd_listener(node)
        assert listener is not None
        (directory / "sshd.launched").write_text(f"{listener}\n")
        return listener

    def sshd_answers(self, node: str, timeout: float = 2.0) -> bool:
        """An SSH banner comes back from ``node``:22 within ``timeout`` seconds, asked from
        the login node."""
        probe = (
            "import socket,sys\n"
            "t = float(sys.argv[2])\n"
            "try:\n"
            "    s = socket.create_connection((sys.argv[1], 22), timeout=t)\n"
            "    s.settimeout(t)\n"
            "    sys.exit(0 if s.recv(4) == b'SSH-' else 1)\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        result = self.run_in(
            LOGIN,
            ["/usr/bin/python3", "-c", probe, NODE_ADDR[node], str(timeout)],
            check=False,
            timeout=timeout + 10,
        )
        return result.returncode == 0


def up(timeout: float = 120) -> Topology:
    """``topology.sh up``; raises with its log when it fails."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "up"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"},
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        raise RuntimeError(
            f"topology.sh up failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )
    return Topology(Path(lines[-1]))


def down(timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=timeout
    )


# -- probing paths from the laptop -----------------------------------------------------------


def tcp_connect(host: str, port: int, timeout: float = 3.0) -> tuple[OSError | None, float]:
    """Try a TCP connection from this (the root) namespace: (the error or None, seconds)."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None, time.monotonic() - start
    except OSError as exc:
        return exc, time.monotonic() - start


def refused_or_unreachable(exc: OSError | None) -> bool:
    return exc is not None and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
