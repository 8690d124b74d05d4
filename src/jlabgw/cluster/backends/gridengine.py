"""The ``gridengine`` backend: the batch backend (:mod:`.batch`) with Grid Engine's scheduler."""

from __future__ import annotations

from typing import ClassVar

from jlabgw.cluster.backends.batch import BatchBackend
from jlabgw.cluster.gridengine.scheduler import GridEngineScheduler
from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import Scheduler

__all__ = ["GridEngineBackend"]


class GridEngineBackend(BatchBackend):
    name: ClassVar[str] = "gridengine"

    @staticmethod
    def scheduler(host: Host) -> Scheduler:
        return GridEngineScheduler(host)
