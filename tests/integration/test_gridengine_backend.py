"""JLABGW_BACKEND=gridengine end to end (issue 15): MCP over stdio -> qsub over SSH on the test
login node as the cluster user -> Kernel Gateway in a real Grid Engine job -> SSH tunnel to
the "compute node" (this machine, through the same sshd) -> notebook. The same shared batch
machinery as SLURM (BatchJob, leases, reattach, the walltime warning); only the scheduler
differs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest

from tests.gridengine import GridEngineCluster, ge_env
from tests.helpers import PYTHON, server_env, wait_until
from tests.mcp_client import call, new_session, serve, status, text_of
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def qstat_state(cluster: GridEngineCluster, job_id: str) -> str:
    """The job's state letters in qstat ("" once Grid Engine no longer lists it)."""
    done = cluster.as_user("qstat")
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == job_id:
            return fields[4]
    return ""


async def run(client: Any, sid: str, code: str) -> str:
    out = await call(client, "execute_code", session_id=sid, code=code)
    assert not out.is_error, text_of(out)
    return text_of(out)


async def test_a_session_on_a_grid_engine_job(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    env = ge_env(tmp_path, ge_login, JLABGW_JOB_NAME="jlabgw-ge")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "on grid engine")
            out = await run(client, sid, "import os, getpass; print(getpass.getuser()); 6 * 7")
            assert out == f"{ge_login.user}\n42\n"
            assert await run(client, sid, "1 + 1") == "2\n"
            long = await call(
                client,
                "execute_code",
                session_id=sid,
                code="import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)",
            )
            assert text_of(long) == "0\n1\n2\n"
            state = await status(client)
            assert state["backend"] == "gridengine"
            job = state["job"]
            assert job["state"] == "RUNNING"
            assert job["node"]
            assert qstat_state(gridengine, job["id"]) == "r"
            # h_rt 10 min: the time left comes from Grid Engine's start time and the limit
            assert 0 < job["seconds_left"] <= 600
            notebook = state["sessions"][0]["notebook_path"]
            doctor = subprocess.run(
                [PYTHON, "-m", "jlabgw", "doctor"],
                capture_output=True,
                text=True,
                env=server_env(tmp_path, **env),
                timeout=120,
            )
            assert "✓ scheduler" in doctor.stdout, doctor.stdout
            assert "qstat answers" in doctor.stdout
            assert "✓ batch script" in doctor.stdout
            assert "-l h_rt=0:10:00" in doctor.stdout
    # the client's exit deletes the job (qdel over SSH)
    assert wait_until(lambda: qstat_state(gridengine, job["id"]) == "", timeout=60)
    cells = nbformat.read(notebook, as_version=4).cells
    assert [c.execution_count for c in cells] == [1, 2, 3]


async def test_qdel_is_reported_and_resume_runs_on_a_new_job(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    env = ge_env(tmp_path, ge_login, JLABGW_JOB_NAME="jlabgw-ge-qdel")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "fragile")
            await run(client, sid, "x = 41")
            state = await status(client)
            old_job = state["job"]["id"]
            notebook = Path(state["sessions"][0]["notebook_path"])
            gridengine.as_user("qdel", old_job)
            assert wait_until(lambda: qstat_state(gridengine, old_job) == "", timeout=60)

            lost = await call(client, "execute_code", session_id=sid, code="x + 1")
            assert lost.is_error
            message = text_of(lost)
            assert f"batch job {old_job} is no longer running" in message
            assert "kernel and its variables are gone" in message
            assert f"notebook_path='{notebook.name}'" in message

            resumed = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="again",
                notebook_path=notebook.name,
            )
            assert not resumed.is_error, text_of(resumed)
            new_sid = resumed.structured_content["session_id"]
            assert await run(client, new_sid, "x + 1") == "42\n"
            new_job = (await status(client))["job"]["id"]
            assert new_job != old_job
    assert wait_until(lambda: qstat_state(gridengine, new_job) == "", timeout=60)


