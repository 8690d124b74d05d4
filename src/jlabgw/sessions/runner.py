"""Running cells and following them across tool calls.

A run is its own task: if the caller goes away (an MCP client cancels a long call), the cell
keeps running and its outputs keep flowing into the notebook. Nothing is ever re-sent to a
kernel, so a cell never runs twice. One cell runs at a time per session (the session's lock);
a call on a busy session is refused, naming the run in the way, unless it asks to queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

from jlabgw.errors import (
    CellIndexError,
    CodeTooLargeError,
    GatewayError,
    SessionBusyError,
    SessionLostError,
)
from jlabgw.jupyter.channels import Message
from jlabgw.notebook.recorder import OutputRecorder, finish_cell, resume_point
from jlabgw.progress import Progress
from jlabgw.sessions.execution import Execution, ExecutionResult
from jlabgw.sessions.kernels import KernelStarter
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.session import Session
from jlabgw.sessions.tasks import background

__all__ = ["Runner"]

log = logging.getLogger(__name__)

_ADOPT_CHECK = 3.0  # seconds between checks that an adopted cell still runs
_MAX_CODE_BYTES = 9 * 2**20  # the gateway drops a WebSocket on messages over 10 MiB
_KEEP_RUNS = 20  # finished executions kept for get_execution, per session
_LEFT = "an execution ended after its caller left"


class Runner:
    """Runs cells of sessions on their kernels and reports on them, bounded in time."""

    def __init__(
        self,
        starter: KernelStarter,
        lanes: Lanes,
        progress_interval: float,
        on_cell: Callable[[], None],
        on_lost: Callable[[Session, str], Awaitable[None]],
    ) -> None:
        """``on_cell``: a cell started or ended (the registry names the running request).
        ``on_lost(session, why)``: a session's gateway is gone for good (``why``); it is no
        longer a session, and every later call on it says so."""
        self._starter = starter
        self._lanes = lanes
        self._progress_interval = progress_interval
        self._on_cell = on_cell
        self._on_lost = on_lost

    async def run(
        self,
        session: Session,
        index: int | None,
        code: str | None,
        progress: Progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
        before: NotebookNode | None = None,
        cell: NotebookNode | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in a new cell (index None; put before the cell ``before``, or at the
        end) or in cell ``index`` (new source if given). ``cell``: that cell itself, found
        with its index under the document's lock (:meth:`NotebookDoc.cell_at`).

        Waits up to ``wait`` seconds (None: until done); a run still going then is reported
        with the output so far and goes on (``get_execution`` follows it). ``cell_timeout``
        interrupts the cell after that many seconds. On a busy session this refuses, naming
        the run in the way, unless ``queue``."""
        size = len(code.encode()) if code is not None else 0
        if size > _MAX_CODE_BYTES:
            raise CodeTooLargeError(
                f"the code is {size / 2**20:.1f} MiB; the gateway takes messages up to 10 MiB "
                "(tornado's WebSocket limit). Put the data in a file next to the notebook and "
                "load it from the code instead"
            )
        busy = session.busy_with()
        if busy is not None and not queue:
            where = f"cell {busy.cell_index}" if busy.cell_index is not None else "queued"
            raise SessionBusyError(
                f"session {session.id} is still running execution {busy.id} ({where}, "
                f"{busy.elapsed:.0f} s). get_execution(session_id, execution_id={busy.id!r}) "
                "follows it, interrupt_kernel stops it, or pass queue=true to run this after it"
            )
        execution = Execution(session.doc, cell_timeout)
        # the cell itself, not its index: a person's edit merged meanwhile may move it
        target = cell
        if target is None and index is not None:
            target = session.doc.cell_at(index)[1]
        # The execution is its own task: a caller that stops waiting (or is cancelled)
        # leaves the cell running and recording into the notebook.
        run = self._execution(session, execution, target, code, before)
        execution.task = background(run, _LEFT)
        session.runs[execution.id] = execution
        while len(session.runs) > _KEEP_RUNS and next(iter(session.runs.values())).done:
            session.runs.pop(next(iter(session.runs)))
        return await self.follow(session, execution, progress, wait)

    async def rerun(self, session: Session, progress: Progress) -> tuple[int, list[dict[str, Any]]]:
        """Re-run the notebook's code cells in order, in place: how many ran, and the ones
        that failed (cell_index, ename, evalue)."""
        code_cells = [
            i
            for i, c in enumerate(session.doc.nb.cells)
            if c.cell_type == "code" and c.source.strip()
        ]
        failed: list[dict[str, Any]] = []
        for n, index in enumerate(code_cells, 1):
            await progress(n - 1, len(code_cells), f"re-running cell {index}")
            result = await self.run(session, index, None, progress)
            if result.is_error:
                err = next((o for o in result.outputs if o.get("output_type") == "error"), None)
                failed.append(
                    {
                        "cell_index": index,
                        "ename": err.get("ename") if err else result.status,
                        "evalue": err.get("evalue") if err else "",
                    }
                )
        await progress(len(code_cells), len(code_cells), "notebook re-run finished")
        return len(code_cells), failed

    async def follow(
        self,
        session: Session,
        execution: Execution,
        progress: Progress,
        wait: float | None,
    ) -> ExecutionResult:
        """What ``execution`` added since its last report, once it ended or ``wait`` passed."""
        assert execution.task is not None
        notices = self._lanes.backend(session.lane).notices
        t0 = time.monotonic()
        while True:
            step = self._progress_interval
            if wait is not None:
                step = min(step, max(0.0, t0 + wait - time.monotonic()))
            done, _ = await asyncio.wait({execution.task}, timeout=step)
            if done or (wait is not None and time.monotonic() >= t0 + wait):
                break
            line = execution.last_line[-200:]
            state = "queued" if execution.cell is None else "running"
            message = f"{state} for {execution.elapsed:.0f} s" + (f": {line}" if line else "")
            for notice in await notices():
                message += f" | warning: {notice}"
            await progress(execution.elapsed, None, message)
        reply = execution.task.result() if done else None  # raises what the run raised
        outputs, redrawn = execution.new_outputs()
        execution.reports += 1
        warnings = [w for w in (session.doc.write_error, session.doc.conflict) if w]
        warnings += await notices()
        if execution.timed_out:
            warnings.append(
                f"the cell was interrupted after its timeout of {execution.timeout:g} s"
            )
        if reply is None:
            status = "queued" if execution.cell is None else "running"
        else:
            status = str(reply.get("status", "ok"))
        return ExecutionResult(
            session_id=session.id,
            execution_id=execution.id,
            cell_index=self._where(session, execution),
            execution_count=reply.get("execution_count") if reply else None,
            status=status,
            outputs=outputs,
            notebook_path=execution.doc.path,  # a scratch run's: not the session's
            elapsed=execution.elapsed,
            redrawn=redrawn,
            follow_up=execution.reports > 1,
            warnings=warnings,
        )

    @staticmethod
    def _where(session: Session, execution: Execution) -> int | None:
        """The run's cell index in the notebook as it is on disk now (a person may have
        added or moved cells above it since it started)."""
        if execution.cell is None or execution.doc is not session.doc:
            return execution.cell_index  # queued, or a scratch run's (not in the notebook)
        with contextlib.suppress(CellIndexError):  # deleted by a person: where it was
            execution.cell_index = session.doc.index_of(execution.cell)
        return execution.cell_index

    async def _execution(
        self,
        session: Session,
        execution: Execution,
        target: NotebookNode | None,
        code: str | None,
        before: NotebookNode | None = None,
    ) -> dict[str, Any]:
        async with session.lock:
            doc = session.doc
            if target is None:
                cell = new_code_cell(code or "")
                index = doc.insert_cell(cell, before)
            else:
                cell = target
                index = doc.index_of(cell)
                with doc.editing(cell):
                    if code is not None:
                        cell.source = code
                    cell.outputs = []
                    finish_cell(cell, None)  # no count, and no mark of an earlier run
            recorder = OutputRecorder(doc, cell, session.displays)
            execution.begin(cell, index, recorder)
            doc.hold(cell)  # a person deleting it meanwhile is a conflict, not a lost output
            session.executions += 1
            watchdog = None
            if execution.timeout is not None:
                watchdog = asyncio.get_running_loop().call_later(
                    execution.timeout, self._on_timeout, session, execution
                )

            def sent(msg_id: str) -> None:
                execution.msg_id = msg_id
                self._on_cell()  # the registry now names the running request

            try:
                reply = await session.conn.execute(cell.source, recorder, on_sent=sent)
            except GatewayError as exc:  # the gateway may be gone: ask the backend
                await self.raise_if_lost(session, exc)
                raise
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                execution.msg_id = None
                self._on_cell()
                doc.release(cell)
            content: dict[str, Any] = reply.get("content", {})
            with doc.editing(cell):
                finish_cell(cell, content.get("execution_count"))
            return content

    def _on_timeout(self, session: Session, execution: Execution) -> None:
        execution.timed_out = True
        log.info("execution %s passed its timeout; interrupting", execution.id)
        interrupt = self._starter.interrupt(session.kernel_id, session.lane)
        background(interrupt, f"interrupting execution {execution.id} failed")

    async def raise_if_lost(self, session: Session, exc: Exception) -> None:
        """After ``exc`` from the gateway: if the gateway or its job is gone for good, raise
        an error that says so and how to carry on (as every later call on the session will);
        else return, for the caller to raise ``exc``."""
        why = await session.conn.gateway_lost()
        if why is None:
            return
        await self._on_lost(session, why)
        await session.conn.close()
        await asyncio.to_thread(session.doc.flush)
        raise SessionLostError(session.lost_message(why)) from exc

    # -- a cell the previous server started (reattach) -----------------------------------------

    def adopt(self, session: Session, execution_id: str | None, msg_id: str, index: int) -> None:
        """Follow a cell a previous server started on ``session``'s kernel (request ``msg_id``
        in cell ``index``) as an execution of this one. Before the session connects."""
        doc = session.doc
        index = doc.cell_index(index)
        execution = Execution(doc)
        execution.id = execution_id or execution.id
        execution.msg_id = msg_id
        cell = doc.nb.cells[index]
        # what the dead server wrote of the cell ends at this message: the gateway
        # re-sends what came after it, which that server may have received but not written
        session.conn.resume_after(resume_point(cell))
        execution.begin(cell, index, OutputRecorder(doc, cell, session.displays))
        doc.hold(cell)
        execution.task = background(self._adopted(session, execution), _LEFT)
        session.runs[execution.id] = execution

    async def _adopted(self, session: Session, execution: Execution) -> dict[str, Any]:
        """A cell the previous server started: its output since then, and its end."""
        assert execution.msg_id is not None
        assert execution.cell is not None
        async with session.lock:
            adopted = asyncio.ensure_future(
                session.conn.adopt(execution.msg_id, execution.recorder)
            )
            try:
                reply = await self._until_adopted(session, adopted)
            except GatewayError as exc:  # the gateway may be gone: ask the backend
                await self.raise_if_lost(session, exc)
                raise
            finally:
                adopted.cancel()
                session.doc.release(execution.cell)
            content: dict[str, Any] = reply.get("content", {})
            with session.doc.editing(execution.cell):
                finish_cell(execution.cell, content.get("execution_count"))
            self._on_cell()
            return content

    async def _until_adopted(self, session: Session, adopted: asyncio.Future[Message]) -> Message:
        """The adopted request's reply. If the cell ended just before the previous server
        died (its end consumed, the registry not yet updated), no reply will come: the
        gateway's record of the kernel going idle, and staying so, ends the wait."""
        idle_checks = 0
        while True:
            done, _ = await asyncio.wait({adopted}, timeout=_ADOPT_CHECK)
            if done:
                return adopted.result()
            state = await self._starter.execution_state(session.kernel_id, session.lane)
            idle_checks = idle_checks + 1 if state == "idle" else 0
            if idle_checks >= 2:
                log.warning(
                    "session %s: the cell the previous server ran ended unseen; its last "
                    "outputs may be missing from the notebook",
                    session.id,
                )
                return {"content": {"status": "ok", "execution_count": None}}
