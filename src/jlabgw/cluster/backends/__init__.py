"""Backends provide a Kernel Gateway endpoint: started here (``local``) or in a batch job.

Each backend module is imported only when used: the SLURM backend brings paramiko and
cryptography (~20 MiB of the server's memory), which the local default never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jlabgw.cluster.backends.base import Backend
from jlabgw.config import Settings
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.progress import Progress

if TYPE_CHECKING:
    from jlabgw.cluster.backends.gridengine import GridEngineBackend
    from jlabgw.cluster.backends.local import LocalBackend
    from jlabgw.cluster.backends.slurm import SlurmBackend
    from jlabgw.cluster.host import Host
    from jlabgw.cluster.scheduler import Scheduler

__all__ = [
    "Backend",
    "GatewayEndpoint",
    "GridEngineBackend",
    "LocalBackend",
    "Progress",
    "SlurmBackend",
    "create_backend",
    "scheduler_for",
    "scheduler_type",
]

_LAZY = {"LocalBackend": ".local", "SlurmBackend": ".slurm", "GridEngineBackend": ".gridengine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scheduler_type(backend: str) -> type[Scheduler] | None:
    """The scheduler of a batch backend by name (None for the local backend)."""
    if backend == "slurm":
        from jlabgw.cluster.slurm.scheduler import SlurmScheduler

        return SlurmScheduler
    if backend == "gridengine":
        from jlabgw.cluster.gridengine.scheduler import GridEngineScheduler

        return GridEngineScheduler
    return None


def scheduler_for(settings: Settings, host: Host) -> Scheduler | None:
    """The scheduler of ``settings.backend`` on ``host`` (None for the local backend)."""
    kind = scheduler_type(settings.backend)
    return kind(host) if kind is not None else None


def create_backend(settings: Settings) -> Backend:
    """The backend named by ``settings.backend``."""
    if settings.backend == "local":
        from jlabgw.cluster.backends.local import LocalBackend

        return LocalBackend(settings)
    if settings.backend == "slurm":
        from jlabgw.cluster.backends.slurm import SlurmBackend

        return SlurmBackend(settings)
    if settings.backend == "gridengine":
        from jlabgw.cluster.backends.gridengine import GridEngineBackend

        return GridEngineBackend(settings)
    raise AssertionError(f"unhandled backend {settings.backend!r}")  # config rejects others
