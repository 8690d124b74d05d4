"""The notebook tools on the slurm backend (a real SLURM, the node reached through the test
sshd), over MCP stdio: check_resources answered on the job's node over SSH with no kernel
started, with the job's id and time left; execute_scratch in a throwaway kernel on the job;
start_notebook and read_notebook; and a relative remote path refused when the kernel's
working directory cannot be read (here the job runs as root, the node's SSH user is not).
The transfers themselves: test_notebook_tools_slurm_files.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.helpers import gateway_kernel_ids
from tests.mcp_client import call, new_session, serve, status, text_of
from tests.slurm import SlurmCluster, slurm_env
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_notebook_tools_on_a_slurm_job(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(
        tmp_path,
        slurm,
        sshd,
        JLABGW_JOB_NAME="jlabgw-tools",
        JLABGW_EXEC_WAIT="20",
        JLABGW_SPARE_KERNEL="false",  # the gateway's kernels: the session's, and probes
    )
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "tools on slurm")
            where = await call(
                client, "execute_code", session_id=sid, code="import socket\nsocket.gethostname()"
            )
            node_host = text_of(where).strip().strip("'")
            job = (await status(client))["job"]
            conn_file = tmp_path / "home" / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
            before = await gateway_kernel_ids(conn_file)
            assert before == {(await status(client))["sessions"][0]["kernel_id"]}

            result = await call(client, "check_resources", session_id=sid)
            assert not result.is_error, text_of(result)
            info = result.structured_content
            assert info["backend"] == "slurm"
            assert info["asked"].startswith("the job's node ("), info["asked"]
            assert info["asked"].endswith("over SSH, no kernel"), info["asked"]
            assert await gateway_kernel_ids(conn_file) == before  # none started for it
            assert info["host"] == node_host
            assert info["job"]["id"] == job["id"]
            assert info["job"]["state"] == "RUNNING"
            assert info["job"]["seconds_left"] is not None
            assert 0 < info["job"]["seconds_left"] <= 600
            assert info["cpus"]["count"] >= 1
            assert info["memory"]["total_gib"] > 0
            assert info["disk"]["free_gib"] > 0
            for _ in range(100):  # the probe's kernel is shut down after it answered
                if await gateway_kernel_ids(conn_file) <= before:
                    break
                await anyio.sleep(0.1)
            assert await gateway_kernel_ids(conn_file) <= before

            scratch = await call(
                client, "execute_scratch", code="import socket\nsocket.gethostname()"
            )
            assert not scratch.is_error, text_of(scratch)
            assert node_host in text_of(scratch)
            assert "throwaway kernel, now shut down" in text_of(scratch)

            await call(
                client, "add_markdown", session_id=sid, markdown="# on the cluster", cell_index=0
            )
            page = await call(client, "read_notebook", session_id=sid)
            assert "--- cell 0 (markdown) ---\n# on the cluster\n" in text_of(page)
            assert "--- cell 1 (code, [1]) ---" in text_of(page)
            again = await call(client, "start_notebook", notebook_path="tools_on_slurm.ipynb")
            assert again.structured_content["session_id"] == sid

            (tmp_path / "notebooks" / "in.txt").write_text("x")
            refused = await call(
                client, "upload_file", session_id=sid, local_path="in.txt", remote_path="in.txt"
            )
            assert refused.is_error
            assert "cannot find the working directory of session" in text_of(refused)
            assert "an absolute remote_path under" in text_of(refused)
