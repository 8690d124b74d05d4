"""The progress callback every long operation takes (foundation: no jlabgw imports)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["Progress", "no_progress"]

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""``await progress(done, total, message)``: report progress of a long operation."""


async def no_progress(done: float, total: float | None, message: str) -> None:
    """A :data:`Progress` that reports nowhere."""
    return None
