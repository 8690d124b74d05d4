"""The fault matrix, N trials each, on the real stack: MCP over stdio -> jlabgw (SLURM backend,
sbatch over SSH as the test user) -> SSH tunnel through the login node -> Kernel Gateway in a
job -> ipykernel.

Each trial runs a cell that prints numbered lines and records itself in the kernel, injects
the fault while (or before) it runs, then checks: did the session come through (or fail with
the clear error the fault calls for, and recover as documented); were any of the cell's
lines missing from the result or the notebook; did any cell run more than once.

Faults:
  ssh-drop-idle     every SSH connection killed between two cells
  ssh-drop-running  every SSH connection killed while a cell prints
  sshd-restart      the login node's sshd down for 2 s while a cell prints
  server-kill       the MCP server SIGKILLed while a cell prints; a new server takes over
  kernel-kill       the kernel process SIGKILLed from outside; restart_kernel, then a cell
  job-cancel        scancel of the job; a clear error, then resume on a new job
  gateway-kill      the Kernel Gateway SIGKILLed inside the job between two cells; a clear
                    error, then resume on the gateway the job starts in its place

Needs root and tests/cluster/setup-system.sh (it starts the test SLURM and a login sshd).

--topology runs the matrix on tests/cluster/topology.sh's multi-host cluster instead: jlabgw
here (the laptop) with the topology's config, sbatch over SSH on the login node, the job on
compute node c1 or c2, its tunnel through the login node as a jump host. There the one-host
sshd (both hops at once) becomes two:
  ssh-drop-idle,    every SSH connection's sshd SIGKILLed on the login node and on the job's
  ssh-drop-running  node (the listeners stay), between two cells / while a cell prints
  sshd-restart      the login node's sshd and its connections down for 2 s while a cell prints
and the network faults are added (each while a cell prints for 8 s):
  laptop-link-down  the laptop <-> login link down for 5 s
  compute-link-down the login <-> compute node link (the job's node) down for 5 s
  node-sshd-restart the compute node's sshd and every connection to it killed and restarted
The topology is brought up before the trials and down after them, and only if nobody else's is
up (--wait-topology SECONDS waits for that, checking every 30 s).
Usage: python benchmarks/faults.py [--trials 3] [--topology] [--only FAULT] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

LINES = 6


def cell(tag: str, pause: float = 0.4, lines: int = LINES) -> str:
    """Prints ``lines`` numbered lines; records its run in the kernel (a re-run shows twice)."""
    return (
        f"_runs = globals().setdefault('_runs', []); _runs.append({tag!r})\n"
        f"import time\nfor i in range({lines}):\n"
        f"    print('{tag}', i, flush=True)\n    time.sleep({pause})\n"
    )


def lines_of(tag: str, lines: int = LINES) -> list[str]:
    return [f"{tag} {i}" for i in range(lines)]


@contextlib.asynccontextmanager
async def server(env: dict[str, str]) -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "jlabgw"], env=env)
    async with Client(params, mode="legacy") as client:
        yield client


async def call(client: Any, tool: str, **args: Any) -> Any:
    return await client.call_tool(tool, args)


def text(result: Any) -> str:
    return "".join(getattr(b, "text", "") for b in result.content)


async def status(client: Any) -> dict[str, Any]:
    contents = await client.read_resource("jlabgw://server/status")
    return dict(json.loads(contents.contents[0].text))


def mine(state: dict[str, Any], sid: str) -> dict[str, Any]:
    """This trial's session in the status (earlier trials' sessions are taken back too)."""
    return next(s for s in state["sessions"] if s["session_id"] == sid)


async def new_session(client: Any, name: str) -> str:
    started = await call(client, "start_new_session", experiment_name=name)
    if started.is_error:
        raise RuntimeError(text(started))
    return str(started.structured_content["session_id"])


async def runs_of(client: Any, sid: str, tag: str) -> int:
    result = await call(client, "execute_code", session_id=sid, code=f"_runs.count({tag!r})")
    return int(text(result).strip().splitlines()[-1])


def missing(tag: str, seen: str, lines: int = LINES) -> int:
    return sum(line not in seen for line in lines_of(tag, lines))


async def to_the_end(client: Any, sid: str, result: Any, limit: int = 10) -> tuple[Any, str]:
    """A cell still running after JLABGW_EXEC_WAIT is followed with get_execution (at most
    ``limit`` more reports): (the last report, the text of them all)."""
    seen = text(result)
    for _ in range(limit):
        if result.is_error or (result.meta or {}).get("status") not in ("running", "queued"):
            break
        execution_id = result.meta["execution_id"]
        result = await call(client, "get_execution", session_id=sid, execution_id=execution_id)
        seen += text(result)
    return result, seen


def notebook_text(path: str, index: int) -> str:
    import nbformat

    deadline = time.monotonic() + 10
    while True:
        try:
            nb = nbformat.read(path, as_version=4)
            return "".join(o.get("text", "") for o in nb.cells[index].outputs)
        except (OSError, ValueError, IndexError):
            if time.monotonic() > deadline:
                return ""
            time.sleep(0.2)


async def in_background(seconds: float, action: Any) -> Any:
    await asyncio.sleep(seconds)
    return await asyncio.to_thread(action)


class OneHost:
    """The one-host setup (coldstart.cluster): one sshd is the login node and the node's."""

    def __init__(self, slurm: Any, sshd: Any) -> None:
        self.slurm, self.sshd = slurm, sshd

    def fault(self, kind: str, node: str) -> Callable[[], Any]:
        """The action that injects ``kind`` (``node``: the job's)."""
        if kind in ("ssh-drop-idle", "ssh-drop-running"):
            return self.sshd.drop_connections
        if kind == "sshd-restart":
            return lambda: self.sshd.restart(down_for=2.0)
        raise ValueError(f"no {kind} on one host")

    def scancel(self, job: str) -> None:
        subprocess.run(["scancel", job], env=self.slurm.env, check=True, timeout=30)

    def listed(self, job: str) -> bool:
        """squeue still lists ``job``."""
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            env=self.slurm.env,
            timeout=30,
        )
        return bool(out.stdout.strip())

    def connection_file(self, job: str) -> Path:
        import pwd

        home = Path(pwd.getpwnam(self.sshd.user).pw_dir)
        return home / ".jlabgw" / "connections" / f"jlabgw-{job}.json"

    def cancel_all(self) -> None:
        subprocess.run(
            ["scancel", "--name=jlabgw-bench"], env=self.slurm.env, check=False, timeout=30
        )


