"""upload_file, download_file and check_resources on a real SLURM job, over MCP stdio, with the
server on a "laptop" (everything through the login node's sshd, the job running as the
cluster user; tests/slurm.py login_env): files go over SFTP on the SSH connection to the
job's node, where the kernel's open() finds them (and back), within the allowed places, the
size cap and the overwrite rule, and nothing is left half-written after a failure on either
side; check_resources answers from the node over SSH without starting a kernel."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import uuid
from pathlib import Path

import pytest

from tests.helpers import gateway_kernel_ids
from tests.mcp_client import call, new_session, serve, status, text_of
from tests.slurm import JOB_VENV, SlurmCluster, login_env
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CAP = 1_000_000
PAYLOAD = bytes(range(256)) * 1500  # 384,000 bytes, every byte value


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".jlabgw-part-" in p.name]


async def test_files_and_resources_on_the_node_of_a_slurm_job(
    tmp_path: Path, slurm: SlurmCluster, login_node: SSHDServer
) -> None:
    if not (JOB_VENV / "bin" / "python").exists():
        pytest.skip(f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)")
    account = pwd.getpwnam(login_node.user)
    # a scratch filesystem of the cluster user's (JLABGW_TRANSFER_ROOT), and a folder of the
    # test's own in the kernel's working directory (the job's: the user's home)
    scratch = Path(f"/tmp/jlabgw-scratch-{uuid.uuid4().hex[:8]}")
    scratch.mkdir(mode=0o700)
    os.chown(scratch, account.pw_uid, account.pw_gid)
    sub = f"jlabgw-files-{uuid.uuid4().hex[:8]}"
    ro = f"{sub}/ro"  # a folder the cluster user cannot write in
    env = login_env(
        tmp_path,
        login_node,
        JLABGW_JOB_NAME="jlabgw-files",
        JLABGW_SPARE_KERNEL="false",  # the gateway's kernels: the session's only
        JLABGW_TRANSFER_MAX_BYTES=str(CAP),
        JLABGW_TRANSFER_ROOT=str(scratch),
    )
    notebooks = tmp_path / "notebooks"
    workdir: Path | None = None
    try:
        with (tmp_path / "server.log").open("w") as log:
            async with serve(tmp_path, log, **env) as client:
                sid = await new_session(client, "files on slurm")
                cwd = await call(
                    client, "execute_code", session_id=sid, code="import os\nos.getcwd()"
                )
                workdir = Path(text_of(cwd).strip().strip("'"))
                assert workdir == Path(account.pw_dir)  # the job's, where sbatch ran
                await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code=f"import os\nos.makedirs({ro!r})\nos.chmod({ro!r}, 0o555)",
                )
                job = (await status(client))["job"]
                conn_file = workdir / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
                kernels = await gateway_kernel_ids(conn_file)
                assert len(kernels) == 1

                # -- check_resources: asked on the node over SSH, no kernel started -------
                result = await call(client, "check_resources", session_id=sid)
                assert not result.is_error, text_of(result)
                info = result.structured_content
                assert info["asked"].startswith("the job's node ("), info
                assert info["asked"].endswith("over SSH, no kernel"), info
                assert info["backend"] == "slurm"
                assert info["job"]["id"] == job["id"]
                assert info["job"]["state"] == "RUNNING"
                assert 0 < info["job"]["seconds_left"] <= 600
                assert info["cpus"]["count"] >= 1
                assert info["memory"]["total_gib"] > 0
                assert info["disk"]["path"] == str(workdir)  # the session kernel's
                assert info["disk"]["free_gib"] > 0
                default = await call(client, "check_resources")
                assert not default.is_error, text_of(default)
                assert "no kernel" in default.structured_content["asked"]
                assert await gateway_kernel_ids(conn_file) == kernels  # none came, none went

                # -- upload: where the kernel's open() finds it, every byte ----------------
                (notebooks / "data").mkdir(parents=True)
                (notebooks / "data" / "in.bin").write_bytes(PAYLOAD)
                up = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="data/in.bin",
                    remote_path=f"{sub}/in.bin",
                )
                assert not up.is_error, text_of(up)
                assert up.structured_content["to"] == str(workdir / sub / "in.bin")
                assert up.structured_content["bytes"] == len(PAYLOAD)
                check = await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code=f"import hashlib\nhashlib.sha256(open({f'{sub}/in.bin'!r}, 'rb').read())"
                    ".hexdigest()",
                )
                assert hashlib.sha256(PAYLOAD).hexdigest() in text_of(check)

                # -- no overwrite unless asked -----------------------------------------------
                (notebooks / "data" / "in.bin").write_bytes(b"second version")
                again = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="data/in.bin",
                    remote_path=f"{sub}/in.bin",
                )
                assert again.is_error
                assert "exists on" in text_of(again)
                assert "pass overwrite=true to replace it" in text_of(again)
                assert (workdir / sub / "in.bin").read_bytes() == PAYLOAD
                replaced = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="data/in.bin",
                    remote_path=f"{sub}/in.bin",
                    overwrite=True,
                )
                assert not replaced.is_error, text_of(replaced)
                assert (workdir / sub / "in.bin").read_bytes() == b"second version"
                assert (workdir / sub / "in.bin").stat().st_uid == account.pw_uid

                # -- absolute: under the cluster home and the transfer root ------------------
                for remote in (f"~/{sub}/home.bin", str(scratch / "deep" / "s.bin")):
                    ok = await call(
                        client,
                        "upload_file",
                        session_id=sid,
                        local_path="data/in.bin",
                        remote_path=remote,
                    )
                    assert not ok.is_error, (remote, text_of(ok))
                assert (workdir / sub / "home.bin").read_bytes() == b"second version"
                assert (scratch / "deep" / "s.bin").read_bytes() == b"second version"

                # -- download: round trip, content checked -----------------------------------
                await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code=f"open({sub + '/out.bin'!r}, 'wb').write(bytes(range(256)) * 1500)",
                )
                down = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path=f"{sub}/out.bin",
                    local_path="results/out.bin",
                )
                assert not down.is_error, text_of(down)
                assert (notebooks / "results" / "out.bin").read_bytes() == PAYLOAD
                assert down.structured_content["from"] == str(workdir / sub / "out.bin")
                twice = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path=f"{sub}/in.bin",
                    local_path="results/out.bin",
                )
                assert twice.is_error
                assert "exists; pass overwrite=true" in text_of(twice)
                assert (notebooks / "results" / "out.bin").read_bytes() == PAYLOAD

                # -- refusals: outside the allowed places, missing, over the cap -------------
                for tool, args, message in (
                    (
                        "upload_file",
                        {"local_path": "data/in.bin", "remote_path": "/etc/jlabgw-test"},
                        "outside the places files may go",
                    ),
                    (
                        "upload_file",
                        {"local_path": "data/in.bin", "remote_path": "../../../../tmp/x"},
                        "outside the places files may go",
                    ),
                    (
                        "download_file",
                        {"remote_path": "/etc/hostname", "local_path": "h.txt"},
                        "outside the places files may go",
                    ),
                    (
                        "download_file",
                        {"remote_path": f"{sub}/missing.bin", "local_path": "m.bin"},
                        "no file at",
                    ),
                    (
                        "upload_file",
                        {"local_path": "/etc/hostname", "remote_path": "x"},
                        "outside the notebook directory",
                    ),
                ):
                    bad = await call(client, tool, session_id=sid, **args)
                    assert bad.is_error, args
                    assert message in text_of(bad), (args, text_of(bad))
                assert not Path("/etc/jlabgw-test").exists()
                assert not (notebooks / "h.txt").exists()

                (notebooks / "big.bin").write_bytes(b"\0" * (CAP + 1))
                big = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="big.bin",
                    remote_path=f"{sub}/big.bin",
                )
                assert big.is_error
                assert "over the transfer cap of 1,000,000 bytes" in text_of(big)
                assert not (workdir / sub / "big.bin").exists()
                await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code=f"open({sub + '/big-out.bin'!r}, 'wb').write(b'x' * {CAP + 1})",
                )
                big = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path=f"{sub}/big-out.bin",
                    local_path="big-out.bin",
                )
                assert big.is_error
                assert "over the transfer cap" in text_of(big)
                assert not (notebooks / "big-out.bin").exists()

                # -- a failed transfer leaves nothing, on either side --------------------------
                ro = await call(
                    client,
                    "upload_file",
                    session_id=sid,
                    local_path="data/in.bin",
                    remote_path=f"{sub}/ro/x.bin",
                )
                assert ro.is_error
                assert "ermission denied" in text_of(ro), text_of(ro)
                assert list((workdir / sub / "ro").iterdir()) == []
                blocked = await call(
                    client,
                    "download_file",
                    session_id=sid,
                    remote_path=f"{sub}/out.bin",
                    local_path="data/in.bin/out.bin",  # under a file: no folder there
                )
                assert blocked.is_error
                assert "cannot create" in text_of(blocked), text_of(blocked)
                assert leftovers(workdir / sub) == []
                assert leftovers(notebooks) == []
                assert leftovers(notebooks / "data") == []
                assert leftovers(notebooks / "results") == []
                assert await gateway_kernel_ids(conn_file) == kernels
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if workdir is not None and (workdir / sub).exists():
            (workdir / sub / "ro").chmod(0o755)
            shutil.rmtree(workdir / sub, ignore_errors=True)
