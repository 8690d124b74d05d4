"""Scratch runs (``execute_scratch``): code whose cell is recorded in no notebook.

By default in a throwaway kernel on the same gateway (the spare kernel when there is one),
shut down when the run ends; or in a session's kernel, where it can change the state the
notebook is meant to reproduce (the result says so). A scratch run is a run like any other
(:class:`~.runner.Runner`): the same output budget, and a long one comes back with an
execution_id that ``get_execution`` follows (for a throwaway kernel, under the scratch id the
result names). Its cell lives in an in-memory notebook that is never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from jlabgw.errors import SessionLostError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.recorder import DisplayIndex
from jlabgw.progress import Progress
from jlabgw.sessions.execution import ExecutionResult
from jlabgw.sessions.kernels import KernelStarter, SparePool
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.session import Session, notebook_kernel
from jlabgw.sessions.tasks import background

__all__ = ["Scratch"]

log = logging.getLogger(__name__)

_KEEP = 20  # finished throwaway runs kept for get_execution
_NAME = "scratch (not recorded)"


class Scratch:
    """Scratch runs for :class:`~.manager.SessionManager`, on its pool, starter and runner."""

    def __init__(
        self,
        pool: SparePool,
        starter: KernelStarter,
        runner: Runner,
        on_lost: Callable[[Session, str], Awaitable[None]],
    ) -> None:
        """``on_lost(session, why)``: a session's gateway turned out to be gone for good
        during a scratch run in its kernel (the manager's, as the runner's)."""
        self._on_lost = on_lost
        self._pool = pool
        self._starter = starter
        self._runner = runner
        # throwaway kernels' runs by scratch id, running or recently finished (oldest first)
        self._throwaway: OrderedDict[str, Session] = OrderedDict()
        self._ending: set[asyncio.Task[None]] = set()
        self._closing = False  # aclose() ends the kernels itself

    def get(self, scratch_id: str) -> Session | None:
        """A throwaway run's stand-in session, for ``get_execution``."""
        return self._throwaway.get(scratch_id)

    async def in_session(
        self,
        session: Session,
        code: str,
        progress: Progress,
        *,
        wait: float | None,
        cell_timeout: float | None,
    ) -> ExecutionResult:
        """Run ``code`` in ``session``'s kernel, recording it nowhere (refused while the
        session runs a cell, as execute_code is)."""
        shadow = dataclasses.replace(
            session, doc=NotebookDoc.in_memory(_NAME), displays=DisplayIndex()
        )  # the same kernel, lock and runs: get_execution(session_id) follows it
        try:
            result = await self._runner.run(
                shadow, None, code, progress, wait=wait, cell_timeout=cell_timeout
            )
        except SessionLostError:  # said of the stand-in: the session is lost, and its notebook
            why = await session.conn.gateway_lost() or "its gateway is gone"  # the kept answer
            await self._on_lost(session, why)
            raise SessionLostError(session.lost_message(why)) from None
        result.warnings.append(
            f"scratch: this ran in session {session.id}'s kernel but is not recorded in "
            f"{session.doc.path.name}; if it changed variables, imports or files the notebook "
            "relies on, the notebook no longer reproduces the kernel's state"
        )
        return result

    async def throwaway(
        self,
        code: str,
        progress: Progress,
        *,
        wait: float | None,
        cell_timeout: float | None,
        lane: str = "",
    ) -> ExecutionResult:
        """Run ``code`` in a kernel of its own (on ``lane``'s gateway), shut down when the run
        ends."""
        started = await self._pool.take(progress, None, lane)
        doc = NotebookDoc.in_memory(_NAME)
        doc.nb.metadata.update(started.metadata)
        temp = Session(
            id=f"scratch-{uuid.uuid4().hex[:8]}",
            experiment_name="scratch",
            kernel_id=started.conn.kernel_id,
            kernel_name=notebook_kernel(doc.nb) or "",
            conn=started.conn,
            doc=doc,
            lane=lane,
        )
        self._throwaway[temp.id] = temp
        for old in list(self._throwaway.values())[: max(0, len(self._throwaway) - _KEEP)]:
            if old.busy_with() is None:  # a running one stays, for get_execution
                del self._throwaway[old.id]
        try:
            result = await self._runner.run(
                temp, None, code, progress, wait=wait, cell_timeout=cell_timeout
            )
        except BaseException:
            await self._end(temp)
            raise
        execution = temp.find_run(result.execution_id)
        if execution.done:
            await self._end(temp)
            result.warnings.append(
                "scratch: ran in a throwaway kernel, now shut down; recorded in no notebook"
            )
        else:
            assert execution.task is not None
            execution.task.add_done_callback(lambda _: self._end_later(temp))
            result.warnings.append(
                "scratch: runs in a throwaway kernel, recorded in no notebook. "
                f"get_execution(session_id={temp.id!r}, execution_id={result.execution_id!r}) "
                "follows it; the kernel is shut down when it ends"
            )
        return dataclasses.replace(result, session_id=temp.id)

    def _end_later(self, temp: Session) -> None:
        if self._closing:  # aclose ends it itself; a task now would outlive the drain
            return
        task = background(self._end(temp), f"shutting down scratch kernel {temp.kernel_id} failed")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end(self, temp: Session) -> None:
        log.info("scratch run %s ended; shutting down its kernel %s", temp.id, temp.kernel_id)
        await self._starter.discard(temp.conn, temp.lane)

    async def aclose(self) -> None:
        """Shut down the throwaway kernels of runs still going (bounded, as discard is)."""
        self._closing = True
        for temp in list(self._throwaway.values()):
            if temp.busy_with() is not None:
                await self._end(temp)
        for task in list(self._ending):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        self._throwaway.clear()
