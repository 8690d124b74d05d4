"""upload_file, download_file and check_resources on a real Grid Engine job over MCP stdio (the
server on a "laptop", qsub through the login node's sshd, the node reached through the same
sshd): the batch machinery's node access is the scheduler's no matter which, so one round trip
with a content check, one refusal and the probe with no kernel started are enough here; the
full set of rules runs on SLURM (test_notebook_tools_slurm_files.py)."""

from __future__ import annotations

import pwd
import shutil
import uuid
from pathlib import Path

import pytest

from tests.gridengine import GridEngineCluster, ge_env
from tests.helpers import gateway_kernel_ids
from tests.mcp_client import call, new_session, serve, status, text_of
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PAYLOAD = bytes(range(256)) * 700


async def test_files_and_resources_on_a_grid_engine_job(
    tmp_path: Path, gridengine: GridEngineCluster, ge_login: SSHDServer
) -> None:
    env = ge_env(tmp_path, ge_login, JLABGW_JOB_NAME="jlabgw-ge-files", JLABGW_SPARE_KERNEL="0")
    sub = f"jlabgw-ge-files-{uuid.uuid4().hex[:8]}"
    notebooks = tmp_path / "notebooks"
    workdir: Path | None = None
    try:
        with (tmp_path / "server.log").open("w") as log:
            async with serve(tmp_path, log, **env) as client:
                sid = await new_session(client, "files on grid engine")
                cwd = await call(
                    client, "execute_code", session_id=sid, code="import os\nos.getcwd()"
                )
                workdir = Path(text_of(cwd).strip().strip("'"))
                job = (await status(client))["job"]
                home = Path(pwd.getpwnam(ge_login.user).pw_dir)
                conn_file = home / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
                kernels = await gateway_kernel_ids(conn_file)
                assert len(kernels) == 1

                probe = await call(client, "check_resources", session_id=sid)
                assert not probe.is_error, text_of(probe)
                info = probe.structured_content
                assert info["backend"] == "gridengine"
                assert info["asked"].endswith("over SSH, no kernel"), info["asked"]
                assert info["job"]["id"] == job["id"]
                assert info["disk"]["path"] == str(workdir)
                assert await gateway_kernel_ids(conn_file) == kernels

                notebooks.mkdir(exist_ok=True)
                (notebooks / "in.bin").write_bytes(PAYLOAD)
                up = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="in.bin",
                    remote_path=f"{sub}/in.bin",
                )
                assert not up.is_error, text_of(up)
                assert (workdir / sub / "in.bin").read_bytes() == PAYLOAD
                size = await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code=f"len(open({f'{sub}/in.bin'!r}, 'rb').read())",
                )
                assert text_of(size).strip() == str(len(PAYLOAD))
                down = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path=f"{sub}/in.bin",
                    local_path="back.bin",
                )
                assert not down.is_error, text_of(down)
                assert (notebooks / "back.bin").read_bytes() == PAYLOAD
                again = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="in.bin",
                    remote_path=f"{sub}/in.bin",
                )
                assert again.is_error
                assert "pass overwrite=true" in text_of(again)
                outside = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path="/etc/hostname",
                    local_path="h.txt",
                )
                assert outside.is_error
                assert "outside the places files may go" in text_of(outside)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir / sub, ignore_errors=True)
