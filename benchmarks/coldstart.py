"""Cold and warm start of the SLURM backend on a real one-node SLURM.

cold: launch of ``python -m jlabgw`` (MCP over stdio, slurm backend) until the first ``1+1``
      result, on an idle node: connect, sbatch, queue wait, gateway start in the job, SSH
      tunnel to the node, kernel start, execute. Each run ends the server, which cancels the
      job, and waits until the node is idle again.
warm: ``start_new_session`` while the job is running (a new kernel on the same gateway), 1 s
      apart.

By default jobs are submitted the way a laptop user's are: over SSH to a login node (an sshd
on 127.0.0.1 with SLURM_CONF set), as the non-root test user, the gateway running from the job
venv that tests/cluster/setup-system.sh builds. ``--submit local`` runs sbatch on this machine
as root instead (the tunnel still goes through sshd).

Needs root, tests/cluster/setup-system.sh, and starts and stops its own munged, slurmctld,
slurmd and sshd (the test suite's, from tests/cluster/). ``--backend local`` measures the
zero-config default instead (a gateway subprocess here; no root, no cluster).

``--topology`` runs the same on tests/cluster/topology.sh's multi-host cluster: jlabgw here (the
laptop) with the topology's config, sbatch over SSH on the login node (its own namespace), the
job on compute node c1 or c2, the tunnel through the login node as a jump host (two SSH hops
over veth links). The topology is brought up before the runs and down after them, and only if
nobody else's is up (``--wait-topology SECONDS`` waits for that, checking every 30 s).
``--backend gridengine`` runs the same on a real one-host Grid Engine (tests/gridengine.py,
after tests/cluster/setup-gridengine.sh): qsub over SSH to a login sshd as the test user.

Usage: python benchmarks/coldstart.py [--cold 5] [--warm 20] [--backend slurm|local|gridengine]
                                      [--submit ssh|local] [--topology] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent  # for tests.slurm / tests.sshd
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
JOB_VENV = Path(os.environ.get("JLABGW_TEST_JOB_VENV", "/opt/jlabgw-test/job-venv"))
ONES = 50  # 1+1 round trips on a warm session, after the warm starts
ONE_PLUS_ONE: list[float] = []


def server_env(workdir: Path, sshd: Any, slurm: Any, submit: str) -> dict[str, str]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "JLABGW_CONFIG": str(workdir / "empty.toml"),
        "JLABGW_BACKEND": "slurm",
        "JLABGW_STATE_DIR": str(workdir / "state"),
        "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
        "JLABGW_LOG_LEVEL": "WARNING",
        "JLABGW_SSH_USER": sshd.user,
        "JLABGW_SSH_KEY": str(sshd.client_key),
        "JLABGW_KNOWN_HOSTS": str(sshd.known_hosts),
        "JLABGW_SSH_CONFIG": str(workdir / "no-ssh-config"),
        "JLABGW_COMPUTE_SSH_PORT": str(sshd.port),
        "JLABGW_JOB_NAME": "jlabgw-bench",
        "JLABGW_SLURM_TIME": "00:10:00",
        "JLABGW_JOB_IDLE_TIMEOUT": "0",
        "JLABGW_WALLTIME_WARN": "0",
    }
    (workdir / "empty.toml").touch()
    if submit == "ssh":
        env |= {
            "JLABGW_SSH_HOST": sshd.host,
            "JLABGW_SSH_PORT": str(sshd.port),
            "JLABGW_REMOTE_SETUP": f". {JOB_VENV}/bin/activate",
        }
    else:
        env |= {"SLURM_CONF": str(slurm.conf), "JLABGW_PYTHON": sys.executable}
    return env


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[tuple[Any, Any]]:
    """The test suite's one-node SLURM and an sshd acting as its login node (SLURM_CONF set
    in its sessions), started for a benchmark and stopped after it."""
    from tests.slurm import SlurmCluster
    from tests.slurm import unavailable_reason as slurm_reason
    from tests.sshd import SSHDServer
    from tests.sshd import unavailable_reason as sshd_reason

    reason = slurm_reason() or sshd_reason()
    if reason:
        raise SystemExit(reason)
    root = Path(tempfile.mkdtemp(prefix="jlabgw-slurm-"))
    slurm = SlurmCluster(root)
    sshd = SSHDServer(workdir / "login")
    try:
        slurm.setup()
        slurm.start()
        sshd.set_env = {"SLURM_CONF": str(slurm.conf)}
        sshd.setup()
        sshd.start()
        yield slurm, sshd
    finally:
        sshd.stop()
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


def node_idle(slurm: Any) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=slurm.env, timeout=10
    )
    return out.stdout.strip() == ""


def wait_idle(idle: Callable[[], bool], timeout: float = 60) -> None:
    """Until ``idle()`` (no job in the queue), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if idle():
            return
        time.sleep(0.2)
    raise SystemExit("the node did not become idle between runs")


