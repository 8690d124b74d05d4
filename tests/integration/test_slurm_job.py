"""The rendered batch script submitted to a real one-node SLURM (tests/slurm.py)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jlabgw.cluster.slurm.batch import render_batch_script
from tests.helpers import gateway_base, make_settings, wait_until
from tests.slurm import SlurmCluster

pytestmark = pytest.mark.integration


def squeue_state(cluster: SlurmCluster, job_id: str) -> str:
    done = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=10,
    )
    return done.stdout.strip()


def submit(cluster: SlurmCluster, tmp_path: Path, **settings: str) -> tuple[str, Path]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    script = tmp_path / "job.sbatch"
    job_name = settings.pop("job_name", None)
    made = make_settings(tmp_path, **settings)
    if job_name is not None:  # unvalidated: Settings refuses hostile names, the script quotes them
        made = made.model_copy(update={"job_name": job_name})
    script.write_text(render_batch_script(made))
    env = {**cluster.env, "HOME": str(home), "JLABGW_PYTHON": sys.executable}
    done = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=True,
    )
    job_id = done.stdout.strip().split(";")[0]
    return job_id, home / ".jlabgw" / "connections" / f"jlabgw-{job_id}.json"


def test_job_runs_on_slurm_and_scancel_cleans_up(slurm: SlurmCluster, tmp_path: Path) -> None:
    job_id, connection_file = submit(slurm, tmp_path, job_idle_timeout="0")
    try:
        assert wait_until(connection_file.exists, timeout=90), (
            (tmp_path / f"slurm-{job_id}.out").read_text()
            if (tmp_path / f"slurm-{job_id}.out").exists()
            else squeue_state(slurm, job_id)
        )
        assert squeue_state(slurm, job_id) == "RUNNING"
        assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
        info = json.loads(connection_file.read_text())
        assert info["job_id"] == job_id
        headers = {"Authorization": f"token {info['token']}"}
        base, verify = gateway_base(info)
        resp = httpx.get(f"{base}/api/kernelspecs", headers=headers, verify=verify)
        assert resp.status_code == 200
        script_text = (tmp_path / "job.sbatch").read_text()
        assert info["token"] not in script_text
    finally:
        subprocess.run(["scancel", job_id], env=slurm.env, timeout=30, check=False)
    assert wait_until(lambda: not connection_file.exists(), timeout=60)
    assert wait_until(lambda: squeue_state(slurm, job_id) == "", timeout=60)


def test_hostile_job_name_reaches_slurm_as_a_literal(slurm: SlurmCluster, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = f"exp $(touch {marker}) 'q' \"d\""
    job_id, connection_file = submit(slurm, tmp_path, job_name=name, job_idle_timeout="0")
    try:
        shown = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%j"],
            capture_output=True,
            text=True,
            env=slurm.env,
            timeout=10,
        ).stdout.strip()
        assert shown == name
        assert wait_until(connection_file.exists, timeout=90)
        assert not marker.exists()
    finally:
        subprocess.run(["scancel", job_id], env=slurm.env, timeout=30, check=False)
    assert wait_until(lambda: squeue_state(slurm, job_id) == "", timeout=60)
