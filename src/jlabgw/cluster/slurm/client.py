"""sbatch / squeue / scancel (and sacct as a fallback) through a :class:`~jlabgw.remote.Host`.

The parsers are pure functions tested on real outputs. Every command goes through the host's
``run`` (local subprocess or SSH exec), argv only.
"""

from __future__ import annotations

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


def parse_squeue_line(line: str) -> JobStatus:
    """One line of ``squeue -h -o '%i|%T|%r|%N|%L|%j'``."""
    parts = line.rstrip("\n").split("|", 5)
    parts += [""] * (6 - len(parts))
    job_id, state, reason, node, time_left, name = parts
    return JobStatus(
        job_id=job_id.strip(),
        state=state.strip(),
        reason="" if reason.strip() in ("None", "(null)") else reason.strip(),
        node=node.strip(),
        time_left=time_left.strip(),
        name=name.strip(),
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
        result = self.host.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", SQUEUE_FORMAT], check=False
        )
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and lines:
            return parse_squeue_line(lines[0])
        if result.returncode not in (0, 1) or (
            result.returncode == 1 and "Invalid job id" not in result.stderr
        ):
            raise CommandError(
                result.argv, result.returncode, result.stdout, result.stderr, self.host.where
            )
        return self._from_sacct(job_id)

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
