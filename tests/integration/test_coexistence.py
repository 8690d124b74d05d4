"""Two jlabgw servers of one user (issue 12): Claude Desktop and Claude Code side by side, same
HOME, same config, same state dir, same job name. Real servers over MCP stdio; on SLURM they
submit over SSH through the test login node as the cluster user.

Each server owns the sessions it started; they share the batch job, which ends only when the
last live one leaves; a SIGKILLed server's sessions are taken back by the next server, and
its lease keeps nothing running past the job's idle timeout. A notebook held by one server's
session is refused to the other, naming the holder. On the local backend each server has its
own gateway, and ``jlabgw stop`` stops only the server it is asked to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest
from mcp import Client

from tests.helpers import PYTHON, server_env, wait_until
from tests.mcp_client import call, new_session, serve, status, text_of
from tests.slurm import JOB_VENV, SlurmCluster, login_env, squeue
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def jlabgw(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "jlabgw", *args],
        capture_output=True,
        text=True,
        env=server_env(tmp_path, **env),
        timeout=60,
    )


async def kill_server(client: Client, pid: int) -> None:
    """SIGKILL a server (a crash, Claude Desktop force-quit): it cleans nothing up."""
    os.kill(pid, signal.SIGKILL)
    with anyio.move_on_after(5), contextlib.suppress(Exception):
        await call(client, "list_sessions")


async def run(client: Client, sid: str, code: str) -> str:
    out = await call(client, "execute_code", session_id=sid, code=code)
    assert not out.is_error, text_of(out)
    return text_of(out)


def needs_job_python() -> None:
    if not (JOB_VENV / "bin" / "python").exists():
        pytest.skip(f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)")


async def test_two_servers_share_a_job_and_own_their_sessions(
    tmp_path: Path, slurm: SlurmCluster, login_node: SSHDServer
) -> None:
    needs_job_python()
    env = login_env(tmp_path, login_node, JLABGW_JOB_NAME="jlabgw-two")
    log_a = (tmp_path / "server-a.log").open("w")
    async with serve(tmp_path, log_a, **env) as a:
        sa = await new_session(a, "from A")
        await run(a, sa, "x = 'kept by A'")
        state_a = await status(a)
        job, pid_a = state_a["job"]["id"], state_a["server_pid"]
        notebook_a = Path(state_a["sessions"][0]["notebook_path"])

        with (tmp_path / "server-b.log").open("w") as log_b:
            async with serve(tmp_path, log_b, **env) as b:
                listed = await call(b, "list_sessions")
                assert sa not in text_of(listed)  # A's session is not B's
                sb = await new_session(b, "from B")
                assert await run(b, sb, "'B'") == "'B'\n"
                state_b = await status(b)
                assert state_b["job"]["id"] == job  # one job for both
                assert state_b["job"]["shared_with"] == [pid_a]
                assert [s["session_id"] for s in state_b["sessions"]] == [sb]

                refused = await call(
                    b,
                    "start_session_resume_notebook",
                    experiment_name="steal",
                    notebook_path=notebook_a.name,
                )
                assert refused.is_error
                assert sa in text_of(refused)
                assert f"jlabgw server pid {pid_a}" in text_of(refused)

                shown = jlabgw(tmp_path, env, "status").stdout
                assert "job shared with server pid" in shown
                stop_all = jlabgw(tmp_path, env, "stop")  # which one? refused, both named
                assert stop_all.returncode != 0
                assert "2 jlabgw servers are running" in stop_all.stderr
                assert f"pid {pid_a}" in stop_all.stderr

        # B left: the job stays for A, whose kernel state is intact
        assert squeue(slurm, job) == "RUNNING"
        assert await run(a, sa, "x") == "'kept by A'\n"
        assert (await status(a))["job"]["shared_with"] == []
        # cells are written within ~0.25 s of their end (coalesced); a kill inside that window
        # loses the last finished cell's record (the kernel ran it): see README
        assert wait_until(lambda: len(nbformat.read(notebook_a, as_version=4).cells) == 2)
        await kill_server(a, pid_a)
    log_a.close()
    assert squeue(slurm, job) == "RUNNING"  # a killed server cancels nothing

    # C (a restarted Claude Desktop) takes A's session back, variables and all
    with (tmp_path / "server-c.log").open("w") as log_c:
        async with serve(tmp_path, log_c, **env) as c:
            assert await run(c, sa, "x") == "'kept by A'\n"
            state_c = await status(c)
            assert [s["session_id"] for s in state_c["sessions"]] == [sa]
            assert state_c["job"]["id"] == job
    # C was the last live holder (A's lease is void): the job is cancelled
    assert wait_until(lambda: squeue(slurm, job) == "", timeout=60)
    cells = [c.source for c in nbformat.read(notebook_a, as_version=4).cells]
    assert cells == ["x = 'kept by A'", "x", "x"]  # nothing ran twice


async def test_a_killed_server_keeps_no_job_past_its_idle_timeout(
    tmp_path: Path, slurm: SlurmCluster, login_node: SSHDServer
) -> None:
    """A is SIGKILLed with a session on the shared job; B exits normally. B does not cancel
    the job under A's session (the next server could take it back), and nobody comes back:
    the job's idle timeout (kernel culled, then the job ends) ends it."""
    needs_job_python()
    env = login_env(
        tmp_path,
        login_node,
        JLABGW_JOB_NAME="jlabgw-orphan",
        JLABGW_KERNEL_IDLE_TIMEOUT="15",
        JLABGW_JOB_IDLE_TIMEOUT="5",
    )
    log_a = (tmp_path / "server-a.log").open("w")
    async with serve(tmp_path, log_a, **env) as a:
        sa = await new_session(a, "orphaned")
        await run(a, sa, "y = 1")
        state_a = await status(a)
        job = state_a["job"]["id"]
        with (tmp_path / "server-b.log").open("w") as log_b:
            async with serve(tmp_path, log_b, **env) as b:
                assert (await status(b))["job"]["id"] == job
                await kill_server(a, state_a["server_pid"])
                assert (await status(b))["job"]["shared_with"] == []  # A's lease is void
    log_a.close()
    b_log = (tmp_path / "server-b.log").read_text()
    assert f"leaving batch job {job} running: 1 session(s) of jlabgw server pid" in b_log
    assert squeue(slurm, job) == "RUNNING"
    # culled after 15 s idle (checked every 10 s), then 5 s without a kernel: well under 90 s
    assert wait_until(lambda: squeue(slurm, job) == "", timeout=90, interval=1.0)


