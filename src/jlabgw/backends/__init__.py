"""Backends provide a Kernel Gateway endpoint: started here (``local``) or in a batch job."""

from __future__ import annotations

from ..config import Settings
from .base import Backend, GatewayEndpoint, Progress
from .local import LocalBackend
from .slurm import SlurmBackend

__all__ = [
    "Backend",
    "GatewayEndpoint",
    "LocalBackend",
    "Progress",
    "SlurmBackend",
    "create_backend",
]


def create_backend(settings: Settings) -> Backend:
    """The backend named by ``settings.backend``."""
    if settings.backend == "local":
        return LocalBackend(settings)
    if settings.backend == "slurm":
        return SlurmBackend(settings)
    raise AssertionError(f"unhandled backend {settings.backend!r}")  # config rejects others
