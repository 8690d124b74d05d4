"""What every backend offers: an authenticated Kernel Gateway endpoint on this machine."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Backend", "GatewayEndpoint", "Progress"]

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""``await progress(done, total, message)``: report progress of a long operation."""


@dataclass(frozen=True)
class GatewayEndpoint:
    """Where to reach a gateway from this process. ``token`` is never shown in reprs."""

    url: str
    token: str = field(repr=False)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")


class Backend(abc.ABC):
    """Owns the lifecycle of one gateway (process, batch job, tunnel)."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def start(self, progress: Progress | None = None) -> GatewayEndpoint:
        """Start the gateway if needed and return its endpoint. Safe to call concurrently.

        ``progress`` hears about slow steps (a batch job waiting in the queue)."""

    @abc.abstractmethod
    async def lost(self) -> str | None:
        """If the gateway is gone for good (process died, job ended), say why; else None."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop everything this backend started. Idempotent."""

    @abc.abstractmethod
    def close_now(self) -> None:
        """Synchronous last-resort stop (signal handlers, atexit). Idempotent."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Status for humans and the status resource. Never includes secrets."""
