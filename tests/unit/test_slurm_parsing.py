"""Parsers for SLURM command output, on outputs captured from slurm-wlm 22.05."""

from __future__ import annotations

import pytest

from jlabgw.cluster.slurm.client import (
    JobStatus,
    hopeless_reason,
    parse_sbatch_parsable,
    parse_slurm_duration,
    parse_squeue_line,
)
from jlabgw.errors import JlabgwError


@pytest.mark.parametrize(("out", "job_id"), [("1\n", "1"), ("4242;cluster-a\n", "4242")])
def test_sbatch_parsable(out: str, job_id: str) -> None:
    assert parse_sbatch_parsable(out) == job_id


@pytest.mark.parametrize("out", ["", "sbatch: error: Batch job submission failed\n"])
def test_sbatch_without_job_id(out: str) -> None:
    with pytest.raises(JlabgwError, match="did not print a job id"):
        parse_sbatch_parsable(out)


def test_squeue_lines() -> None:
    pending = parse_squeue_line("1|PENDING|None||10:00|jlabgw\n")
    assert pending == JobStatus("1", "PENDING", "", "", "10:00", "jlabgw")
    assert pending.pending
    assert pending.active
    assert hopeless_reason(pending) is None

    stuck = parse_squeue_line("2|PENDING|PartitionConfig||UNLIMITED|jlabgw")
    assert stuck.reason == "PartitionConfig"
    assert "exceeds what the partition allows" in (hopeless_reason(stuck) or "")

    running = parse_squeue_line("3|RUNNING|None|node17|7:59:58|my|odd|name")
    assert (running.node, running.time_left, running.name) == ("node17", "7:59:58", "my|odd|name")
    assert running.running

    done = parse_squeue_line("4|CANCELLED|None|node17|0:00|jlabgw")
    assert not done.active
    assert hopeless_reason(done) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1-02:03:04", 93784),
        ("02:03:04", 7384),
        ("03:04", 184),
        ("59", 59),
        ("0:00", 0),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("", None),
        ("1-", None),
        ("x-01:00:00", None),
        ("1:2:3:4", None),
    ],
)
def test_slurm_durations(text: str, seconds: int | None) -> None:
    assert parse_slurm_duration(text) == seconds
