"""(Son of) Grid Engine as a :class:`~jlabgw.cluster.scheduler.Scheduler`: qsub/qstat/qdel
(:mod:`.client`) and the ``#$`` script (:mod:`.batch`) from the ``ge_*`` settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from jlabgw.cluster.gridengine.batch import GridEngineOptions, ge_directives, render_batch_script
from jlabgw.cluster.gridengine.client import GridEngineClient, hopeless_reason
from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus, Scheduler
from jlabgw.config import Settings
from jlabgw.errors import ConfigError

__all__ = ["GridEngineScheduler", "options_from"]


def options_from(settings: Settings) -> GridEngineOptions:
    """The job's Grid Engine request, from the JLABGW_GE_* settings."""
    slots = str(settings.ge_slots) if settings.ge_pe or settings.ge_slots != 1 else ""
    return GridEngineOptions(
        queue=settings.ge_queue,
        h_rt=settings.ge_h_rt,
        pe=settings.ge_pe,
        slots=slots,
        resources=settings.ge_resources,
        project=settings.ge_project,
        extra=settings.ge_extra,
    )


def _h_rt(walltime: str) -> str:
    """A session's ``time`` in SLURM's forms (what the tool documents: ``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) as Grid Engine's ``h:m:s``."""
    days_text, dash, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        hours += 24 * int(days_text)
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # MM or MM:SS: a bare number is minutes, as in sbatch --time
        hours, minutes, seconds = 0, parts[0], parts[1] if len(parts) == 2 else 0
    total = hours * 3600 + minutes * 60 + seconds
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _per_slot(mem: str, slots: int) -> str:
    """``mem`` for the whole job as Grid Engine's per-slot ``h_vmem`` (rounded up)."""
    if slots <= 1:
        return mem
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = (mem[:-1], mem[-1].upper()) if mem[-1].isalpha() else (mem, "")
    total = int(number) * units[unit]
    per = -(-total // slots)  # ceil
    return f"{-(-per // 2**20)}M"


class GridEngineScheduler(Scheduler):
    label: ClassVar[str] = "Grid Engine"
    settings_hint: ClassVar[str] = "JLABGW_GE_*"
    log_placeholder: ClassVar[str] = "$JOB_ID"  # qsub -o expands it (argv: no shell involved)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.client = GridEngineClient(host)

    @classmethod
    def resource_settings(cls, settings: Settings, wanted: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # -l resources: the configured ones, with h_vmem (per slot) and gpu replaced
        resources = {  # a bare flag resource (no "=") stays bare
            name: value
            for name, _, value in (i.partition("=") for i in settings.ge_resources.split(",") if i)
        }
        if "partition" in wanted:
            out["ge_queue"] = wanted["partition"]
        if "time" in wanted:
            out["ge_h_rt"] = _h_rt(wanted["time"])
        if "cpus" in wanted:
            if not settings.ge_pe and wanted["cpus"] != "1":
                raise ConfigError(
                    f"cpus={wanted['cpus']} needs a parallel environment on Grid Engine: set "
                    "JLABGW_GE_PE (`qconf -spl` lists them; smp is usual)"
                )
            out["ge_slots"] = int(wanted["cpus"])
        if "mem" in wanted:  # h_vmem is per slot: the job's memory shared by its slots
            slots = out.get("ge_slots", settings.ge_slots if settings.ge_pe else 1)
            resources["h_vmem"] = _per_slot(wanted["mem"], int(slots))
        if "gpus" in wanted:
            resources["gpu"] = wanted["gpus"]
        if "mem" in wanted or "gpus" in wanted:
            out["ge_resources"] = ",".join(f"{k}={v}" if v else k for k, v in resources.items())
        return out

    def render(self, settings: Settings) -> str:
        template = None
        if settings.batch_template is not None:
            template = settings.batch_template.read_text()
        return render_batch_script(settings, options_from(settings), template)

    def submit(self, script: str, log: str) -> str:
        # -w e: a request no queue of the cluster can ever satisfy is refused at submission
        # ("no suitable queues"), as SLURM's PartitionConfig reason is caught while pending
        return self.client.submit(script, extra_args=["-w", "e", "-o", log])

    def status(self, job_id: str) -> JobStatus:
        return self.client.status(job_id)

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)

    def hopeless_reason(self, status: JobStatus) -> str | None:
        return hopeless_reason(status)

    def probe(self) -> str:
        # Grid Engine's commands have no --version: -help prints it first ("SGE 8.1.9")
        version = self._commands_answer(
            ("qsub", "qstat", "qdel"),
            "-help",
            "Grid Engine's commands must be on the PATH of a non-interactive shell there, "
            "with SGE_ROOT and SGE_CELL set (source the cell's settings.sh from ~/.bashrc, "
            "before its 'not interactive' return), or ask the site",
        )
        queue = self._queue_answers(
            'qstat -u "$(id -un)"',
            "qmaster",
            "check that sge_qmaster is up and SGE_ROOT/SGE_CELL point at its cell there",
        )
        jobs = max(len(queue.strip().splitlines()) - 2, 0)  # two header lines
        return f"{version} on {self.host.where}; qstat answers ({jobs} job(s) of yours)"

    def directives(self, settings: Settings) -> list[str]:
        return [
            line.removeprefix("#$ ") for line in ge_directives(settings, options_from(settings))
        ]

    def running(self) -> list[JobStatus]:
        return self.client.running()
