"""What jlabgw needs of a batch scheduler, and the job status every scheduler reports in.

Like Open OnDemand's job adapters and dask-jobqueue's ``Job`` classes, a scheduler is reduced
to a few declarations over one command runner (a :class:`~jlabgw.cluster.host.Host`: this
machine, or the login node over SSH): render the batch script (directives from settings, the
shared supervisor embedded), submit it and read the job id, ask for the job's status in one
vocabulary, cancel it, and name the pending reasons a job never gets past. Everything else (the
connection file, leases, the tunnel, reattach, the walltime warning) is shared by
:class:`~jlabgw.cluster.job.BatchJob` and :class:`~jlabgw.cluster.backends.batch.BatchBackend`.

Adding a scheduler: one module with a :class:`Scheduler` subclass and its batch template, a
backend class naming it (``cluster/backends``), its settings, and tests against a live one.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from jlabgw.cluster.host import Host
from jlabgw.config import Settings
from jlabgw.errors import BackendError

__all__ = ["ACTIVE_STATES", "JobStatus", "ProbeFailed", "Scheduler", "parse_duration"]


class ProbeFailed(BackendError):
    """The scheduler's commands do not answer (``doctor``): what failed, and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# The state vocabulary (SLURM's names; other schedulers map theirs onto it). "GONE": the
# scheduler no longer knows the job.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str  # in the vocabulary above; "GONE" when the scheduler no longer knows the job
    reason: str = ""  # why it is pending (or held), in the scheduler's words
    node: str = ""
    time_left: str = ""  # [D-]HH:MM:SS, or "" when the scheduler gives none
    name: str = ""
    # while pending: when the scheduler expects the job to start (epoch seconds), if it has an
    # estimate (SLURM's backfill computes one; Grid Engine gives none)
    start_estimate: float | None = None

    @property
    def seconds_left(self) -> int | None:
        """``time_left`` in seconds; None when there is none (no limit, unknown)."""
        return parse_duration(self.time_left)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"


def parse_duration(text: str) -> int | None:
    """``[D-]HH:MM:SS``, ``MM:SS`` or ``SS`` in seconds; None if it is not one."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not clock or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    if days and not days.isdigit():
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


class Scheduler(abc.ABC):
    """One batch scheduler's commands, run on ``host``."""

    label: ClassVar[str]  # for messages: "SLURM", "Grid Engine"
    settings_hint: ClassVar[str]  # the settings that shape a job: "JLABGW_SLURM_*"
    # how the job id is written in the log path given to submit (sbatch: %j; qsub: $JOB_ID)
    log_placeholder: ClassVar[str]

    def __init__(self, host: Host) -> None:
        self.host = host

    @abc.abstractmethod
    def render(self, settings: Settings) -> str:
        """The batch script for ``settings``: directives, site set-up, the supervisor."""

    @abc.abstractmethod
    def submit(self, script: str, log: str) -> str:
        """Submit the script at ``script`` (a path on the host), its output to ``log`` (with
        :attr:`log_placeholder` for the job id); the job id."""

    @abc.abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """The job's state now; ``GONE`` once the scheduler has forgotten it."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Cancel (or delete) the job; an error if the scheduler refuses."""

    def hopeless_reason(self, status: JobStatus) -> str | None:
        """An explanation if the job waits for something it will never get by itself."""
        return None

    @classmethod
    @abc.abstractmethod
    def resource_settings(cls, settings: Settings, wanted: Mapping[str, str]) -> dict[str, Any]:
        """The settings of a job shaped as ``wanted`` asks (a session's ``resources``, checked
        and normalised: ``partition`` a name, ``gpus``/``cpus`` a count, ``mem`` like 16G,
        ``time`` like [D-]HH:MM:SS), as overrides of ``settings``. Raises
        :class:`~jlabgw.errors.ConfigError` for what this scheduler cannot ask for."""

    # -- for doctor --------------------------------------------------------------------------

    @abc.abstractmethod
    def probe(self) -> str:
        """Whether the commands answer on the host and reach the scheduler: their version and
        how many jobs of ours it lists. Raises :class:`ProbeFailed` with the fix."""

    @abc.abstractmethod
    def directives(self, settings: Settings) -> list[str]:
        """The script's scheduler directives for ``settings`` (without their prefix)."""

    @abc.abstractmethod
    def running(self) -> list[JobStatus]:
        """Every running job of ours (any name)."""

    def _commands_answer(self, commands: tuple[str, ...], flag: str, fix: str) -> str:
        """Run ``COMMAND FLAG`` for each command (its version or help); the first line the
        first one printed. :class:`ProbeFailed` with ``fix`` when one fails."""
        first = ""
        for command in commands:
            result = self.host.run([command, flag], check=False, timeout=60)
            lines = (result.stdout or result.stderr).strip().splitlines()
            if result.returncode != 0 or not lines:
                raise ProbeFailed(
                    f"`{command} {flag}` failed on {self.host.where} (exit "
                    f"{result.returncode}): {(result.stderr or result.stdout).strip()[:300]}",
                    fix,
                )
            first = first or lines[0].strip()
        return first

    def _queue_answers(self, shell: str, daemon: str, fix: str) -> str:
        """Run the queue listing ``shell`` (sh -c); its output. :class:`ProbeFailed` naming
        ``daemon`` with ``fix`` when the controller cannot be reached."""
        result = self.host.run(["sh", "-c", shell], check=False, timeout=60)
        if result.returncode != 0:
            raise ProbeFailed(
                f"{shell.split()[0]} cannot reach the {daemon} from {self.host.where}: "
                f"{(result.stderr or result.stdout).strip()[:300]}",
                fix,
            )
        return result.stdout

    def first_node(self, nodes: str) -> str:
        """The first host of a job's node list ("" if none)."""
        return nodes.split(",", 1)[0].strip()
