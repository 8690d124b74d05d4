"""JLABGW_BACKEND=slurm end to end: MCP over stdio -> sbatch on a real SLURM -> Kernel Gateway
in the job -> SSH tunnel to the "compute node" (this machine, via the test sshd) -> notebook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.helpers import wait_until
from tests.integration.test_mcp_stdio import call, new_session, serve, status, text_of
from tests.slurm import SlurmCluster
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def slurm_env(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer, **extra: str
) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "JLABGW_BACKEND": "slurm",
        "SLURM_CONF": str(slurm.conf),
        "JLABGW_COMPUTE_SSH_PORT": str(sshd.port),
        "JLABGW_SSH_USER": sshd.user,
        "JLABGW_SSH_KEY": str(sshd.client_key),
        "JLABGW_KNOWN_HOSTS": str(sshd.known_hosts),
        "JLABGW_SSH_CONFIG": str(tmp_path / "no-ssh-config"),
        "JLABGW_PYTHON": sys.executable,
        "JLABGW_SLURM_TIME": "00:10:00",
        "JLABGW_JOB_IDLE_TIMEOUT": "0",
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


async def test_session_on_a_slurm_job(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-e2e")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "on the cluster")
            out = await call(
                client,
                "execute_code",
                session_id=sid,
                code="import socket, os; print(socket.gethostname()); 6 * 7",
            )
            assert not out.is_error, text_of(out)
            assert text_of(out).endswith("42\n")
            state = await status(client)
            assert state["backend"] == "slurm"
            job = state["job"]
            assert job["state"] == "RUNNING"
            assert job["node"]
            assert job["id"]
            assert squeue(slurm, job["id"]) == "RUNNING"
            conn_file = tmp_path / "home" / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
            assert conn_file.stat().st_mode & 0o777 == 0o600
            token = json.loads(conn_file.read_text())["token"]
            assert token not in json.dumps(state)
            notebook = state["sessions"][0]["notebook_path"]
    # client gone: the job is cancelled (JLABGW_KEEP_JOB unset), its connection file removed
    assert wait_until(lambda: squeue(slurm, job["id"]) == "", timeout=60)
    assert wait_until(lambda: not conn_file.exists(), timeout=30)
    nb = nbformat.read(notebook, as_version=4)
    assert nb.cells[0].outputs[-1]["data"]["text/plain"] == "42"
    assert token not in (tmp_path / "server.log").read_text()


async def test_a_job_that_cannot_fit_fails_fast_with_the_reason(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-huge", JLABGW_SLURM_CPUS="512")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            result = await call(client, "start_new_session", experiment_name="too big")
            assert result.is_error
            message = text_of(result)
            assert "cannot start" in message
            assert "PartitionConfig" in message
            assert "cancelled" in message
    listed = subprocess.run(
        ["squeue", "-h", "-n", "jlabgw-huge", "-o", "%i"],
        capture_output=True,
        text=True,
        env=slurm.env,
        timeout=10,
    )
    assert listed.stdout.strip() == ""


async def test_job_ended_mid_session_then_resume_on_a_new_job(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-ended")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "fragile")
            first = await call(client, "execute_code", session_id=sid, code="x = 41")
            assert not first.is_error, text_of(first)
            state = await status(client)
            old_job = state["job"]["id"]
            notebook = Path(state["sessions"][0]["notebook_path"])

            subprocess.run(["scancel", old_job], env=slurm.env, timeout=30, check=True)
            assert wait_until(lambda: squeue(slurm, old_job) == "", timeout=60)

            lost = await call(client, "execute_code", session_id=sid, code="x + 1")
            assert lost.is_error
            message = text_of(lost)
            assert f"batch job {old_job} is no longer running" in message
            assert "kernel and its variables are gone" in message
            assert f"notebook_path='{notebook.name}'" in message
            gone = await call(client, "execute_code", session_id=sid, code="x")
            assert "unknown session_id" in text_of(gone)

            resumed = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="again",
                notebook_path=notebook.name,
            )
            assert not resumed.is_error, text_of(resumed)
            info = resumed.structured_content
            assert info["executed_cells"] == 2  # "x = 41", and the cell the lost call added
            assert info["failed_cells"] == []
            out = await call(client, "execute_code", session_id=info["session_id"], code="x + 1")
            assert text_of(out) == "42\n"
            new_job = (await status(client))["job"]["id"]
            assert new_job != old_job
    assert wait_until(lambda: squeue(slurm, new_job) == "", timeout=60)
    cells = nbformat.read(notebook, as_version=4).cells
    assert [c.source for c in cells] == ["x = 41", "x + 1", "x + 1"]
    assert [c.execution_count for c in cells] == [1, 2, 3]  # each ran once, on the new job