class MultiHost:
    """tests/cluster/topology.sh's cluster: the faults cut real links and kill real sshds."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def fault(self, kind: str, node: str) -> Callable[[], Any]:
        from tests import topology as topo

        import multihost

        cluster = self.cluster
        if kind in ("ssh-drop-idle", "ssh-drop-running"):
            return lambda: multihost.drop_connections(cluster, (topo.LOGIN, node))
        if kind == "sshd-restart":
            return lambda: multihost.restart_login_sshd(cluster, down_for=2.0)
        if kind == "laptop-link-down":
            return lambda: multihost.link_down(cluster, cluster.laptop_link(), CUT_SECONDS)
        if kind == "compute-link-down":
            link = cluster.compute_link(node)
            return lambda: multihost.link_down(cluster, link, CUT_SECONDS, node)
        if kind == "node-sshd-restart":
            return lambda: multihost.restart_node_sshd(cluster, node)
        raise ValueError(kind)

    def scancel(self, job: str) -> None:
        self.cluster.scancel(job)  # as the user, on the login node

    def listed(self, job: str) -> bool:
        return bool(self.cluster.squeue_state(job))

    def connection_file(self, job: str) -> Path:
        import multihost

        return multihost.connection_file(self.cluster, job)

    def cancel_all(self) -> None:
        self.cluster.cancel_user_jobs()


CUT_SECONDS = 5.0
NETWORK_LINES, NETWORK_PAUSE = 20, 0.4  # the network faults' cell prints for 8 s


async def trial_connection_fault(env: dict[str, str], where: Any, kind: str, n: int) -> dict:
    tag = f"{kind}-{n}"
    lines = LINES
    async with server(env) as client:
        sid = await new_session(client, tag)
        if kind == "ssh-drop-idle":
            await call(client, "execute_code", session_id=sid, code="1")
            node = (await status(client))["job"]["node"]
            done = await asyncio.to_thread(where.fault(kind, node))
            result = await call(client, "execute_code", session_id=sid, code=cell(tag, 0.1))
        else:
            if kind in NETWORK_KINDS:
                lines, pause, after = NETWORK_LINES, NETWORK_PAUSE, 1.0
            else:
                pause, after = 0.4, 0.8
            node = (await status(client))["job"]["node"]
            injector = asyncio.create_task(in_background(after, where.fault(kind, node)))
            code = cell(tag, pause, lines)
            t0 = time.monotonic()
            result = await call(client, "execute_code", session_id=sid, code=code)
            await injector
            done = injector.result()
        result, streamed = await to_the_end(client, sid, result)
        if kind in NETWORK_KINDS:  # the fault ended while the cell still printed
            done = {**(done or {}), "cell_s": round(time.monotonic() - t0, 2)}
        ok = not result.is_error
        state = await status(client)
        notebook = mine(state, sid)["notebook_path"]
        runs = await runs_of(client, sid, tag)
        await call(client, "shutdown_session", session_id=sid)
    seen = streamed + notebook_text(notebook, 1)
    outcome = {"survived": ok, "lost": missing(tag, seen, lines), "rerun": max(0, runs - 1)}
    return outcome | ({"fault": done} if done is not None else {})


async def trial_server_kill(env: dict[str, str], n: int) -> dict:
    tag = f"server-kill-{n}"
    quick = {**env, "JLABGW_EXEC_WAIT": "0.5", "JLABGW_KEEP_JOB": "1"}
    async with server(quick) as client:
        sid = await new_session(client, tag)
        first = await call(client, "execute_code", session_id=sid, code=cell(tag, 0.6))
        execution_id = first.meta["execution_id"]
        state = await status(client)
        notebook = mine(state, sid)["notebook_path"]
        await asyncio.sleep(1.0)
        os.kill(state["server_pid"], signal.SIGKILL)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await call(client, "list_sessions")
    async with server(env) as client:
        follow = await call(
            client, "get_execution", session_id=sid, execution_id=execution_id, wait=30
        )
        ok = not follow.is_error and follow.meta.get("status") == "ok"
        runs = await runs_of(client, sid, tag) if ok else 0
        await call(client, "shutdown_session", session_id=sid)
    seen = notebook_text(notebook, 0)
    return {"survived": ok, "lost": missing(tag, seen), "rerun": max(0, runs - 1)}


async def trial_kernel_kill(env: dict[str, str], n: int) -> dict:
    from tests.helpers import pids_matching

    tag = f"kernel-kill-{n}"
    async with server(env) as client:
        sid = await new_session(client, tag)
        kernel_id = mine(await status(client), sid)["kernel_id"]
        injector = asyncio.create_task(
            in_background(
                0.8, lambda: [os.kill(p, signal.SIGKILL) for p in pids_matching(kernel_id)]
            )
        )
        died = await call(client, "execute_code", session_id=sid, code=cell(tag))
        await injector
        clear = died.is_error and "kernel died" in text(died)
        restarted = await call(client, "restart_kernel", session_id=sid)
        clear = clear and not restarted.is_error
        after = await call(client, "execute_code", session_id=sid, code=cell(tag + "b", 0.05))
        ok = clear and not after.is_error
        runs = await runs_of(client, sid, tag + "b")
        await call(client, "shutdown_session", session_id=sid)
    return {
        "survived": ok,
        "lost": missing(tag + "b", text(after)),
        "rerun": max(0, runs - 1),
    }


async def lost_then_resumed(
    client: Any, sid: str, tag: str, notebook: str, expected: str
) -> tuple[bool, float, int]:
    """After the fault: the next call must fail saying ``expected``; then resume the notebook
    on a new kernel. Returns (both went as documented, seconds to the error, runs of ``tag``
    in the new kernel)."""
    t0 = time.monotonic()
    lost = await call(client, "execute_code", session_id=sid, code="1")
    seconds = time.monotonic() - t0
    clear = lost.is_error and expected in text(lost)
    resumed = await call(
        client,
        "start_session_resume_notebook",
        experiment_name=tag,
        notebook_path=Path(notebook).name,
    )
    ok = clear and not resumed.is_error
    new_sid = resumed.structured_content["session_id"] if ok else None
    runs = await runs_of(client, new_sid, tag) if new_sid else 0
    if new_sid:
        await call(client, "shutdown_session", session_id=new_sid)
    return ok, seconds, runs


async def one_cell_ran(client: Any, tag: str) -> tuple[str, str, str]:
    """A new session that ran ``tag``'s cell: (session id, job id, notebook path)."""
    sid = await new_session(client, tag)
    await call(client, "execute_code", session_id=sid, code=cell(tag, 0.01))
    state = await status(client)
    return sid, state["job"]["id"], mine(state, sid)["notebook_path"]


