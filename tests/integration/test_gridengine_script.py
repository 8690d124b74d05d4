"""``tests/cluster/gridengine.sh up|down`` as a user runs it by hand (issue 15): ``up`` prints a
config path as its last line, ``jlabgw doctor`` and ``jlabgw run`` work with that config alone
(qsub over SSH as the test user, the job's gateway through the same sshd), and ``down`` leaves
no process of it behind.

The script's cluster has a state dir of its own here (JLABGW_GRIDENGINE_DIR), not the default
/run/jlabgw-gridengine of a cluster brought up by hand; its root, ports, job ids and gid_range
are its own, so it runs beside the session's ``gridengine`` fixture. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gridengine import SCRIPT_JOB_VENV
from tests.gridengine import unavailable_reason as ge_unavailable_reason
from tests.helpers import PYTHON, wait_until
from tests.sshd import SSHDServer
from tests.sshd import unavailable_reason as sshd_unavailable_reason

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[1] / "cluster" / "gridengine.sh"


def unavailable_reason() -> str | None:
    reason = ge_unavailable_reason() or sshd_unavailable_reason()
    if reason:
        return f"tests/cluster/gridengine.sh cannot run here: {reason}"
    if not (SCRIPT_JOB_VENV / "bin" / "python").exists():
        return f"no job Python at {SCRIPT_JOB_VENV} (run tests/cluster/setup-system.sh)"
    return None


def script(command: str, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env={**os.environ, "JLABGW_GRIDENGINE_DIR": str(state)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jlabgw(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m jlabgw ARGS`` as a user of this machine: only the config says where the
    cluster is; notebooks and state in tmp dirs; no ssh-agent."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONIOENCODING": "utf-8",
        "JLABGW_NOTEBOOK_DIR": str(tmp_path / "notebooks"),
        "JLABGW_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [PYTHON, "-m", "jlabgw", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_of(state: Path, root: Path) -> dict[int, str]:
    """Live processes of the script's cluster: its command line names the state dir (the sshd)
    or its environment has the cluster's SGE_ROOT (daemons, shepherds, jobs, SSH sessions)."""
    marker = f"SGE_ROOT={root}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if running(pid) and (str(state) in cmdline or marker in environ):
            found[pid] = cmdline
    return found


def job_logs(state: Path) -> str:
    """The ends of the jobs' logs in the config's connection dir (for failure messages)."""
    home = Path(pwd.getpwnam(SSHDServer.user).pw_dir)
    texts = []
    for log in sorted((home / ".jlabgw" / f"connections-{state.name}").glob("*.log")):
        texts.append(f"\n--- {log}\n{log.read_text(errors='replace')[-3000:]}")
    return "".join(texts)


@pytest.fixture
def state() -> Iterator[Path]:
    """The script's state dir; whatever happens, ``down`` runs at the end."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    path = Path(f"/run/jlabgw-gridengine-pytest-{os.getpid()}")
    try:
        yield path
    finally:
        script("down", path, timeout=180)


def test_up_doctor_run_down(state: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    up = script("up", state, timeout=300)
    up_seconds = time.monotonic() - t0
    assert up.returncode == 0, up.stderr[-3000:]
    config = Path(up.stdout.strip().splitlines()[-1])
    assert config.is_file(), up.stdout
    assert config.is_relative_to(state)
    info = json.loads((state / "state.json").read_text())
    root = Path(info["root"])
    pids = info["pids"]
    assert set(pids) == {"qmaster", "execd", "sshd"}, info
    assert all(running(pid) for pid in pids.values()), info
    settings = config.read_text()
    assert 'backend = "gridengine"' in settings
    assert f'ssh_host = "jlabgw-test@127.0.0.1:{info["sshd_port"]}"' in settings
    assert f"compute_ssh_port = {info['sshd_port']}" in settings
    assert f". {SCRIPT_JOB_VENV}/bin/activate" in settings

    doctor = jlabgw(tmp_path, "doctor", "--config", str(config), timeout=180)
    print(doctor.stdout)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-2000:]
    checks = {}
    for line in doctor.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        if mark in ("✓", "!", "✗", "–") and rest:
            checks[rest.split("  ")[0].strip()] = mark
    assert checks["scheduler"] == "✓", doctor.stdout
    assert checks["remote python"] == "✓", doctor.stdout
    assert checks["ssh login"] == "✓", doctor.stdout
    for name, mark in checks.items():  # no agent here: a warning, not a failure
        assert mark in ("✓", "–") or (name, mark) == ("ssh agent", "!"), doctor.stdout

    t1 = time.monotonic()
    run = jlabgw(tmp_path, "run", "--config", str(config), "-c", "6*7", timeout=240)
    run_seconds = time.monotonic() - t1
    assert run.returncode == 0, run.stdout + run.stderr[-3000:] + job_logs(state)
    assert "42" in run.stdout.splitlines(), run.stdout
    assert "submitted batch job" in run.stderr
    assert list((tmp_path / "notebooks").glob("*.ipynb")), "jlabgw run recorded no notebook"

    # a job running at `down` (and doctor's compute node check, which needs one): qsub by hand
    # over the same SSH, as the test user
    sshd = SSHDServer(state / "sshd", port=info["sshd_port"])
    ssh_options = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    ssh_options += ["-o", f"UserKnownHostsFile={sshd.known_hosts}", "-i", str(sshd.client_key)]
    qsub = "qsub -terse -b y -o /dev/null -j y -N sleeper sleep 300"
    submitted = subprocess.run(
        ["ssh", *ssh_options, "-p", str(sshd.port), f"{sshd.user}@{sshd.host}", qsub],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert int(job) >= 1_000_000, job  # the script's job ids: not those of the tests' clusters
    job_dir = Path(f"/tmp/{job}.1.jlabgw.q")
    assert wait_until(job_dir.exists, timeout=30, interval=0.1), "the sleep job did not start"
    node = jlabgw(tmp_path, "doctor", "--config", str(config), timeout=180)
    assert node.returncode == 0, node.stdout + node.stderr[-2000:]
    assert f"✓ compute node      {sshd.user}@" in node.stdout, node.stdout

    assert processes_of(state, root)  # (the probe sees the cluster while it is up)
    authorized_keys = SSHDServer(state / "sshd").authorized_keys
    assert authorized_keys.exists()
    t2 = time.monotonic()
    down = script("down", state, timeout=180)
    down_seconds = time.monotonic() - t2
    assert down.returncode == 0, down.stderr[-3000:]
    print(
        f"gridengine.sh up {up_seconds:.2f} s, jlabgw run {run_seconds:.2f} s, "
        f"down {down_seconds:.2f} s"
    )
    assert not state.exists()
    assert not authorized_keys.exists()
    left = processes_of(state, root)
    assert not left, f"processes of the script's cluster left after down: {left}"
    assert not [name for name, pid in pids.items() if running(pid)], pids
    assert not job_dir.exists(), "the running job's directory was left in /tmp"

    again = script("down", state, timeout=60)  # idempotent: nothing to stop is fine
    assert again.returncode == 0, again.stderr
    assert "nothing to stop" in again.stderr