async def test_a_killed_server_without_sessions_does_not_hold_the_job(
    tmp_path: Path, slurm: SlurmCluster, login_node: SSHDServer
) -> None:
    needs_job_python()
    env = login_env(tmp_path, login_node, JLABGW_JOB_NAME="jlabgw-dead-lease")
    log_a = (tmp_path / "server-a.log").open("w")
    async with serve(tmp_path, log_a, **env) as a:
        state_a = await status(a)
        assert wait_until(lambda: bool(read_lease(tmp_path, "jlabgw-dead-lease")), timeout=60)
        with (tmp_path / "server-b.log").open("w") as log_b:
            async with serve(tmp_path, log_b, **env) as b:
                sb = await new_session(b, "B")
                await run(b, sb, "1")
                job = (await status(b))["job"]["id"]
                assert read_lease(tmp_path, "jlabgw-dead-lease")["job_id"] == job
                await kill_server(a, state_a["server_pid"])
    log_a.close()
    # B's exit cancels at once: no live holder left, no session waiting to be taken back
    assert wait_until(lambda: squeue(slurm, job) == "", timeout=30)


def read_lease(root: Path, name: str) -> dict[str, Any]:
    """The job record the servers under ``root`` share (tests.helpers.server_env's state dir)."""
    try:
        # one record per cluster: slurm-NAME@LOGIN_PORT.json
        [path] = (root / "state").glob(f"slurm-{name}@*.json")
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: no record (yet), or not one file
        return {}
    return data


async def test_two_local_servers_keep_to_their_own(tmp_path: Path) -> None:
    """The local backend: two gateways on two ports, state files side by side, a held notebook
    refused, `jlabgw stop` of one server leaving the other working."""
    env: dict[str, str] = {}
    with (
        (tmp_path / "server-a.log").open("w") as log_a,
        (tmp_path / "server-b.log").open("w") as log_b,
    ):
        async with serve(tmp_path, log_a) as a, serve(tmp_path, log_b) as b:
            sa = await new_session(a, "A")
            await run(a, sa, "x = 'A'")
            sb = await new_session(b, "B")
            await run(b, sb, "x = 'B'")
            state_a, state_b = await status(a), await status(b)
            assert state_a["gateway"]["url"] != state_b["gateway"]["url"]
            pid_a, pid_b = state_a["server_pid"], state_b["server_pid"]
            listed = json.loads(jlabgw(tmp_path, env, "status", "--json").stdout)
            assert sorted(s["pid"] for s in listed) == sorted([pid_a, pid_b])

            notebook_a = Path(state_a["sessions"][0]["notebook_path"])
            refused = await call(
                b,
                "start_session_resume_notebook",
                experiment_name="same",
                notebook_path=notebook_a.name,
            )
            assert refused.is_error
            assert f"session {sa} of another jlabgw server pid {pid_a}" in text_of(refused)

            refused_stop = jlabgw(tmp_path, env, "stop")
            assert refused_stop.returncode != 0
            assert "--pid" in refused_stop.stderr
            stopped = jlabgw(tmp_path, env, "stop", "--pid", str(pid_b))
            assert stopped.returncode == 0, stopped.stderr
            assert f"stopped server pid {pid_b}" in stopped.stdout
            assert await run(a, sa, "x") == "'A'\n"  # A and its kernel go on
            assert [
                s["pid"] for s in json.loads(jlabgw(tmp_path, env, "status", "--json").stdout)
            ] == [pid_a]

            # A killed: its hold is void, so the notebook may be resumed elsewhere
            await kill_server(a, pid_a)
        with (tmp_path / "server-c.log").open("w") as log_c:
            async with serve(tmp_path, log_c) as c:
                resumed = await call(
                    c,
                    "start_session_resume_notebook",
                    experiment_name="after A",
                    notebook_path=notebook_a.name,
                )
                assert not resumed.is_error, text_of(resumed)
                sc = resumed.structured_content["session_id"]
                assert await run(c, sc, "x") == "'A'\n"  # re-run from the notebook
