"""Sessions: a kernel on the gateway plus the notebook that records it.

:class:`SessionManager` is the application layer shared by the MCP server and the CLI: the use
cases (start, resume, continue, run, follow, control, shut down) and the table of sessions.
It holds server-wide state (sessions outlive any one MCP connection), serialises calls per
session, and lets different sessions run in parallel. The work is done by its collaborators:

* :mod:`~jlabgw.sessions.kernels`: a :class:`KernelStarter` (the seam to the gateway) and the
  spare kernel started ahead; :mod:`~jlabgw.sessions.lanes`: a job per resource shape;
* :mod:`~jlabgw.sessions.runner`: running and following cells; :mod:`~jlabgw.sessions.cells`:
  inserting, editing, re-running, deleting, moving them; :mod:`~jlabgw.sessions.control`:
  interrupting and restarting a kernel;
* :mod:`~jlabgw.sessions.opening`: the start use cases' shared steps (kernel, notebook,
  session); :mod:`~jlabgw.sessions.reattach`: the registry, take-back and hand-over;
  :mod:`~jlabgw.sessions.lost`: a session whose gateway is gone, and its siblings;
* attributes for the tools beyond a session's cells: :attr:`~SessionManager.notebooks`
  (read, list, ``start_notebook``), :attr:`~SessionManager.scratch` (runs recorded nowhere),
  :attr:`~SessionManager.resources` (a node's), :attr:`~SessionManager.transfers` (files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from jlabgw.cluster.backends.base import Backend
from jlabgw.config import Settings
from jlabgw.errors import (
    JlabgwError,
    KernelNotFoundError,
    NotebookError,
)
from jlabgw.jupyter.rest import GatewayClient
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.paths import resolve_notebook_path
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.progress import Progress, no_progress
from jlabgw.sessions import control
from jlabgw.sessions.cells import Cells
from jlabgw.sessions.execution import ExecutionResult
from jlabgw.sessions.holds import NotebookHolds
from jlabgw.sessions.kernels import (
    GatewayStarter,
    KernelStarter,
    SparePool,
    Started,
    list_kernelspecs,
)
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.lost import lose_with_siblings
from jlabgw.sessions.notebooks import Notebooks
from jlabgw.sessions.opening import Opening
from jlabgw.sessions.orphans import keep_job_for_orphans
from jlabgw.sessions.reattach import Reattach
from jlabgw.sessions.registry import SessionRegistry
from jlabgw.sessions.resources import Resources
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.scratch import Scratch
from jlabgw.sessions.session import Session, SessionTable, notebook_kernel
from jlabgw.sessions.status import ServerStatus, SessionStatus
from jlabgw.sessions.transfer import Transfers

__all__ = ["ExecutionResult", "SessionManager"]

log = logging.getLogger(__name__)


class SessionManager:
    """Creates, runs and tears down sessions on one backend's gateway."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        writer: NotebookWriter | None = None,
        on_change: Callable[[], None] | None = None,
        starter: KernelStarter | None = None,
    ) -> None:
        """``on_change``: sessions or gateways came or went (the status file is rewritten).
        ``starter``: how kernels are started and reached (default: on the lanes' gateways)."""
        self.settings = settings
        self.backend = backend
        self.writer = writer or NotebookWriter()
        self._owns_writer = writer is None
        # the notebooks this user's servers record into: one server's sessions at a time
        self._holds = NotebookHolds(settings.state_dir / "notebooks.json")
        self._sessions = SessionTable(self._holds)
        self._on_change = on_change or (lambda: None)
        # one lane (backend + gateway client) per resource shape; "" is the configured backend
        self._lanes = Lanes(settings, backend, self._changed)
        self._starter = starter or GatewayStarter(self._lanes, settings.kernel_name)
        self._pool = SparePool(self._starter, settings.spare_kernel, settings.kernel_name)
        self._runner = Runner(
            self._starter,
            self._lanes,
            settings.progress_interval,
            on_cell=self._save_registry,
            on_lost=self._lost,
        )
        self._cells = Cells(self._runner, self._save_registry)
        self._opening = Opening(
            self._pool, self._starter, self._sessions, self.writer, settings, self._changed
        )
        self.scratch = Scratch(self._pool, self._starter, self._runner, self._lost)
        self.resources = Resources(self._lanes, self.scratch, settings.notebook_dir)
        self.transfers = Transfers(settings, self._lanes, self._sessions)
        self.notebooks = Notebooks(
            settings,
            self._sessions,
            self._holds,
            self.writer,
            self._opening,
            self._lanes,
            backend.name,
        )
        # Sessions on a batch job outlive this server: the registry lets the next one take
        # them back (reattach). None for backends whose kernels stop with the server.
        name = backend.registry_name()
        registry = SessionRegistry(settings.state_dir / "sessions" / name) if name else None
        self._registry = registry
        self._reattach = Reattach(
            registry,
            self._sessions,
            self._lanes,
            self._starter,
            self._runner,
            self.writer,
            settings.kernel_name,
        )

    @property
    def _spare(self) -> asyncio.Task[Started] | None:
        """The spare kernel's start, done or under way (tests look at it)."""
        return self._pool.task

    def _changed(self) -> None:
        """Sessions came or went: the status file and the registry are rewritten."""
        self._on_change()
        self._save_registry()

    def _save_registry(self) -> None:
        """A cell started or ended: only the registry (off-thread) needs to know; the status
        file's fsynced rewrite would cost every cell ~1 ms on its reply path."""
        self._reattach.save()

    async def _lost(self, session: Session, why: str) -> None:
        """``session``'s gateway (batch job) is gone for good, ``why``: it and the other
        sessions on that gateway are lost (see :func:`.lost.lose_with_siblings`)."""
        if await lose_with_siblings(self._sessions, session, why):
            self._changed()

    async def ready(self) -> None:
        """Take back the sessions a previous server left on this backend's gateway (once)."""
        if await self._reattach.ready():
            self._changed()

    # -- gateway -------------------------------------------------------------------------------

    async def gateway(self, progress: Progress | None = None, lane: str = "") -> GatewayClient:
        """The REST client for a lane's gateway (default: the configured backend's), starting
        the gateway (submitting the job) if needed."""
        return await self._lanes.gateway(progress, lane)

    async def kernelspecs(self, lane: str = "") -> dict[str, Any]:
        return await self._lanes.kernelspecs(lane)

    async def list_kernelspecs(self) -> list[dict[str, Any]]:
        """The kernels the gateway can start, the default first."""
        return list_kernelspecs(await self.kernelspecs(), self.settings.kernel_name)

    # -- the table -----------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        return self._sessions.get(session_id)

    def list(self) -> list[SessionStatus]:
        return [s.describe() for s in self._sessions]

    def status(self) -> ServerStatus:
        return ServerStatus(
            server_pid=os.getpid(),
            backend=self.backend.describe(),
            notebook_dir=str(self.settings.notebook_dir),
            spare_kernel=self._pool.state,
            sessions=self.list(),
            jobs=self._lanes.jobs([s.lane for s in self._sessions]),
        )

    # -- opening a session ---------------------------------------------------------------------

    def prepare_spare(self) -> None:
        """Start a kernel ahead, for the next session (no-op if one is there or disabled)."""
        self._pool.prepare()

    async def start_new(
        self,
        experiment_name: str,
        progress: Progress = no_progress,
        notebook_path: str | None = None,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """New kernel (``kernel_name``, default JLABGW_KERNEL_NAME) and a new notebook named
        after the experiment; on ``profile`` of the config file (another cluster) if given.

        With ``notebook_path`` (CLI ``run --notebook``): append to that notebook if it exists
        (nothing in it is re-run), else create it. ``resources`` (partition, gpus, cpus, mem,
        time) puts the kernel on a job of that shape, shared with other sessions asking for
        the same, submitted if there is none yet.
        """
        lane = await self._lanes.lane_for(resources, profile)
        path = None
        if notebook_path is not None:
            path = resolve_notebook_path(
                self.settings.notebook_dir, notebook_path, must_exist=False
            )
            self._sessions.refuse_if_held(path)
        started, doc = await self._opening.kernel_and_doc(
            progress,
            kernel_name,
            lane,
            lambda started: self._opening.open_or_create(path, experiment_name, started.metadata),
        )
        session = await self._opening.register(experiment_name, started, doc, lane)
        return session.info(self._lanes.backend(lane).name)

    async def resume(
        self,
        experiment_name: str,
        notebook_path: str,
        progress: Progress = no_progress,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """New kernel on an existing notebook; re-run its code cells in order, in place.

        The kernel is ``kernel_name``, else the one the notebook names, else the default."""
        path = resolve_notebook_path(self.settings.notebook_dir, notebook_path, must_exist=True)
        self._sessions.refuse_if_held(path)
        doc = NotebookDoc.open(path, self.writer)
        name = kernel_name or notebook_kernel(doc.nb)
        lane = await self._lanes.lane_for(resources)
        started = await self._pool.take(progress, name, lane)
        session = await self._opening.register(experiment_name, started, doc, lane)
        with doc.editing() as nb:  # once it is ours: nothing is written into a held notebook
            nb.metadata.update(started.metadata)
        executed, failed = await self._runner.rerun(session, progress)
        return session.info(self.backend.name, executed_cells=executed, failed_cells=failed)

    async def continue_(
        self,
        experiment_name: str,
        notebook_path: str,
        progress: Progress = no_progress,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Fork a notebook to a new file with a fresh kernel; nothing is re-run."""
        path = resolve_notebook_path(self.settings.notebook_dir, notebook_path, must_exist=True)
        holder = self._sessions.holder_of(path)
        source = holder.doc if holder else NotebookDoc.open(path, self.writer)
        _, nb = source.snapshot()
        name = kernel_name or notebook_kernel(nb)
        lane = await self._lanes.lane_for(resources)
        started, doc = await self._opening.kernel_and_doc(
            progress, name, lane, lambda started: self._opening.fork(path, nb, started.metadata)
        )
        session = await self._opening.register(experiment_name, started, doc, lane)
        return session.info(self.backend.name, original_notebook=str(path), cells=len(doc.nb.cells))

    # -- running code --------------------------------------------------------------------------

    async def execute(
        self,
        session_id: str,
        code: str,
        progress: Progress = no_progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
        cell_index: int = -1,
    ) -> ExecutionResult:
        """Run ``code`` in a new cell at ``cell_index`` (-1: appended); see :meth:`Runner.run`."""
        return await self._cells.execute(
            self.get(session_id),
            code,
            progress,
            cell_index=cell_index,
            wait=wait,
            cell_timeout=cell_timeout,
            queue=queue,
        )

    async def run_cell(
        self,
        session_id: str,
        cell_index: int,
        progress: Progress = no_progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
    ) -> ExecutionResult:
        """Re-run an existing code cell in place (outputs replaced, a new count)."""
        session = self.get(session_id)
        return await self._cells.run_cell(
            session, cell_index, progress, wait=wait, cell_timeout=cell_timeout, queue=queue
        )

    async def edit_cell(
        self,
        session_id: str,
        cell_index: int,
        code: str,
        progress: Progress = no_progress,
        *,
        wait: float | None = None,
    ) -> ExecutionResult | str:
        """Replace a cell's source. Code cells are re-executed; markdown cells just change."""
        return await self._cells.edit(self.get(session_id), cell_index, code, progress, wait=wait)

    async def get_execution(
        self,
        session_id: str,
        execution_id: str | None = None,
        progress: Progress = no_progress,
        *,
        wait: float | None = None,
    ) -> ExecutionResult:
        """Output added since the last report of an execution (default: the latest one),
        waiting up to ``wait`` seconds for it to finish."""
        session = self.scratch.get(session_id) or self.get(session_id)
        execution = session.find_run(execution_id)
        return await self._runner.follow(session, execution, progress, wait)

    async def add_markdown(
        self, session_id: str, markdown: str, cell_index: int = -1
    ) -> dict[str, Any]:
        return self._cells.add_markdown(self.get(session_id), markdown, cell_index)

    async def delete_cell(self, session_id: str, cell_index: int) -> dict[str, Any]:
        return self._cells.delete(self.get(session_id), cell_index)

    async def move_cell(self, session_id: str, from_index: int, to_index: int) -> dict[str, Any]:
        return self._cells.move(self.get(session_id), from_index, to_index)

    # -- kernel control ------------------------------------------------------------------------

    async def interrupt(self, session_id: str) -> str:
        return await control.interrupt(self._starter, self._runner, self.get(session_id))

    async def restart(self, session_id: str) -> str:
        return await control.restart(self._starter, self._runner, self.get(session_id))

    async def shutdown(self, session_id: str, *, force: bool = False) -> str:
        """Stop the session's kernel. Refused (unless ``force``) while its notebook cannot be
        written: the kernel then holds the only complete record of the work."""
        session = self.get(session_id)
        if not force:
            try:
                await asyncio.to_thread(session.doc.flush)
            except NotebookError as exc:
                raise NotebookError(
                    f"not shutting down session {session_id}: {exc}. Its kernel is kept so "
                    "that nothing is lost; free space (or fix the permissions) and shut it "
                    "down again"
                ) from exc
        self._sessions.remove(session_id)
        self._changed()
        await session.conn.close()
        with contextlib.suppress(KernelNotFoundError):
            await self._starter.delete(session.kernel_id, session.lane)
        await asyncio.to_thread(session.doc.flush)
        return f"session {session_id} shut down; notebook saved at {session.doc.path}"

    async def aclose(self) -> None:
        """Stop all kernels (or hand them over to the next server, on a kept job), the
        gateway clients, the shaped jobs and the writer (the backend is the caller's)."""
        await self._pool.close()
        await self.scratch.aclose()
        await self._reattach.hand_over()
        for session in self._sessions:
            try:
                await self.shutdown(session.id, force=True)
            except JlabgwError as exc:
                log.warning("shutting down session %s: %s", session.id, exc)
        await self._reattach.close()
        if self._registry is not None:
            await asyncio.to_thread(keep_job_for_orphans, self._registry, self.backend)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._holds.release_all)
        await self._lanes.aclose()
        if self._owns_writer:
            await asyncio.to_thread(self.writer.close)
        else:
            try:
                await asyncio.to_thread(self.writer.flush)
            except JlabgwError as exc:
                log.error("%s", exc)
