"""BatchJob on SLURM against a fake login node (the one faked boundary: the Host that runs sbatch,
squeue and scancel and holds the files). The SLURM output parsers and the batch script are real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from jlabgw.cluster import job as job_module
from jlabgw.cluster.connection_file import JobFiles
from jlabgw.cluster.host import FileStat, Host
from jlabgw.cluster.job import BatchJob
from jlabgw.cluster.slurm.scheduler import SlurmScheduler
from jlabgw.cluster.ssh.connection import CommandResult
from jlabgw.config import Settings
from jlabgw.errors import BackendError
from jlabgw.processes import this_owner
from tests.helpers import make_settings

pytestmark = pytest.mark.anyio

CONN_DIR = "/home/u/.jlabgw/connections"


class FakeLoginNode(Host):
    """sbatch/squeue/scancel on a scripted queue: each job walks through ``timeline`` (one
    (state, reason) per squeue call, staying at the last)."""

    where = "fake login node"

    def __init__(self, timeline: list[tuple[str, str]] | None = None) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.timeline = timeline or [("RUNNING", "None")]
        self.jobs: dict[str, dict[str, str]] = {}
        self.calls: dict[str, int] = {}
        self.commands: list[list[str]] = []
        self._next_id = 100

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        argv = list(argv)
        self.commands.append(argv)
        while argv[0] == "env" or "=" in argv[0]:  # env VAR=value squeue ...
            argv = argv[1:]
        if argv[0] == "sbatch":
            script = self.files[argv[-1]][0].decode()
            name = re.search(r"^#SBATCH --job-name=(\S+)$", script, re.MULTILINE)
            job_id = str(self._next_id)
            self._next_id += 1
            self.jobs[job_id] = {"name": name[1] if name else "?", "state": "PENDING", "reason": ""}
            return CommandResult(argv, 0, f"{job_id}\n", "")
        if argv[0] == "squeue":
            asked = argv[argv.index("-j") + 1].split(",")
            known = [job_id for job_id in asked if job_id in self.jobs]
            if not known and len(asked) == 1:
                return CommandResult(argv, 1, "", "slurm_load_jobs error: Invalid job id")
            lines = []
            for job_id in known:
                job = self.jobs[job_id]
                if "fixed" not in job:
                    n = self.calls[job_id] = self.calls.get(job_id, -1) + 1
                    job["state"], job["reason"] = self.timeline[min(n, len(self.timeline) - 1)]
                fields = {
                    "i": job_id,
                    "T": job["state"],
                    "r": job["reason"],
                    "N": "node1",
                    "L": "00:04:00",
                    "S": job.get("start", "N/A"),
                    "j": job["name"],
                }
                fmt = argv[argv.index("-o") + 1]
                lines.append("|".join(fields[f.lstrip("%")] for f in fmt.split("|")) + "\n")
            return CommandResult(argv, 0, "".join(lines), "")
        if argv[:2] == ["rm", "-f"]:
            for path in argv[2:]:
                self.files.pop(path, None)
            return CommandResult(argv, 0, "", "")
        if argv[0] == "sacct":
            return CommandResult(argv, 0, "", "")
        if argv[0] == "scancel":
            self.jobs[argv[1]].update(state="CANCELLED", fixed="1")
            return CommandResult(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def read_bytes(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path][0]

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self.files[path] = (data, mode)

    def uid(self) -> int:
        return 1000  # the files' FileStat says no owner: only modes are checked

    def stat(self, path: str) -> FileStat | None:
        if path not in self.files:
            return None
        data, mode = self.files[path]
        return FileStat(len(data), mode, 0.0)


def publish(host: FakeLoginNode, job_id: str, **fields: object) -> None:
    info = {"host": "node1", "port": 5000, "token": "t0k3n-t0k3n", "started_at": 1.0, **fields}
    host.files[f"{CONN_DIR}/jlabgw-{job_id}.json"] = (json.dumps(info).encode(), 0o600)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, job_name="nbjob", queue_timeout="30")


def make_job(host: FakeLoginNode, settings: Settings, tmp_path: Path) -> BatchJob:
    return BatchJob(
        SlurmScheduler(host), settings, JobFiles(CONN_DIR), tmp_path / "state" / "slurm-nbjob.json"
    )


async def no_progress(done: float, total: float | None, message: str) -> None:
    return None


def test_submit_writes_a_private_script_and_records_the_job(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode()
    job = make_job(host, settings, tmp_path)
    assert job.reuse_or_submit() == "100"
    script, mode = host.files[f"{CONN_DIR}/nbjob.sbatch"]
    assert mode == 0o600
    assert b"#SBATCH --job-name=nbjob" in script
    assert host.commands[-2] == [
        "sbatch",
        "--parsable",
        f"--output={CONN_DIR}/jlabgw-%j.log",
        f"{CONN_DIR}/nbjob.sbatch",
    ]
    recorded = json.loads((tmp_path / "state" / "slurm-nbjob.json").read_text())
    assert recorded == {"job_id": "100", "where": "fake login node", "holders": [this_owner()]}


def test_the_recorded_job_is_reused_only_while_active_under_our_name(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode()
    make_job(host, settings, tmp_path).reuse_or_submit()
    assert make_job(host, settings, tmp_path).reuse_or_submit() == "100"  # still running

    host.jobs["100"].update(name="someone-else", fixed="1")
    assert make_job(host, settings, tmp_path).reuse_or_submit() == "101"

    host.jobs["101"].update(state="COMPLETED", fixed="1")
    job = make_job(host, settings, tmp_path)
    assert job.reuse_or_submit() == "102"
    job.forget()
    assert job.job_id is None
    assert not (tmp_path / "state" / "slurm-nbjob.json").exists()


async def test_a_pending_reason_is_reported_until_the_job_runs(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode([("PENDING", "Priority"), ("PENDING", "Resources"), ("RUNNING", "None")])
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    heard: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        heard.append(message)

    status = await job.wait_running(progress)
    assert status.running
    assert status.node == "node1"
    assert [m.split(" (")[0] for m in heard] == [
        "job 100 pending: Priority",
        "job 100 pending: Resources",
    ]


async def test_a_job_that_cannot_start_is_cancelled_with_the_reason(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode([("PENDING", "PartitionConfig")])
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    with pytest.raises(BackendError, match=r"exceeds what the partition allows.*cancelled"):
        await job.wait_running(no_progress)
    assert ["scancel", "100"] in host.commands


async def test_the_gateway_is_read_once_published_and_a_foreign_file_is_skipped(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode()
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    host.files[f"{CONN_DIR}/jlabgw-100.json"] = (b'{"something": "else"}', 0o600)
    heard: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        heard.append(message)
        publish(host, "100", port=6001)  # the gateway answers while we wait

    info = await job.wait_gateway(progress)
    assert (info.host, info.port, info.token) == ("node1", 6001, "t0k3n-t0k3n")
    assert heard == ["job 100 running; waiting for its gateway"]


async def test_a_job_that_ends_before_its_gateway_answers_names_its_log(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "ALIVE_CHECK_EVERY", 0.0)
    host = FakeLoginNode([("RUNNING", "None"), ("FAILED", "None")])
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    await job.wait_running(no_progress)
    with pytest.raises(BackendError, match=rf"ended \(FAILED\).*{CONN_DIR}/jlabgw-100\.log"):
        await job.wait_gateway(no_progress)


def test_a_replaced_gateway_is_told_from_the_same_one(settings: Settings, tmp_path: Path) -> None:
    host = FakeLoginNode()
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    publish(host, "100", port=5000, started_at=1.0)
    assert job.gateway_replaced((5000, 1.0)) is None  # ours: only the tunnel dropped

    # a new gateway, which may well have found the same port free
    publish(host, "100", port=5000, started_at=2.0, restarts=1, previous_exit="it was OOM-killed")
    why = job.gateway_replaced((5000, 1.0))
    assert why == (
        "it was OOM-killed in batch job 100, and the job started a new gateway (restart 1)"
    )

    del host.files[f"{CONN_DIR}/jlabgw-100.json"]
    host.jobs["100"].update(state="TIMEOUT", fixed="1")
    assert job.gateway_replaced((5000, 1.0)) == ""  # the job itself ended
    assert job.status is not None
    assert job.status.state == "TIMEOUT"


def test_the_walltime_notice_comes_within_the_warning_time(
    settings: Settings, tmp_path: Path
) -> None:
    host = FakeLoginNode()
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    job.refresh()  # 00:04:00 left
    assert job.walltime_notice(3 * 60) is None
    notice = job.walltime_notice(5 * 60)
    assert notice is not None
    assert notice.startswith("batch job 100 reaches its walltime in about 4 min (00:04:00 left)")


def test_a_stale_connection_file_of_a_reused_job_id_is_removed_at_submission(
    settings: Settings, tmp_path: Path
) -> None:
    """Job ids come again (a reinstalled scheduler); a killed job leaves its connection file.
    What an earlier job of the same id published must not be taken for the new gateway."""
    host = FakeLoginNode()
    publish(host, "100", port=1111)  # left by an earlier job 100
    job = make_job(host, settings, tmp_path)
    assert job.reuse_or_submit() == "100"
    assert f"{CONN_DIR}/jlabgw-100.json" not in host.files
    assert host.commands.index(["rm", "-f", f"{CONN_DIR}/jlabgw-100.json"]) > [
        c[0] for c in host.commands
    ].index("sbatch")


async def test_the_progress_names_slurms_start_estimate_while_pending(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """squeue's %S of a pending job is the backfill scheduler's start estimate, asked in epoch
    seconds (the login node's zone does not matter); "N/A" while there is none."""
    monkeypatch.setattr(job_module, "_wall", lambda: 1_800_000_000.0)
    host = FakeLoginNode([("PENDING", "Resources"), ("PENDING", "Resources"), ("RUNNING", "None")])
    job = make_job(host, settings, tmp_path)
    job.reuse_or_submit()
    heard: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        heard.append(message)
        host.jobs["100"]["start"] = str(1_800_000_000 + 12 * 60)  # backfill found a slot

    await job.wait_running(progress)
    squeue = next(c for c in host.commands if "squeue" in c)
    assert squeue[:2] == ["env", "SLURM_TIME_FORMAT=%s"]
    assert [m.split(" (")[0] for m in heard] == [
        "job 100 pending: Resources",
        "job 100 pending: Resources; SLURM expects it to start at 08:12 UTC, in about 12 min",
    ]


def test_one_squeue_covers_every_active_job_on_the_login_node(
    settings: Settings, tmp_path: Path
) -> None:
    """Two jobs of one server on one login node (a resource shape beside the default job):
    one status query asks for both, and the other's status is then fresh without a query."""
    host = FakeLoginNode([("PENDING", "Priority")])
    first = make_job(host, settings, tmp_path)
    first.reuse_or_submit()
    shaped = BatchJob(
        SlurmScheduler(host),
        make_settings(tmp_path, job_name="nbjob-gpu"),
        JobFiles(CONN_DIR),
        tmp_path / "state" / "slurm-nbjob-gpu.json",
    )
    shaped.reuse_or_submit()
    shaped.refresh()
    host.commands.clear()

    first.refresh()
    squeues = [c for c in host.commands if "squeue" in c]
    assert len(squeues) == 1
    assert squeues[0][squeues[0].index("-j") + 1] == "100,101"
    assert shaped.status is not None
    assert shaped.status.job_id == "101"
    assert shaped.refresh(max_age=30).reason == "Priority"
    assert [c for c in host.commands if "squeue" in c] == squeues  # served by the first query

    host.jobs["101"].update(state="COMPLETED", fixed="1")
    shaped.refresh()
    host.commands.clear()
    first.refresh()  # an ended job is no longer asked about
    assert [c[c.index("-j") + 1] for c in host.commands if "squeue" in c] == ["100"]


def test_a_job_the_shared_query_no_longer_lists_is_asked_about_alone(
    settings: Settings, tmp_path: Path
) -> None:
    """What squeue no longer lists may have ended (sacct knows) or be another cluster's
    (never trust one login node's silence about another's job): asked on its own host."""
    host = FakeLoginNode()
    first = make_job(host, settings, tmp_path)
    first.reuse_or_submit()
    other = BatchJob(
        SlurmScheduler(host),
        make_settings(tmp_path, job_name="other"),
        JobFiles(CONN_DIR),
        tmp_path / "state" / "slurm-other.json",
    )
    other.reuse_or_submit()
    del host.jobs["100"]  # SLURM forgot job 100
    host.commands.clear()
    assert first.refresh().state == "GONE"
    assert [c[c.index("-j") + 1] for c in host.commands if c[0] in ("env", "sacct")] == [
        "100,101",
        "100",
        "100",
    ]
    assert [c[0] if c[0] != "env" else c[2] for c in host.commands] == [
        "squeue",
        "squeue",
        "sacct",
    ]


def test_one_lease_record_per_cluster(tmp_path: Path) -> None:
    """Two clusters' jobs of the same name (two servers, or a server and a profile) must not
    take each other's record: it is keyed by the login node too."""
    from jlabgw.cluster.job import state_file_for

    a = make_settings(tmp_path, ssh_host="alice@login.a.example.org")
    b = make_settings(tmp_path, ssh_host="alice@login.b.example.org", ssh_port="2222")
    here = make_settings(tmp_path)
    names = {state_file_for(s, "slurm").name for s in (a, b, here)}
    assert names == {
        "slurm-jlabgw@alice_login.a.example.org.json",
        "slurm-jlabgw@alice_login.b.example.org_2222.json",
        "slurm-jlabgw.json",
    }
