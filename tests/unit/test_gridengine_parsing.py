"""Parsers for Grid Engine command output, on outputs captured from the real SGE 8.1.9 of
tests/gridengine.py (tests/golden/gridengine_*; re-captured by tests/golden/gridengine_capture.py),
and GridEngineClient's commands through a fake Host."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jlabgw.cluster.gridengine.client import (
    GridEngineClient,
    QstatJob,
    hopeless_reason,
    parse_ge_duration,
    parse_qstat_job_details,
    parse_qstat_xml,
    parse_qsub_output,
    to_job_status,
)
from jlabgw.cluster.host import LocalHost
from jlabgw.cluster.ssh.connection import CommandResult
from jlabgw.errors import BackendError, CommandError, JlabgwError

GOLDEN = Path(__file__).parent.parent / "golden"
# when the captured jobs started (2026-12-02T17:01:28 in the samples, printed with TZ=UTC)
STARTED = datetime(2026, 12, 2, 17, 1, 28, tzinfo=UTC).timestamp()


def sample(name: str) -> str:
    return (GOLDEN / f"gridengine_{name}").read_text()


def test_qsub_output() -> None:
    assert parse_qsub_output(sample("qsub_terse.txt")) == "1"
    assert parse_qsub_output("7.1-10:1\n") == "7"
    assert parse_qsub_output('Your job 42 ("jlabgw") has been submitted\n') == "42"
    assert parse_qsub_output('Your job-array 43.1-3:1 ("a") has been submitted\n') == "43"
    for bad in ("", sample("qsub_refused.txt")):
        with pytest.raises(JlabgwError, match="did not print a job id"):
            parse_qsub_output(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600), ("1:00:00", 3600), ("0:10:0", 600), ("10:5", 605), ("INFINITY", None),
     ("", None), ("1:2:3:4", None), ("-5", None)],
)  # fmt: skip
def test_ge_duration(text: str, seconds: int | None) -> None:
    assert parse_ge_duration(text) == seconds


def test_qstat_every_state() -> None:
    jobs = {job.job_id: job for job in parse_qstat_xml(sample("qstat_jobs.xml"))}
    assert {j: job.code for j, job in jobs.items()} == {
        "1": "r", "2": "r", "3": "s", "4": "qw", "5": "hqw", "6": "Eqw",
    }  # fmt: skip
    assert jobs["1"] == QstatJob(
        "1", "r", "jlabgw-run", "jlabgw-test", "jlabgw.q@vm", 1, STARTED, 600
    )
    assert (jobs["2"].slots, jobs["2"].h_rt) == (2, 3600)
    assert jobs["4"] == QstatJob("4", "qw", "too-big", "jlabgw-test", "", 99, None, None)

    now = STARTED + 61
    running = to_job_status(jobs["1"], now=now)
    assert (running.state, running.reason, running.node, running.name) == (
        "RUNNING", "", "vm", "jlabgw-run",
    )  # fmt: skip
    assert running.running
    assert running.active
    assert running.time_left == "00:08:59"
    assert running.seconds_left == 539
    assert to_job_status(jobs["2"], now=now).time_left == "00:58:59"

    suspended = to_job_status(jobs["3"], now=now)
    assert (suspended.state, suspended.reason, suspended.time_left) == (
        "SUSPENDED", "s: suspended", "",
    )  # fmt: skip
    assert suspended.active
    assert not suspended.running

    pending = to_job_status(jobs["4"], now=now)
    assert (pending.state, pending.reason, pending.node) == ("PENDING", "qw", "")
    assert pending.pending
    assert hopeless_reason(pending) is None

    held = to_job_status(jobs["5"])
    assert (held.state, held.reason) == ("PENDING", "hqw: held")
    assert hopeless_reason(held) is None

    error = to_job_status(jobs["6"])
    assert (error.state, error.reason) == ("PENDING", "Eqw: error state")
    assert "error state" in (hopeless_reason(error) or "")


def test_qstat_times_are_read_as_utc() -> None:
    """qstat prints local time without a zone: the client runs it with TZ=UTC. The same
    jobs printed in Tokyo time would be nine hours off."""
    utc = parse_qstat_xml(sample("qstat_jobs.xml"))[0]
    tokyo = parse_qstat_xml(sample("qstat_tokyo.xml"))[0]
    assert utc.start_time == STARTED
    assert tokyo.start_time == STARTED + 9 * 3600


def test_time_left_past_the_limit_and_over_a_day() -> None:
    job = QstatJob("9", "r", start_time=1000.0, h_rt=2 * 86400 + 5)
    assert to_job_status(job, now=1000.0).time_left == "2-00:00:05"
    assert to_job_status(job, now=1000.0 + 3 * 86400).time_left == "00:00:00"
    assert to_job_status(QstatJob("9", "r", start_time=1000.0), now=5.0).time_left == ""


@pytest.mark.parametrize(
    ("code", "state"),
    [("qw", "PENDING"), ("hqw", "PENDING"), ("Eqw", "PENDING"), ("t", "CONFIGURING"),
     ("r", "RUNNING"), ("Rr", "RUNNING"), ("hr", "RUNNING"), ("dr", "COMPLETING"),
     ("dt", "COMPLETING"), ("s", "SUSPENDED"), ("S", "SUSPENDED"), ("T", "SUSPENDED"),
     ("Rq", "PENDING"), ("zz", "PENDING")],
)  # fmt: skip
def test_state_letters(code: str, state: str) -> None:
    status = to_job_status(QstatJob("1", code))
    assert status.state == state
    assert status.active  # qstat lists it: not ended
    assert status.reason == ("" if code in ("r", "Rr") else status.reason)
    assert status.reason.startswith(code) or code in ("r", "Rr")


def test_qstat_deleting() -> None:
    jobs = {job.job_id: job for job in parse_qstat_xml(sample("qstat_deleting.xml"))}
    status = to_job_status(jobs["1"])
    assert (status.state, status.reason) == ("COMPLETING", "dr: being deleted")


def test_qstat_empty() -> None:
    assert parse_qstat_xml(sample("qstat_empty.xml")) == []


def test_job_details() -> None:
    error = parse_qstat_job_details(sample("qstat_j_error.xml"), "6")
    assert error == [
        'can\'t stat() "/root/nope" as stdout_path: Permission denied',
        "Job is in error state",
    ]
    assert parse_qstat_job_details(sample("qstat_j_pending.xml"), "4") == [
        'cannot run in PE "smp" because it only offers 0 slots'
    ]
    assert parse_qstat_job_details(sample("qstat_j_pending.xml"), "5") == []  # not about 5
    assert parse_qstat_job_details(sample("qstat_j_held.xml"), "5") == ["Job is in hold state"]
    # "There are no messages available" is a global message, not one about this job
    assert parse_qstat_job_details(sample("qstat_j_running.xml"), "1") == []
    assert parse_qstat_job_details(sample("qstat_j_unknown.xml"), "987654") == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "error: commlib error: got select error (Connection refused)\n",
        "<job_info><queue_info><job_list><state>r</state></job_list></queue_info></job_info>",
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><job_info>&a;</job_info>',
        "<html><body>proxy error</body></html>",
        "<job_info><queue_info><job_list><JB_job_number>1",
    ],
)
def test_surprising_qstat_output_is_a_backend_error(text: str) -> None:
    with pytest.raises(BackendError) as info:
        parse_qstat_xml(text)
    assert "qstat" in str(info.value)


def test_surprising_job_details_are_a_backend_error() -> None:
    with pytest.raises(BackendError):
        parse_qstat_job_details("<job_info/>", "1")
    with pytest.raises(BackendError):
        parse_qstat_job_details("not xml", "1")


class FakeHost(LocalHost):
    """Answers commands from a table: argv prefix -> (exit code, stdout, stderr); files are
    not used by the client."""

    where = "the fake login node"

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 300.0,
        check: bool = True,
    ) -> CommandResult:
        self.calls.append(list(argv))
        for prefix, (code, out, err) in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                if check and code != 0:
                    raise CommandError(list(argv), code, out, err, self.where)
                return CommandResult(list(argv), code, out, err)
        raise AssertionError(f"unexpected command {argv}")


QSTAT = ("env", "TZ=UTC", "qstat", "-xml", "-r")


def client(**answers: tuple[int, str, str]) -> tuple[GridEngineClient, FakeHost]:
    table = {tuple(k.split()): v for k, v in answers.items()}
    table.setdefault(("id", "-un"), (0, "jlabgw-test\n", ""))  # qstat names the user
    host = FakeHost(table)
    return GridEngineClient(host, clock=lambda: STARTED + 1), host


def test_client_submit_and_status() -> None:
    ge, host = client(
        **{
            "qsub": (0, sample("qsub_terse.txt"), ""),
            " ".join(QSTAT): (0, sample("qstat_jobs.xml"), ""),
            "qstat -j 6": (0, sample("qstat_j_error.xml"), ""),
            "qstat -j 4": (0, sample("qstat_j_pending.xml"), ""),
        }
    )
    assert ge.submit("/home/u/job.sh", extra_args=["-o", "/home/u/x-$JOB_ID.log"]) == "1"
    assert host.calls[-1] == ["qsub", "-terse", "-o", "/home/u/x-$JOB_ID.log", "/home/u/job.sh"]

    running = ge.status("1")
    assert (running.state, running.time_left) == ("RUNNING", "00:09:59")
    assert host.calls[-1] == [*QSTAT, "-u", "jlabgw-test", "-s", "prs"]  # and no second one

    error = ge.status("6")
    assert error.reason.startswith("Eqw: can't stat()")
    assert "Job is in error state" in error.reason
    assert "/root/nope" in (hopeless_reason(error) or "")

    stuck = ge.status("4")
    assert stuck.reason == 'qw: cannot run in PE "smp" because it only offers 0 slots'
    assert ge.status("987654").state == "GONE"


def test_client_status_pending_without_details() -> None:
    """A failing ``qstat -j`` (a job that ended meanwhile) leaves the reason at the letters."""
    ge, _ = client(
        **{
            " ".join(QSTAT): (0, sample("qstat_jobs.xml"), ""),
            "qstat -j": (1, "", "Following jobs do not exist: 5"),
        }
    )
    assert ge.status("5").reason == "hqw: held"


def test_client_status_errors() -> None:
    ge, _ = client(**{" ".join(QSTAT): (1, "", "error: commlib error: got select error")})
    with pytest.raises(CommandError, match="commlib error"):
        ge.status("1")
    ge, _ = client(**{" ".join(QSTAT): (0, "Segmentation fault", "")})
    with pytest.raises(BackendError, match="not XML"):
        ge.status("1")


def test_client_find_and_running() -> None:
    ge, host = client(
        **{
            "id -un": (0, "jlabgw-test\n", ""),
            " ".join(QSTAT): (0, sample("qstat_jobs.xml"), ""),
        }
    )
    assert [j.job_id for j in ge.find("jlabgw-run")] == ["1"]
    # -u and -s given: a ~/.sge_qstat or site sge_qstat ("-s r") must not hide pending jobs
    assert host.calls[-1] == [*QSTAT, "-u", "jlabgw-test", "-s", "prs"]
    assert ge.find("no-such-name", "someone") == []
    assert host.calls[-1] == [*QSTAT, "-u", "someone", "-s", "prs"]
    assert [j.job_id for j in ge.running()] == ["1", "2"]


def test_client_cancel() -> None:
    ge, host = client(qdel=(0, "jlabgw-test has registered the job 1 for deletion\n", ""))
    ge.cancel("1")
    assert host.calls == [["qdel", "1"]]
    ge, _ = client(qdel=(1, sample("qdel_unknown.txt"), ""))
    ge.cancel("987654")  # already gone: nothing to do
    ge, _ = client(qdel=(1, "", 'denied: "jlabgw-test" is not the owner of job "3"'))
    with pytest.raises(CommandError, match="not the owner"):
        ge.cancel("3")