async def test_a_killed_server_is_replaced_and_takes_its_session_back(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    env = ge_env(tmp_path, ge_login, JLABGW_JOB_NAME="jlabgw-ge-reattach")
    first_log = (tmp_path / "server1.log").open("w")
    async with serve(tmp_path, first_log, **env) as client:
        sid = await new_session(client, "survivor")
        await run(client, sid, "y = 'state on the node'")
        state = await status(client)
        job = state["job"]["id"]
        notebook = state["sessions"][0]["notebook_path"]
        assert wait_until(lambda: len(nbformat.read(notebook, as_version=4).cells) == 1)
        os.kill(state["server_pid"], signal.SIGKILL)
        with anyio.move_on_after(5), contextlib.suppress(Exception):
            await call(client, "list_sessions")
    first_log.close()
    assert qstat_state(gridengine, job) == "r"  # nobody deleted it
    with (tmp_path / "server2.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            assert await run(client, sid, "y") == "'state on the node'\n"
            assert (await status(client))["job"]["id"] == job
    assert wait_until(lambda: qstat_state(gridengine, job) == "", timeout=60)


async def test_walltime_warning_and_idle_end(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    """h_rt of 3 minutes with a 5-minute warning: every result says so. The job then ends by
    itself once idle (no kernel for JLABGW_JOB_IDLE_TIMEOUT s), the server being kept off it."""
    env = ge_env(
        tmp_path,
        ge_login,
        JLABGW_JOB_NAME="jlabgw-ge-walltime",
        JLABGW_GE_H_RT="0:3:00",
        JLABGW_WALLTIME_WARN="5",
        JLABGW_JOB_IDLE_TIMEOUT="5",
        JLABGW_KEEP_JOB="1",  # left to its own idle timeout
    )
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "short job")
            out = await call(client, "execute_code", session_id=sid, code="1 + 1")
            text = text_of(out)
            assert text.startswith("2\n")
            job = (await status(client))["job"]["id"]
            assert f"batch job {job} reaches its walltime in about" in text
            shut = await call(client, "shutdown_session", session_id=sid)
            assert not shut.is_error, text_of(shut)
    # kept, but with no kernel: the job's supervisor ends it after 5 s idle
    assert wait_until(lambda: qstat_state(gridengine, job) == "", timeout=60, interval=1.0)


async def test_a_resource_shape_is_a_grid_engine_job_of_its_own(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    env = ge_env(tmp_path, ge_login, JLABGW_JOB_NAME="jlabgw-ge-shape", JLABGW_GE_PE="smp")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            started = await call(
                client,
                "start_new_session",
                experiment_name="shaped",
                cpus=2,
                mem="1G",
                time="00:05:00",
            )
            assert not started.is_error, text_of(started)
            sid = started.structured_content["session_id"]
            # the job got the slots of its parallel environment
            assert await run(client, sid, "import os; os.environ['NSLOTS']") == "'2'\n"
            state = await status(client)
            shaped = next(j for j in state["jobs"] if j["resources"] != "default")
            assert shaped["resources"] == "cpus=2,mem=1G,time=00:05:00"
            job_id = shaped["id"]
            details = gridengine.as_user("qstat", "-j", job_id).stdout
            assert "h_rt=300" in details
            assert "h_vmem=512M" in details  # per slot: the job's 1G over its 2 slots
            assert "smp range: 2" in details
    assert wait_until(lambda: qstat_state(gridengine, job_id) == "", timeout=60)


async def test_one_server_two_clusters_slurm_and_grid_engine(
    tmp_path: Path,
    slurm: Any,
    login_node: SSHDServer,
    gridengine: GridEngineCluster,
    ge_login: SSHDServer,
) -> None:
    """start_new_session(profile=...) (issue 15): the server's own cluster is the test SLURM;
    [profiles.ge] of the config file is the Grid Engine one, with its own login node, SSH
    connection, job and tunnel. Sessions on both at once; list_sessions and status say which
    cluster each is on; an unknown profile is refused naming the defined ones."""
    from tests.slurm import login_env

    ge = ge_env(tmp_path, ge_login)
    config = tmp_path / "clusters.toml"
    config.write_text(
        "[profiles.ge]\n"
        'backend = "gridengine"\n'
        f'ssh_host = "{ge_login.host}"\n'
        f"ssh_port = {ge_login.port}\n"
        f'ssh_user = "{ge_login.user}"\n'
        f'ssh_key = "{ge_login.client_key}"\n'
        f'known_hosts = "{ge_login.known_hosts}"\n'
        f"compute_ssh_port = {ge_login.port}\n"
        f'remote_setup = "{ge["JLABGW_REMOTE_SETUP"]}"\n'
        'ge_h_rt = "0:10:00"\n'
        'job_name = "jlabgw-two-ge"\n'
    )
    env = login_env(tmp_path, login_node, JLABGW_JOB_NAME="jlabgw-two-slurm")
    env["JLABGW_CONFIG"] = str(config)
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            on_slurm = await new_session(client, "on slurm")
            started = await call(client, "start_new_session", experiment_name="on ge", profile="ge")
            assert not started.is_error, text_of(started)
            info = started.structured_content
            assert (info["backend"], info["cluster"]) == ("gridengine", "ge")
            on_ge = info["session_id"]
            assert await run(client, on_slurm, "import os; 'SLURM_JOB_ID' in os.environ") == (
                "True\n"
            )
            assert await run(client, on_ge, "import os; 'SGE_ROOT' in os.environ") == "True\n"

            listed = {s["session_id"]: s for s in (await status(client))["sessions"]}
            assert listed[on_slurm]["cluster"] == "default"
            assert listed[on_ge]["cluster"] == "ge"
            jobs = {j["resources"]: j for j in (await status(client))["jobs"]}
            assert set(jobs) == {"default", "@ge"}
            ge_job = jobs["@ge"]["id"]
            assert qstat_state(gridengine, ge_job) == "r"

            refused = await call(client, "start_new_session", experiment_name="x", profile="nope")
            assert refused.is_error
            assert "'nope' is not defined" in text_of(refused)
            assert "profiles there: ge" in text_of(refused)
    # the server's exit ends both clusters' jobs
    assert wait_until(lambda: qstat_state(gridengine, ge_job) == "", timeout=60)
