"""Small asyncio helpers (foundation: no jlabgw imports)."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["task_failed", "task_succeeded"]


def task_failed(task: asyncio.Future[Any]) -> BaseException | None:
    """The exception a finished ``task`` ended with; None if it returned or was cancelled."""
    return None if task.cancelled() else task.exception()


def task_succeeded(task: asyncio.Future[Any]) -> bool:
    """Whether a finished ``task`` returned a result (neither cancelled nor failed)."""
    return not task.cancelled() and task.exception() is None
