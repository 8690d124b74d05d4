"""Background tasks of the session layer.

Runs, spare kernels, interrupts and discards are tasks that nobody may be waiting for when
they end: their failures are logged here instead of being left unread (asyncio would
complain)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from jlabgw.aio import task_failed

__all__ = ["background"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that logs how a task failed, after ``what`` ("starting ... failed")."""

    def done(task: asyncio.Future[Any]) -> None:
        if (exc := task_failed(task)) is not None:
            log.info("%s: %s", what, exc)

    return done


def background(coro: Coroutine[Any, Any, T], what: str, name: str | None = None) -> asyncio.Task[T]:
    """Run ``coro`` as a task of its own whose failure is logged (see :func:`_log_failure`)."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_log_failure(what))
    return task
