"""GridEngineClient and the Grid Engine job script against a real one-host Grid Engine
(tests/gridengine.py), driven as jlabgw drives a cluster: over SSH, as the non-root test user,
on a login node whose sessions have SGE_ROOT and the cluster's ports (sshd's SetEnv, as a
site's profile would)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jlabgw.cluster.connection_file import read_connection_file
from jlabgw.cluster.gridengine.batch import GridEngineOptions, render_batch_script
from jlabgw.cluster.gridengine.client import GridEngineClient, hopeless_reason
from jlabgw.cluster.host import Host, LocalHost, host_for
from jlabgw.config import Settings
from jlabgw.errors import CommandError
from tests.gridengine import GridEngineCluster, user_dir
from tests.helpers import (
    gateway_base,
    listening_addresses,
    make_settings,
    pids_matching,
    wait_until,
)
from tests.sshd import SSHDServer

pytestmark = pytest.mark.integration

JOB_PYTHON = "/opt/jlabgw-test/job-venv/bin/python"


def login_settings(tmp_path: Path, login: SSHDServer, **extra: str) -> Settings:
    return make_settings(
        tmp_path,
        ssh_host=f"{login.user}@{login.host}:{login.port}",
        ssh_key=str(login.client_key),
        known_hosts=str(login.known_hosts),
        ssh_config=str(tmp_path / "no-ssh-config"),
        **extra,
    )


@pytest.fixture
def host(tmp_path: Path, ge_login: SSHDServer) -> Iterator[Host]:
    login = host_for(login_settings(tmp_path, ge_login))
    yield login
    login.close()


def write_script(host: Host, path: Path, body: str) -> str:
    host.write_bytes(str(path), f"#!/bin/bash\n{body}\n".encode(), mode=0o600)
    return str(path)


def test_submit_states_find_cancel(
    gridengine: GridEngineCluster, host: Host, request: pytest.FixtureRequest
) -> None:
    work = user_dir(gridengine, request.node.name)
    client = GridEngineClient(host)
    script = write_script(host, work / "sleep.sh", "sleep 300")
    out = ["-o", f"{work}/$JOB_ID.out", "-j", "y"]

    t0 = time.monotonic()
    job = client.submit(script, extra_args=["-N", "jlabgw-t1", "-l", "h_rt=0:05:00", *out])
    first = client.status(job)
    assert first.active
    assert first.state in ("PENDING", "CONFIGURING", "RUNNING"), first
    assert wait_until(lambda: client.status(job).running, timeout=30, interval=0.05)
    print(f"qsub -> running (seen over SSH): {time.monotonic() - t0:.2f} s; first {first}")

    stuck = client.submit(script, extra_args=["-N", "jlabgw-t1", "-pe", "smp", "99", *out])
    held = client.submit(script, extra_args=["-N", "jlabgw-held", "-h", *out])
    broken = client.submit(script, extra_args=["-N", "jlabgw-bad", "-o", "/root/nope"])
    try:
        running = client.status(job)
        assert (running.node, running.name) == (gridengine.hostname, "jlabgw-t1")
        assert running.seconds_left is not None
        assert 240 <= running.seconds_left <= 300, running
        assert running.reason == ""

        # the scheduler's own words, once a scheduling run has looked at the job
        assert wait_until(lambda: "cannot run in PE" in client.status(stuck).reason, 30, 0.2)
        pending = client.status(stuck)
        assert (pending.state, pending.node, pending.time_left) == ("PENDING", "", "")
        assert pending.reason.startswith("qw: ")
        assert hopeless_reason(pending) is None

        on_hold = client.status(held)
        assert on_hold.pending
        assert on_hold.reason.startswith("hqw: ")
        assert hopeless_reason(on_hold) is None

        assert wait_until(lambda: hopeless_reason(client.status(broken)) is not None, 30, 0.2)
        error = client.status(broken)
        assert error.reason.startswith("Eqw: ")
        assert "/root/nope" in (hopeless_reason(error) or "")

        assert {j.job_id for j in client.find("jlabgw-t1")} == {job, stuck}
        assert {j.job_id for j in client.find("jlabgw-t1", gridengine.user)} == {job, stuck}
        assert client.find("no-such-job-name") == []
        assert [j.job_id for j in client.running()] == [job]
    finally:
        for each in (job, stuck, held, broken):
            client.cancel(each)
    assert wait_until(lambda: client.status(job).state == "GONE", timeout=30, interval=0.1)
    client.cancel(job)  # already gone: not an error
    assert client.status("987654").state == "GONE"
    assert (work / f"{job}.out").exists()


def test_impossible_request_is_refused_at_submission(
    gridengine: GridEngineCluster, host: Host, request: pytest.FixtureRequest
) -> None:
    """``qsub -w e`` checks the request against the configuration: GE's way to refuse a job
    that could never run (SLURM's PartitionConfig) before it waits in the queue."""
    work = user_dir(gridengine, request.node.name)
    script = write_script(host, work / "x.sh", "true")
    with pytest.raises(CommandError, match="no suitable queues"):
        GridEngineClient(host).submit(script, extra_args=["-w", "e", "-pe", "smp", "99"])


def test_root_cannot_submit(
    gridengine: GridEngineCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``min_uid 1000``: why the tests submit as the test user."""
    for key, value in gridengine.client_env.items():
        monkeypatch.setenv(key, value)
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    with pytest.raises(CommandError):
        GridEngineClient(LocalHost()).submit(str(script), extra_args=["-o", "/dev/null"])


def test_job_script_brings_up_the_gateway(
    gridengine: GridEngineCluster, host: Host, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The rendered job script, submitted as jlabgw would: the supervisor starts the gateway
    with the job's Python, publishes a private connection file, and qdel ends it."""
    work = user_dir(gridengine, request.node.name)
    settings = make_settings(
        tmp_path,
        connection_dir=str(work / "connections"),
        remote_setup=f"export JLABGW_PYTHON={JOB_PYTHON}",
        job_idle_timeout="0",
    )
    options = GridEngineOptions(queue=gridengine.queue, h_rt="0:10:00", pe="smp", slots="2")
    script = str(work / "jlabgw.sh")
    host.write_bytes(script, render_batch_script(settings, options).encode(), mode=0o600)
    client = GridEngineClient(host)

    t0 = time.monotonic()
    job = client.submit(script, extra_args=["-o", f"{work}/jlabgw-$JOB_ID.log"])
    log = work / f"jlabgw-{job}.log"
    connection_file = work / "connections" / f"jlabgw-{job}.json"
    try:
        assert wait_until(lambda: client.status(job).running, timeout=30, interval=0.05)
        running_after = time.monotonic() - t0

        def published() -> bool:
            if not client.status(job).active:
                raise AssertionError(f"job ended: {log.read_text() if log.exists() else ''}")
            return read_connection_file(host, str(connection_file)) is not None

        assert wait_until(published, timeout=60, interval=0.1), log.read_text()
        print(
            f"qsub -> running {running_after:.2f} s, -> connection file "
            f"{time.monotonic() - t0:.2f} s (over SSH)"
        )
        status = client.status(job)
        assert status.name == settings.job_name
        assert status.seconds_left is not None
        assert 500 <= status.seconds_left <= 600

        info = read_connection_file(host, str(connection_file))
        assert info is not None
        assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(connection_file.parent.stat().st_mode) == 0o700
        headers = {"Authorization": f"token {info.token}"}
        base, verify = gateway_base(info)
        assert base.startswith("https://")  # the gateway's own certificate, pinned
        ok = httpx.get(f"{base}/api/kernelspecs", headers=headers, verify=verify)
        assert ok.status_code == 200
        assert httpx.get(f"{base}/api/kernelspecs", verify=verify).status_code == 401
        assert listening_addresses(info.port) == {"127.0.0.1"}
        # the gateway runs the job's Python, as the test user, under Grid Engine
        gateway = Path(f"/proc/{info.gateway_pid}")
        environ = (gateway / "environ").read_bytes().split(b"\0")
        assert f"JOB_ID={job}".encode() in environ
        assert b"NSLOTS=2" in environ
        assert gateway.stat().st_uid == connection_file.stat().st_uid != 0
        assert JOB_PYTHON in (gateway / "cmdline").read_bytes().decode(errors="replace")
        # the job id in the file is SLURM_JOB_ID's: the supervisor reads no JOB_ID yet
        assert json.loads(connection_file.read_text())["job_id"] in ("", job)

        # GE's per-job TMPDIR (tests/gridengine.py) is short enough for the kernels' sockets
        assert "too long for Unix socket paths" not in log.read_text()
        kernel = httpx.post(
            f"{base}/api/kernels",
            headers=headers,
            json={"name": "python3"},
            timeout=30,
            verify=verify,
        ).json()
        assert wait_until(lambda: bool(pids_matching(kernel["id"])), timeout=30)
    finally:
        client.cancel(job)
    assert wait_until(lambda: client.status(job).state == "GONE", timeout=30, interval=0.1)
    assert wait_until(lambda: not listening_addresses(info.port), timeout=30)
    # What qdel leaves behind (Grid Engine SIGKILLs the job: the supervisor cannot clean up)
    # is reported, not asserted; the cluster's teardown kills it.
    left = pids_matching(kernel["id"])
    print(f"after qdel: connection file {connection_file.exists()}, kernel pids {left}")