async def status(client: Any) -> dict[str, Any]:
    contents = await client.read_resource("jlabgw://server/status")
    return dict(json.loads(contents.contents[0].text))


async def cold_run(env: dict[str, str]) -> dict[str, float]:
    """One launch → first result. Returns total seconds and the server's own pieces."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "jlabgw"], env=env)
    t0 = time.perf_counter()
    async with Client(params, mode="legacy") as client:
        t_up = time.perf_counter()
        started = await client.call_tool("start_new_session", {"experiment_name": "cold"})
        assert not started.is_error, started
        sid = started.structured_content["session_id"]
        t_session = time.perf_counter()
        result = await client.call_tool("execute_code", {"session_id": sid, "code": "1+1"})
        t_result = time.perf_counter()
        assert result.content[0].text.strip() == "2", result
        state = await status(client)
    job = state["gateway"]["start_seconds"] or {}
    if not isinstance(job, dict):  # the local backend: one number
        job = {"gateway": job}
    session = state["sessions"][0]["start_seconds"]
    return {
        "total": t_result - t0,
        "mcp_initialize": t_up - t0,
        "session_call": t_session - t_up,
        "execute_call": t_result - t_session,
        **{f"job_{k}": v for k, v in job.items()},
        "session_waited_for_gateway": session["gateway"],
        "session_kernel": session["kernel"],
    }


async def warm_runs(env: dict[str, str], n: int, pause: float = 1.0) -> list[float]:
    """``start_new_session`` n times on a running gateway, ``pause`` seconds apart (a user does
    not start sessions back to back; the spare kernel is re-made in the pause)."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "jlabgw"], env=env)
    samples: list[float] = []
    async with Client(params, mode="legacy") as client:
        first = await client.call_tool("start_new_session", {"experiment_name": "warm-up"})
        assert not first.is_error, first
        for i in range(n):
            await asyncio.sleep(pause)
            t0 = time.perf_counter()
            started = await client.call_tool("start_new_session", {"experiment_name": f"w{i}"})
            samples.append(time.perf_counter() - t0)
            assert not started.is_error, started
            sid = started.structured_content["session_id"]
            await client.call_tool("shutdown_session", {"session_id": sid})
        # and 1+1 on a warm session, as latency.py's "execute_code over MCP stdio" path
        sid = first.structured_content["session_id"]
        for _ in range(ONES):
            t0 = time.perf_counter()
            await client.call_tool("execute_code", {"session_id": sid, "code": "1+1"})
            ONE_PLUS_ONE.append(time.perf_counter() - t0)
    return samples


