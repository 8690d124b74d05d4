"""The ``slurm`` backend: the batch backend (:mod:`.batch`) with SLURM's scheduler."""

from __future__ import annotations

from typing import ClassVar

from jlabgw.cluster.backends.batch import BatchBackend
from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import Scheduler
from jlabgw.cluster.slurm.scheduler import SlurmScheduler

__all__ = ["SlurmBackend"]


class SlurmBackend(BatchBackend):
    name: ClassVar[str] = "slurm"

    @staticmethod
    def scheduler(host: Host) -> Scheduler:
        return SlurmScheduler(host)
