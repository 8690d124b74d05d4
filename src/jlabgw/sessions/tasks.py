"""Background tasks of the session layer, and the one check of how a finished task ended.

Runs, spare kernels and take-backs are tasks that nobody may be waiting for when they end:
their failures are logged here instead of being left unread (asyncio would complain)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["background", "failure", "log_failure", "succeeded"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def failure(task: asyncio.Future[Any]) -> BaseException | None:
    """The exception a finished task raised; None if it returned a value or was cancelled."""
    return None if task.cancelled() else task.exception()


def succeeded(task: asyncio.Future[Any]) -> bool:
    """Whether a finished task returned a value (neither raised nor was cancelled)."""
    return not task.cancelled() and failure(task) is None


def log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that logs how a task failed, after ``what`` ("starting ... failed")."""

    def done(task: asyncio.Future[Any]) -> None:
        if (exc := failure(task)) is not None:
            log.info("%s: %s", what, exc)

    return done


def background(coro: Coroutine[Any, Any, T], what: str, name: str | None = None) -> asyncio.Task[T]:
    """Run ``coro`` as a task of its own whose failure is logged (see :func:`log_failure`)."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(log_failure(what))
    return task