def median_of(runs: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=5, help="cold starts (default 5)")
    parser.add_argument("--warm", type=int, default=20, help="warm session starts (default 20)")
    parser.add_argument("--backend", choices=("slurm", "local", "gridengine"), default="slurm")
    parser.add_argument(
        "--submit", choices=("ssh", "local"), default="ssh", help="slurm: sbatch over SSH or here"
    )
    parser.add_argument(
        "--topology",
        action="store_true",
        help="slurm on tests/cluster/topology.sh's laptop -> login -> compute node cluster "
        "(root; brought up and down by this run)",
    )
    parser.add_argument(
        "--wait-topology",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if someone else's topology is up, wait for it to go down (checked every 30 s)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()

    if args.backend == "local":
        cold, warm = await local_runs(args.cold, args.warm)
        report(args, cold, warm)
        return
    if args.backend == "gridengine":
        cold, warm = await gridengine_runs(args.cold, args.warm)
        report(args, cold, warm)
        return
    if args.topology:
        if args.submit != "ssh":
            raise SystemExit("--topology submits over SSH to its login node (no --submit local)")
        cold, warm = await topology_runs(args.cold, args.warm, args.wait_topology)
        report(args, cold, warm)
        return

    if args.submit == "ssh" and not (JOB_VENV / "bin" / "python").exists():
        raise SystemExit(f"no job Python at {JOB_VENV}: run tests/cluster/setup-system.sh")

    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-coldstart-"))
    try:
        with cluster(workdir) as (slurm, sshd):
            env = server_env(workdir, sshd, slurm, args.submit)
            cold, warm = await cold_and_warm(env, args.cold, args.warm, lambda: node_idle(slurm))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report(args, cold, warm)


async def cold_and_warm(
    env: dict[str, str], n_cold: int, n_warm: int, idle: Callable[[], bool]
) -> tuple[list[dict[str, float]], list[float]]:
    """``n_cold`` cold starts, each on an idle cluster, then ``n_warm`` warm session starts."""
    cold: list[dict[str, float]] = []
    for i in range(n_cold):
        wait_idle(idle)
        run = await cold_run(env)
        cold.append(run)
        print(f"cold {i + 1}/{n_cold}: {run['total']:.2f} s", file=sys.stderr)
    wait_idle(idle)
    warm = await warm_runs(env, n_warm) if n_warm else []
    return cold, warm


async def topology_runs(
    n_cold: int, n_warm: int, wait: float
) -> tuple[list[dict[str, float]], list[float]]:
    """The same on the multi-host topology: laptop -> login node -> compute node."""
    import multihost

    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-coldstart-"))
    try:
        with multihost.cluster(wait) as cluster:
            env = multihost.server_env(workdir, cluster)
            return await cold_and_warm(env, n_cold, n_warm, lambda: multihost.queue_empty(cluster))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def gridengine_runs(n_cold: int, n_warm: int) -> tuple[list[dict[str, float]], list[float]]:
    """The same on a real one-host Grid Engine, qsub over SSH to a login sshd."""
    from tests.gridengine import running_cluster
    from tests.gridengine import unavailable_reason as ge_reason
    from tests.sshd import SSHDServer

    reason = ge_reason()
    if reason:
        raise SystemExit(f"Grid Engine cannot run here: {reason}")
    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-coldstart-"))
    try:
        with running_cluster() as ge:
            login = SSHDServer(workdir / "login", set_env=ge.client_env)
            login.root.mkdir()
            login.setup()
            login.start()
            try:
                (workdir / "home").mkdir()
                (workdir / "empty.toml").touch()
                env = {
                    "PATH": os.environ.get("PATH", ""),
                    "HOME": str(workdir / "home"),
                    "JLABGW_CONFIG": str(workdir / "empty.toml"),
                    "JLABGW_STATE_DIR": str(workdir / "state"),
                    "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
                    "JLABGW_LOG_LEVEL": "WARNING",
                    "JLABGW_BACKEND": "gridengine",
                    "JLABGW_SSH_HOST": login.host,
                    "JLABGW_SSH_PORT": str(login.port),
                    "JLABGW_SSH_USER": login.user,
                    "JLABGW_SSH_KEY": str(login.client_key),
                    "JLABGW_KNOWN_HOSTS": str(login.known_hosts),
                    "JLABGW_SSH_CONFIG": str(workdir / "no-ssh-config"),
                    "JLABGW_COMPUTE_SSH_PORT": str(login.port),
                    "JLABGW_REMOTE_SETUP": f". {JOB_VENV}/bin/activate",
                    "JLABGW_GE_H_RT": "0:10:00",
                    "JLABGW_WALLTIME_WARN": "0",
                }

                def idle() -> bool:
                    return not ge.as_user("qstat", check=False).stdout.strip()

                return await cold_and_warm(env, n_cold, n_warm, idle)
            finally:
                login.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def local_runs(n_cold: int, n_warm: int) -> tuple[list[dict[str, float]], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-coldstart-"))
    (workdir / "empty.toml").touch()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(workdir)),
        "JLABGW_CONFIG": str(workdir / "empty.toml"),
        "JLABGW_STATE_DIR": str(workdir / "state"),
        "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
        "JLABGW_LOG_LEVEL": "WARNING",
    }
    try:
        cold = []
        for i in range(n_cold):
            run = await cold_run(env)
            cold.append(run)
            print(f"cold {i + 1}/{n_cold}: {run['total']:.2f} s", file=sys.stderr)
        warm = await warm_runs(env, n_warm) if n_warm else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return cold, warm


def report(args: argparse.Namespace, cold: list[dict[str, float]], warm: list[float]) -> None:
    where = f"slurm, sbatch {'over SSH' if args.submit == 'ssh' else 'here'}"
    if args.topology:
        where = "slurm, multi-host topology: laptop -> login (sbatch over SSH) -> compute node"
    path = where if args.backend == "slurm" else args.backend
    if args.backend == "gridengine":
        path = "gridengine, qsub over SSH"
    if args.json:
        print(json.dumps({"path": path, "cold": cold, "warm": warm}, indent=1))
        return
    keys = list(dict.fromkeys(k for run in cold for k in run))
    print(f"{path}: {len(cold)} cold starts, {len(warm)} warm session starts")
    print(f"{'cold start piece':<24}{'median s':>10}")
    for key in keys:
        value = median_of(cold, key)
        print(f"{key:<24}{value:>10.3f}" if value is not None else f"{key:<24}{'-':>10}")
    if warm:
        ordered = sorted(warm)
        print(
            f"warm start_new_session: median {statistics.median(ordered):.3f} s, "
            f"p90 {ordered[int(0.9 * (len(ordered) - 1))]:.3f} s"
        )
    if ONE_PLUS_ONE:
        print(
            f"1+1 via execute_code on a warm session: median "
            f"{statistics.median(ONE_PLUS_ONE) * 1000:.2f} ms ({len(ONE_PLUS_ONE)} calls)"
        )


if __name__ == "__main__":
    asyncio.run(main())
