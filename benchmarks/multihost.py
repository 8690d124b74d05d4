"""The multi-host topology of tests/cluster/topology.sh for the benchmarks (``--topology``):

    laptop (this, the root namespace) -> login (netns: sshd, slurmctld) -> c1, c2 (netns: slurmd,
    sshd admitting the user only while a job of theirs runs there)

jlabgw runs here, as on a laptop, with the topology's own config (the login node an ssh_config
alias, compute nodes reached through it as a jump host): two SSH hops to the kernel where the
one-host setup of coldstart.cluster() has one.

The topology is one thing per machine (fixed namespace and link names, one state dir): it is
brought up only when nobody else's is (the state dir, the namespaces and topology.sh's lock
are checked; ``wait`` seconds of re-checks at most) and always taken down at the end.
Needs root and tests/cluster/setup-system.sh. Every wait here is bounded; every address is
loopback or the topology's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import topology as topo  # noqa: E402 - after the path above
from tests.helpers import wait_until  # noqa: E402

STATE = Path(os.environ.get("JLABGW_TOPOLOGY_DIR", "/run/jlabgw-topology"))
NAMESPACES = (topo.LOGIN, *topo.COMPUTE)
CONNECTION_DIR = ".jlabgw/topology-connections"  # the config's connection_dir, in the home
JOB_NAME = "jlabgw-bench-topology"


def busy_reason() -> str | None:
    """Why the topology is someone else's right now (or left over), or None."""
    if STATE.exists():
        return (
            f"{STATE} exists: a topology is up (a test run's; if nobody uses it, "
            "`bash tests/cluster/topology.sh down`)"
        )
    taken = [ns for ns in NAMESPACES if Path("/run/netns", ns).exists()]
    if taken:
        return f"network namespace(s) {', '.join(taken)} exist: a topology is up or half down"
    with open(topo.SCRIPT) as script:
        try:
            fcntl.flock(script, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "topology.sh up/down is running"
        fcntl.flock(script, fcntl.LOCK_UN)
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            argv = (pid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if any("pytest" in w for w in words) and any(
            "test_topology" in w and not w.startswith("--ignore") for w in words
        ):
            return f"a pytest run of test_topology is going (pid {pid.name})"
    return None


@contextlib.contextmanager
def cluster(wait: float = 0.0) -> Iterator[topo.Topology]:
    """``topology.sh up`` once nobody else uses the topology (re-checked every 30 s for at most
    ``wait`` seconds), ``down`` at the end whatever happened."""
    reason = topo.unavailable_reason()
    if reason:
        raise SystemExit(f"--topology: {reason}")
    deadline = time.monotonic() + wait
    for _ in range(int(wait / 30) + 2):
        busy = busy_reason()
        if busy is None:
            break
        if time.monotonic() >= deadline:
            raise SystemExit(f"--topology: {busy} (--wait-topology SECONDS to wait for it)")
        print(f"topology busy: {busy}; checking again in 30 s", file=sys.stderr)
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
    else:
        raise SystemExit(f"--topology: {busy_reason()}")
    t0 = time.monotonic()
    cluster = topo.up()
    print(f"topology up in {time.monotonic() - t0:.1f} s: {cluster.config}", file=sys.stderr)
    try:
        yield cluster
    except BaseException:
        keep_logs(cluster)
        raise
    finally:
        with contextlib.suppress(Exception):
            cluster.cancel_user_jobs()
        done = topo.down()
        if done.returncode != 0:
            print(f"topology.sh down failed: {done.stderr[-2000:]}", file=sys.stderr)


def keep_logs(cluster: topo.Topology) -> None:
    """Copy the nodes' and SLURM's logs out of the state dir (``down`` deletes it)."""
    import shutil
    import tempfile

    keep = Path(tempfile.mkdtemp(prefix="jlabgw-topology-logs-"))
    for log in [*cluster.state.glob("nodes/*/*.log"), *cluster.state.glob("slurm/*.log")]:
        with contextlib.suppress(OSError):
            shutil.copy(log, keep / f"{log.parent.name}-{log.name}")
    print(f"the topology's logs: {keep}", file=sys.stderr)


def server_env(workdir: Path, cluster: topo.Topology) -> dict[str, str]:
    """A jlabgw server on the laptop with the topology's config (``ssh_host = "login"`` from its
    ssh_config, compute nodes through it, the site's known_hosts, the job venv); state and
    notebooks under ``workdir``, like coldstart.server_env's."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "JLABGW_CONFIG": str(cluster.config),
        "JLABGW_STATE_DIR": str(workdir / "state"),
        "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
        "JLABGW_LOG_LEVEL": "WARNING",
        "JLABGW_JOB_NAME": JOB_NAME,
        "JLABGW_JOB_IDLE_TIMEOUT": "0",
        "JLABGW_WALLTIME_WARN": "0",
    }


def queue_empty(cluster: topo.Topology) -> bool:
    return not cluster.user_jobs()


def connection_file(cluster: topo.Topology, job: str) -> Path:
    return cluster.user_home / CONNECTION_DIR / f"jlabgw-{job}.json"


# -- faults ------------------------------------------------------------------------------------


def connection_pids(cluster: topo.Topology, node: str) -> list[int]:
    """The per-connection sshd processes of ``node`` (not its listener)."""
    listener = cluster.sshd_listener(node)
    return [pid for pid in cluster.sshd_pids(node) if pid != listener]


def drop_connections(cluster: topo.Topology, nodes: tuple[str, ...]) -> int:
    """SIGKILL every SSH connection's sshd on ``nodes``; the listeners stay (the topology's
    equivalent of tests.sshd.SSHDServer.drop_connections, whose one sshd is both hops)."""
    pids = [pid for node in nodes for pid in connection_pids(cluster, node)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def login_answers(timeout: float = 1.0) -> bool:
    """The login node's sshd sends its banner to the laptop."""
    try:
        with socket.create_connection((topo.LOGIN_ADDR, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


def restart_login_sshd(cluster: topo.Topology, down_for: float) -> dict[str, object]:
    """The login node's sshd and every connection through it gone for ``down_for`` seconds,
    then started again as topology/node.sh starts it (as tests.sshd.SSHDServer.restart does
    to the one-host login node: connections SIGKILLed, the listener terminated)."""
    node = topo.LOGIN
    listener = cluster.sshd_listener(node)
    victims = connection_pids(cluster, node)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if listener is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(listener, signal.SIGTERM)
        victims.append(listener)
    if not wait_until(lambda: not any(topo._alive(p) for p in victims), timeout=5):
        raise RuntimeError("the login node's sshd did not exit")
    time.sleep(down_for)
    directory = cluster.state / "nodes" / node
    enter = ["nsenter", "-t", str(cluster.init_pid(node)), "-n", "-m", "-u", "--"]
    sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(directory / "sshd_config")]
    with (directory / "sshd.log").open("ab") as log:
        # setsid -f: not our child (nothing to reap); `topology.sh down` finds it in the netns
        subprocess.run(
            ["setsid", "-f", *enter, *sshd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            timeout=10,
        )
    if not wait_until(lambda: cluster.sshd_listener(node) not in (None, listener), timeout=10):
        raise RuntimeError("the login node's new sshd wrote no pid file")
    if not wait_until(login_answers, timeout=10, interval=0.1):
        raise RuntimeError("the login node's new sshd does not answer")
    (directory / "sshd.launched").write_text(f"{cluster.sshd_listener(node)}\n")
    return {"killed": len(victims), "down_s": down_for}


def restart_node_sshd(cluster: topo.Topology, node: str) -> dict[str, object]:
    """``node``'s sshd and every connection to it killed, a new one started (tests.topology)."""
    killed = len(cluster.sshd_pids(node))
    cluster.restart_sshd(node, drop_connections=True)
    return {"killed": killed, "node": node}


def link_down(
    cluster: topo.Topology, link: tuple[str, str | None], seconds: float, node: str | None = None
) -> dict[str, object]:
    """``link`` (name, namespace) down for ``seconds``, then up again. Proves the cut while it
    lasts: the login node (``node`` None) does not answer the laptop, or ``node`` does not
    answer the login node. Returns what the fault did, for the trial's record."""
    name, netns = link
    start = time.monotonic()
    with cluster.link_down(name, netns):
        answers = login_answers(1.0) if node is None else cluster.sshd_answers(node, timeout=1.0)
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    return {"cut": name, "down_s": round(time.monotonic() - start, 2), "unreachable": not answers}
