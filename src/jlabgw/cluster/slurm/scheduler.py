"""SLURM as a :class:`~jlabgw.cluster.scheduler.Scheduler`: sbatch/squeue/scancel
(:mod:`.client`) and the ``#SBATCH`` script (:mod:`.batch`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus, Scheduler
from jlabgw.cluster.slurm.batch import render_batch_script, sbatch_directives
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

    @classmethod
    def resource_settings(cls, settings: Settings, wanted: Mapping[str, str]) -> dict[str, Any]:
        fields = {
            "partition": "slurm_partition",
            "gpus": "slurm_gres",
            "cpus": "slurm_cpus",
            "mem": "slurm_mem",
            "time": "slurm_time",
        }
        out: dict[str, Any] = {fields[k]: v for k, v in wanted.items()}
        if "gpus" in wanted:
            out["slurm_gres"] = f"gpu:{wanted['gpus']}"
        if "cpus" in wanted:
            out["slurm_cpus"] = int(wanted["cpus"])
        return out

    def render(self, settings: Settings) -> str:
        return render_batch_script(settings)

    def submit(self, script: str, log: str) -> str:
        return self.client.submit(script, extra_args=[f"--output={log}"])

    def status(self, job_id: str) -> JobStatus:
        return self.client.status(job_id)

    def listed(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Several jobs' states from one squeue (those it still lists): what lets
        :meth:`~jlabgw.cluster.job.BatchJob.refresh` cover all of a server's jobs at once."""
        return self.client.listed(job_ids)

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)

    def hopeless_reason(self, status: JobStatus) -> str | None:
        return hopeless_reason(status)

    def probe(self) -> str:
        version = self._commands_answer(
            ("sbatch", "squeue", "scancel"),
            "--version",
            "SLURM's commands must be on the PATH of a non-interactive shell there: load their "
            "module from ~/.bashrc (before its 'not interactive' return), or ask the site "
            "where they are",
        )
        queue = self._queue_answers(
            'squeue -h -u "$(id -un)" -o %i',
            "controller",
            "check that slurmctld is up and SLURM_CONF (if the site uses one) is set there",
        )
        jobs = len(queue.split())
        return f"{version} on {self.host.where}; squeue answers ({jobs} job(s) of yours)"

    def directives(self, settings: Settings) -> list[str]:
        return [line.removeprefix("#SBATCH ") for line in sbatch_directives(settings)]

    def running(self) -> list[JobStatus]:
        return self.client.running()

    def first_node(self, nodes: str) -> str:
        """squeue's node list (``c1``, ``c[1-4]``, ``a1,b2``): ranges need scontrol."""
        if "[" not in nodes:
            return super().first_node(nodes)
        result = self.host.run(["scontrol", "show", "hostnames", nodes], check=False, timeout=60)
        lines = result.stdout.split() if result.returncode == 0 else []
        return lines[0] if lines else ""
