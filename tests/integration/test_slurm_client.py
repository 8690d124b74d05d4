"""SlurmClient against the real one-node SLURM (tests/slurm.py), run through LocalHost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jlabgw.cluster.host import LocalHost
from jlabgw.cluster.slurm.client import SlurmClient, hopeless_reason
from tests.helpers import wait_until
from tests.slurm import SlurmCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def client(slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmClient:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))  # LocalHost runs commands in our env
    return SlurmClient(LocalHost())


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/%j.out\n{body}\n")
    return str(path)


def test_submit_track_find_cancel(client: SlurmClient, tmp_path: Path) -> None:
    job = client.submit(
        script(tmp_path, "run.sh", "sleep 60"),
        extra_args=["--job-name=jlabgw-t1", "--time=00:05:00"],
    )
    stuck = client.submit(
        script(tmp_path, "stuck.sh", "sleep 60"),
        extra_args=["--job-name=jlabgw-t1", "--cpus-per-task=512"],
    )
    try:
        assert wait_until(lambda: client.status(job).running, timeout=30)
        running = client.status(job)
        assert running.node
        assert running.time_left
        assert running.time_left != "UNLIMITED"

        pending = client.status(stuck)
        assert pending.pending
        assert pending.reason == "PartitionConfig"
        assert hopeless_reason(pending)

        user = os.environ.get("USER") or "root"
        found = {j.job_id for j in client.find("jlabgw-t1", user)}
        assert found == {job, stuck}
        assert {j.job_id for j in client.find("jlabgw-t1")} == {job, stuck}
        assert client.find("no-such-job-name") == []
    finally:
        client.cancel(job)
        client.cancel(stuck)
    assert wait_until(lambda: not client.status(job).active, timeout=30)
    assert client.status(job).state in ("CANCELLED", "GONE")
    assert client.status("987654").state == "GONE"  # unknown to squeue, sacct disabled here
