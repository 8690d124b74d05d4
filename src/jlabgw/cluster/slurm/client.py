"""sbatch / squeue / scancel (and sacct as a fallback) through a :class:`~jlabgw.remote.Host`.

The parsers are pure functions tested on real outputs. Every command goes through the host's
``run`` (local subprocess or SSH exec), argv only.

Each squeue is a process on the login node and two or three RPCs to slurmctld (the job info,
the partitions, the federation), so :class:`~jlabgw.cluster.job.BatchJob` asks sparingly and
:meth:`SlurmClient.listed` answers for several jobs in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus, parse_duration
from jlabgw.errors import BackendError, CommandError

__all__ = [
    "JobStatus",
    "SlurmClient",
    "hopeless_reason",
    "parse_sbatch_parsable",
    "parse_squeue_line",
]

SQUEUE_FORMAT = "%i|%T|%r|%N|%L|%j"
# what a status query asks for: the same and the start time (%S: expected while pending)
STATUS_FORMAT = "%i|%T|%r|%N|%L|%S|%j"
# squeue prints times in the login node's zone and without it; as epoch seconds they need none
_EPOCH_TIMES = ["env", "SLURM_TIME_FORMAT=%s"]
# Pending reasons after which the job will not start without someone changing it.
_HOPELESS = {
    "PartitionConfig": "the request exceeds what the partition allows (CPUs, memory, GPUs, time)",
    "PartitionNodeLimit": "the request needs more nodes than the partition has",
    "PartitionTimeLimit": "JLABGW_SLURM_TIME exceeds the partition's time limit",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "InvalidAccount": "JLABGW_SLURM_ACCOUNT is not valid for you",
    "InvalidQOS": "JLABGW_SLURM_QOS is not valid for you",
    "QOSJobLimit": "the QOS does not allow this job",
    "BadConstraints": "JLABGW_SLURM_CONSTRAINT cannot be satisfied",
    "ReqNodeNotAvail": "the requested nodes are not available",
}


def parse_slurm_duration(text: str) -> int | None:
    """SLURM's ``[D-]HH:MM:SS``, ``MM:SS`` or ``SS`` in seconds; None if it is not one."""
    return parse_duration(text)


def parse_sbatch_parsable(stdout: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise BackendError(f"sbatch did not print a job id (got {stdout.strip()!r})")
    return job_id


def parse_squeue_line(line: str, *, with_start: bool = False) -> JobStatus:
    """One line of ``squeue -h -o '%i|%T|%r|%N|%L|%j'`` (:data:`SQUEUE_FORMAT`), or with
    ``with_start`` of :data:`STATUS_FORMAT` run with epoch times (``SLURM_TIME_FORMAT=%s``):
    a pending job's start time is the scheduler's estimate ("N/A" while it has none)."""
    fields = 7 if with_start else 6
    parts = line.rstrip("\n").split("|", fields - 1)
    parts += [""] * (fields - len(parts))
    if with_start:
        job_id, state, reason, node, time_left, start, name = parts
    else:
        job_id, state, reason, node, time_left, name = parts
        start = ""
    state = state.strip()
    estimate = float(start) if state == "PENDING" and start.strip().isdigit() else None
    return JobStatus(
        job_id=job_id.strip(),
        state=state,
        reason="" if reason.strip() in ("None", "(null)") else reason.strip(),
        node=node.strip(),
        time_left=time_left.strip(),
        name=name.strip(),
        start_estimate=estimate or None,  # 0: none
    )


def hopeless_reason(status: JobStatus) -> str | None:
    """An explanation if the job is pending for a reason it will not get past by itself."""
    return _HOPELESS.get(status.reason) if status.pending else None


class SlurmClient:
    """The SLURM commands jlabgw needs, run on ``host``."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def submit(self, script: str, *, extra_args: list[str] | None = None) -> str:
        """``sbatch --parsable [extra] SCRIPT``; returns the job id."""
        result = self.host.run(["sbatch", "--parsable", *(extra_args or []), script])
        return parse_sbatch_parsable(result.stdout)

    def status(self, job_id: str) -> JobStatus:
        """The job's state; ``GONE`` once SLURM has forgotten it (sacct asked first)."""
        found = self.listed([job_id]).get(job_id)
        return found if found is not None else self._from_sacct(job_id)

    def listed(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """What one squeue says of ``job_ids`` (each with its start estimate while pending);
        a job squeue no longer lists is left out. One id is slurmctld's cheap single-job RPC;
        several are one job-table RPC instead of one call each."""
        ids = ",".join(job_ids)
        result = self.host.run(
            [*_EPOCH_TIMES, "squeue", "-h", "-t", "all", "-j", ids, "-o", STATUS_FORMAT],
            check=False,
        )
        if result.returncode == 1 and "Invalid job id" in result.stderr:
            return {}  # a single id squeue does not know (several: an empty list, exit 0)
        if result.returncode != 0:
            raise CommandError(
                result.argv, result.returncode, result.stdout, result.stderr, self.host.where
            )
        wanted = set(job_ids)
        found: dict[str, JobStatus] = {}
        for line in result.stdout.splitlines():
            if line.strip():
                status = parse_squeue_line(line, with_start=True)
                if status.job_id in wanted:
                    found.setdefault(status.job_id, status)
        return found

    def _from_sacct(self, job_id: str) -> JobStatus:
        result = self.host.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"], check=False
        )
        for line in result.stdout.splitlines():
            jid, _, state = line.partition("|")
            if jid.strip() == job_id and state.strip():
                return JobStatus(job_id, state.split()[0].strip())
        return JobStatus(job_id, "GONE")

    def find(self, name: str, user: str | None = None) -> list[JobStatus]:
        """Active jobs called ``name`` (of ``user``, default: whoever runs the command)."""
        if user is None:  # `squeue --me` needs SLURM >= 20.11; `id -un` works everywhere
            user = self.host.run(["id", "-un"]).stdout.strip()
        result = self.host.run(["squeue", "-h", "-n", name, "-u", user, "-o", SQUEUE_FORMAT])
        jobs = [parse_squeue_line(line) for line in result.stdout.splitlines() if line.strip()]
        return [job for job in jobs if job.active]

    def running(self, user: str | None = None) -> list[JobStatus]:
        """Every RUNNING job of ``user`` (default: whoever runs the command), whatever its
        name."""
        if user is None:
            user = self.host.run(["id", "-un"]).stdout.strip()
        result = self.host.run(["squeue", "-h", "-t", "RUNNING", "-u", user, "-o", SQUEUE_FORMAT])
        jobs = [parse_squeue_line(line) for line in result.stdout.splitlines() if line.strip()]
        return [job for job in jobs if job.running]

    def cancel(self, job_id: str) -> None:
        self.host.run(["scancel", job_id])
