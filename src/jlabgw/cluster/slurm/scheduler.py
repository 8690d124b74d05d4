"""SLURM as a :class:`~jlabgw.cluster.scheduler.Scheduler`: sbatch/squeue/scancel
(:mod:`.client`) and the ``#SBATCH`` script (:mod:`.batch`)."""

from __future__ import annotations

from typing import ClassVar

from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus, Scheduler
from jlabgw.cluster.slurm.batch import render_batch_script
from jlabgw.cluster.slurm.client import SlurmClient, hopeless_reason
from jlabgw.config import Settings

__all__ = ["SlurmScheduler"]


class SlurmScheduler(Scheduler):
    label: ClassVar[str] = "SLURM"
    settings_hint: ClassVar[str] = "JLABGW_SLURM_*"
    log_placeholder: ClassVar[str] = "%j"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.client = SlurmClient(host)

    def render(self, settings: Settings) -> str:
        return render_batch_script(settings)

    def submit(self, script: str, log: str) -> str:
        return self.client.submit(script, extra_args=[f"--output={log}"])

    def status(self, job_id: str) -> JobStatus:
        return self.client.status(job_id)

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)

    def hopeless_reason(self, status: JobStatus) -> str | None:
        return hopeless_reason(status)