async def trial_job_cancel(env: dict[str, str], where: Any, n: int) -> dict:
    tag = f"job-cancel-{n}"
    async with server(env) as client:
        sid, job, notebook = await one_cell_ran(client, tag)
        await asyncio.to_thread(where.scancel, job)
        await asyncio.to_thread(gone, where, job)  # a job ending still answers for a moment
        ok, seconds, runs = await lost_then_resumed(client, sid, tag, notebook, "no longer running")
    # the resumed notebook re-ran the cell once on the new job: _runs has it once there
    return {"survived": ok, "lost": 0, "rerun": max(0, runs - 1), "detected_s": seconds}


async def trial_gateway_kill(env: dict[str, str], where: Any, n: int) -> dict:
    tag = f"gateway-kill-{n}"
    async with server(env) as client:
        sid, job, notebook = await one_cell_ran(client, tag)
        info = json.loads(where.connection_file(job).read_text())
        os.kill(int(info["gateway_pid"]), signal.SIGKILL)
        ok, seconds, runs = await lost_then_resumed(
            client, sid, tag, notebook, "started a new gateway"
        )
        same_job = (await status(client))["job"]["id"] == job
    seen = notebook_text(notebook, 0)
    return {
        "survived": ok and same_job,
        "lost": missing(tag, seen),
        "rerun": max(0, runs - 1),
        "detected_s": seconds,
    }


