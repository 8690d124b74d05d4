"""Job leases (issue 12): the servers of one user share their batch job, and it is cancelled
by the last live one to leave. Other holders are real processes (a child that runs, then is
SIGKILLed); the lease file and its lock are real; the job's submit/cancel are the callables
a SlurmJob passes (the scheduler is the one boundary left out)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from jlabgw.cluster.leases import JobLeases
from jlabgw.processes import this_owner
from tests.helpers import owner_of


def leases(tmp_path: Path, owner: dict[str, str] | None = None) -> JobLeases:
    return JobLeases(tmp_path / "state" / "slurm-nb.json", owner)


class Queue:
    """The scheduler as the leases see it: ids handed out, jobs cancelled."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.running: set[str] = set()

    def submit(self) -> str:
        job_id = str(100 + len(self.submitted))
        self.submitted.append(job_id)
        self.running.add(job_id)
        return job_id

    def usable(self, job_id: str) -> bool:
        return job_id in self.running

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.running.discard(job_id)


def test_two_servers_share_one_job_and_the_last_to_leave_cancels_it(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    queue = Queue()
    a = leases(tmp_path, owner_of(child.pid))  # server A: another live process
    b = leases(tmp_path)  # server B: this process
    assert a.acquire(queue.usable, queue.submit, "login") == ("100", False)
    assert b.acquire(queue.usable, queue.submit, "login") == ("100", True)
    assert queue.submitted == ["100"]
    assert b.others("100") == [owner_of(child.pid)]

    # B leaves first: A still holds the job, nothing is cancelled
    assert b.release("100", lambda: queue.cancel("100")) == [owner_of(child.pid)]
    assert queue.cancelled == []
    data = json.loads(a.path.read_text())
    assert data["holders"] == [owner_of(child.pid)]

    # A leaves: it was the last, the job goes and so does the record
    assert a.release("100", lambda: queue.cancel("100")) == []
    assert queue.cancelled == ["100"]
    assert not a.path.exists()


def test_a_sigkilled_holder_does_not_keep_the_job(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    queue = Queue()
    a = leases(tmp_path, owner_of(child.pid))
    b = leases(tmp_path)
    a.acquire(queue.usable, queue.submit, "login")
    b.acquire(queue.usable, queue.submit, "login")
    child.kill()  # A cannot remove its lease
    child.wait()
    assert b.others("100") == []
    assert b.release("100", lambda: queue.cancel("100")) == []
    assert queue.cancelled == ["100"]


def test_a_recorded_job_that_ended_or_is_elsewhere_is_not_reused(tmp_path: Path) -> None:
    queue = Queue()
    mine = leases(tmp_path)
    assert mine.acquire(queue.usable, queue.submit, "login") == ("100", False)
    queue.running.clear()  # the job ended
    assert mine.acquire(queue.usable, queue.submit, "login") == ("101", False)
    # the same job name on another cluster is another job
    assert mine.acquire(queue.usable, queue.submit, "other-login") == ("102", False)
    assert json.loads(mine.path.read_text())["holders"] == [this_owner()]


def test_a_kept_job_stays_recorded_for_the_next_server(tmp_path: Path) -> None:
    queue = Queue()
    mine = leases(tmp_path)
    mine.acquire(queue.usable, queue.submit, "login")
    assert mine.release("100", None) == []  # JLABGW_KEEP_JOB: no cancel
    assert queue.cancelled == []
    assert json.loads(mine.path.read_text()) == {"job_id": "100", "where": "login", "holders": []}
    assert leases(tmp_path).acquire(queue.usable, queue.submit, "login") == ("100", True)


def test_leaving_a_job_the_record_no_longer_names_cancels_it(tmp_path: Path) -> None:
    """Another server found our job gone and recorded a new one: ours is ours alone."""
    queue = Queue()
    mine = leases(tmp_path)
    mine.acquire(queue.usable, queue.submit, "login")
    mine.forget("100")
    assert mine.release("100", lambda: queue.cancel("100")) == []
    assert queue.cancelled == ["100"]


def test_a_garbled_record_counts_as_none(tmp_path: Path) -> None:
    queue = Queue()
    mine = leases(tmp_path)
    mine.path.parent.mkdir(parents=True)
    mine.path.write_text("{not json")
    assert mine.acquire(queue.usable, queue.submit, "login") == ("100", False)
    assert (mine.path.stat().st_mode & 0o777) == 0o600


def test_an_unreadable_record_never_cancels_a_job_others_may_hold(tmp_path: Path) -> None:
    """EIO, EACCES, a directory in the way: nobody can tell who holds the job, so it is left
    to its idle timeout rather than cancelled under another server."""
    queue = Queue()
    mine = leases(tmp_path)
    mine.path.mkdir(parents=True)  # reading it fails (IsADirectoryError)
    left = mine.release("100", lambda: queue.cancel("100"))
    assert queue.cancelled == []
    assert left
    assert "unknown" in left[0]["process"]


def test_a_submission_whose_record_cannot_be_written_is_still_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job was submitted: the server must know its id (to cancel it at exit), even if the
    state dir refused the record (a full disk)."""
    from jlabgw.cluster import leases as leases_module

    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    queue = Queue()
    monkeypatch.setattr(leases_module, "write_private_file", full_disk)
    assert leases(tmp_path).acquire(queue.usable, queue.submit, "login") == ("100", False)
    assert queue.submitted == ["100"]
