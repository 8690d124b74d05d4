"""The rendered batch script, run by bash as a SLURM batch step would run it (no SLURM here:
the scheduler's part is tested with the SLURM backend)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jlabgw.cluster.slurm.batch import render_batch_script
from tests.helpers import (
    cmdlines,
    gateway_base,
    listening_addresses,
    make_settings,
    pids_matching,
    process_environ,
    wait_until,
)

pytestmark = pytest.mark.integration


def start_job(tmp_path: Path, job_id: str, **settings: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "job.sbatch"
    script.write_text(render_batch_script(make_settings(tmp_path, **settings)))
    home = tmp_path / "home"
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(tmp_path / "tmp"),
        "SLURM_JOB_ID": job_id,
        "JLABGW_PYTHON": sys.executable,
    }
    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return proc, home / ".jlabgw" / "connections" / f"jlabgw-{job_id}.json"


def test_job_publishes_a_private_connection_file_and_cleans_up(tmp_path: Path) -> None:
    proc, connection_file = start_job(tmp_path, "4242", job_idle_timeout="0")
    try:
        assert wait_until(connection_file.exists, timeout=60), (tmp_path / "job.log").read_text()
        assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(connection_file.parent.stat().st_mode) == 0o700
        info = json.loads(connection_file.read_text())
        assert info["job_id"] == "4242"
        assert info["host"]
        headers = {"Authorization": f"token {info['token']}"}
        base, verify = gateway_base(info)
        assert base.startswith("https://")  # the gateway's own certificate, pinned
        ok = httpx.get(f"{base}/api/kernelspecs", headers=headers, verify=verify)
        assert ok.status_code == 200
        assert httpx.get(f"{base}/api/kernelspecs", verify=verify).status_code == 401
        assert listening_addresses(int(info["port"])) == {"127.0.0.1"}
        # the token is on no command line, and not in the kernels' environment
        assert not [c for c in cmdlines().values() if info["token"] in c]
        kernel = httpx.post(
            f"{base}/api/kernels",
            headers=headers,
            json={"name": "python3"},
            timeout=30,
            verify=verify,
        ).json()
        assert wait_until(lambda: bool(pids_matching(kernel["id"])), timeout=30)
        kernel_pid = pids_matching(kernel["id"])[0]
        assert info["token"] not in process_environ(kernel_pid)
        work_dirs = list((tmp_path / "tmp").glob("jlabgw-4242.*"))
        assert len(work_dirs) == 1
        assert stat.S_IMODE(work_dirs[0].stat().st_mode) == 0o700

        os.kill(proc.pid, signal.SIGTERM)  # what scancel / walltime sends
        assert proc.wait(timeout=60) == 0
        assert not connection_file.exists()
        assert not work_dirs[0].exists()
        assert wait_until(lambda: not pids_matching(kernel["id"]), timeout=30)
        assert not pids_matching(str(work_dirs[0]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_job_ends_itself_when_no_kernel_is_left(tmp_path: Path) -> None:
    proc, connection_file = start_job(tmp_path, "4343", job_idle_timeout="2")
    try:
        assert wait_until(connection_file.exists, timeout=60)
        assert proc.wait(timeout=60) == 0  # no kernel ever started: idle for 2 s, then out
        assert not connection_file.exists()
        assert "no kernel for 2 s; ending the job" in (tmp_path / "job.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