def gone(where: Any, job: str, timeout: float = 60) -> None:
    """Wait (bounded) until squeue no longer lists ``job``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not where.listed(job):
            return
        time.sleep(0.2)


KINDS = ("ssh-drop-idle", "ssh-drop-running", "sshd-restart", "server-kill", "kernel-kill")
KINDS += ("gateway-kill", "job-cancel")
NETWORK_KINDS = ("laptop-link-down", "compute-link-down", "node-sshd-restart")  # --topology


async def run_trial(kind: str, env: dict[str, str], where: Any, n: int) -> dict:
    if kind == "server-kill":
        return await trial_server_kill(env, n)
    if kind == "kernel-kill":
        return await trial_kernel_kill(env, n)
    if kind == "job-cancel":
        return await trial_job_cancel(env, where, n)
    if kind == "gateway-kill":
        return await trial_gateway_kill(env, where, n)
    return await trial_connection_fault(env, where, kind, n)


async def run_matrix(
    args: argparse.Namespace, env: dict[str, str], where: Any, kinds: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    """``args.trials`` rounds of every fault of ``kinds`` (or ``args.only``)."""
    env |= {"JLABGW_KEEP_JOB": "1", "JLABGW_EXEC_WAIT": "60", "JLABGW_LOG_LEVEL": args.log_level}
    table: dict[str, list[dict[str, Any]]] = {}
    try:
        for n in range(args.trials):
            for kind in kinds:
                if args.only and kind != args.only:
                    continue
                outcome = await run_trial(kind, env, where, n)
                print(f"{kind} #{n + 1}: {outcome}", file=sys.stderr)
                table.setdefault(kind, []).append(outcome)
    finally:
        await asyncio.to_thread(where.cancel_all)
    return table


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only", choices=KINDS + NETWORK_KINDS, help="run only this fault (for debugging)"
    )
    parser.add_argument("--log-level", default="ERROR", help="the servers' log level (stderr)")
    parser.add_argument(
        "--topology",
        action="store_true",
        help="on tests/cluster/topology.sh's laptop -> login -> compute node cluster, with the "
        "network faults (root; brought up and down by this run)",
    )
    parser.add_argument(
        "--wait-topology",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if someone else's topology is up, wait for it to go down (checked every 30 s)",
    )
    args = parser.parse_args()
    if args.only in NETWORK_KINDS and not args.topology:
        raise SystemExit(f"{args.only} is a fault of the multi-host topology: add --topology")

    import coldstart
    import multihost

    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-faults-"))
    try:
        if args.topology:
            with multihost.cluster(args.wait_topology) as cluster:
                env = multihost.server_env(workdir, cluster)
                table = await run_matrix(args, env, MultiHost(cluster), KINDS + NETWORK_KINDS)
        else:
            with coldstart.cluster(workdir) as (slurm, sshd):
                env = coldstart.server_env(workdir, sshd, slurm, "ssh")
                table = await run_matrix(args, env, OneHost(slurm, sshd), KINDS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    print("| fault | trials | survived | outputs lost | cells re-executed |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, trials in table.items():
        print(
            f"| {kind} | {len(trials)} | {sum(t['survived'] for t in trials)} | "
            f"{sum(t['lost'] for t in trials)} | {sum(t['rerun'] for t in trials)} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
