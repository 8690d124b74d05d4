"""SLURM as a :class:`~jlabgw.cluster.scheduler.Scheduler`: sbatch/squeue/scancel
(:mod:`.client`) and the ``#SBATCH`` script (:mod:`.batch`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus, ProbeFailed, Scheduler
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

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)

    def hopeless_reason(self, status: JobStatus) -> str | None:
        return hopeless_reason(status)

    def probe(self) -> str:
        host = self.host
        versions = []
        for command in ("sbatch", "squeue", "scancel"):
            result = host.run([command, "--version"], check=False, timeout=60)
            if result.returncode != 0:
                raise ProbeFailed(
                    f"`{command} --version` failed on {host.where} (exit {result.returncode}): "
                    f"{(result.stderr or result.stdout).strip()[:300]}",
                    "SLURM's commands must be on the PATH of a non-interactive shell there: "
                    "load their module from ~/.bashrc (before its 'not interactive' return), or "
                    "ask the site where they are",
                )
            versions.append(result.stdout.strip())
        queue = host.run(["sh", "-c", 'squeue -h -u "$(id -un)" -o %i'], check=False, timeout=60)
        if queue.returncode != 0:
            raise ProbeFailed(
                f"squeue cannot reach the controller from {host.where}: "
                f"{queue.stderr.strip()[:300]}",
                "check that slurmctld is up and SLURM_CONF (if the site uses one) is set there",
            )
        jobs = len(queue.stdout.split())
        return f"{versions[0]} on {host.where}; squeue answers ({jobs} job(s) of yours)"

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
