"""Sessions: a kernel on the gateway plus the notebook that records it.

:class:`SessionManager` is the application layer shared by the MCP server and the CLI. It holds
server-wide state (sessions outlive any one MCP connection), serialises calls per session,
and lets different sessions run in parallel.

An execution runs as its own task: if the caller goes away (an MCP client cancels a long
call), the cell keeps running and its outputs keep flowing into the notebook. Nothing is ever
re-sent to a kernel, so a cell never runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat.v4 import new_code_cell, new_markdown_cell

from jlabgw.cluster.backends.base import Backend
from jlabgw.config import Settings
from jlabgw.errors import (
    CodeTooLargeError,
    ConfigError,
    GatewayError,
    JlabgwError,
    KernelDiedError,
    KernelNotFoundError,
    KernelSpecError,
    KernelStartError,
    NotebookError,
    SessionBusyError,
    SessionLostError,
    UnknownExecutionError,
    UnknownSessionError,
)
from jlabgw.jupyter.channels import KernelConnection, Message
from jlabgw.jupyter.rest import GatewayClient
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.paths import experiment_filename, resolve_notebook_path
from jlabgw.notebook.recorder import DisplayIndex, OutputRecorder, finish_cell, resume_point
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.progress import Progress
from jlabgw.sessions.execution import Execution, ExecutionResult
from jlabgw.sessions.lanes import Lane, create_lane, shape_of
from jlabgw.sessions.registry import SessionRegistry
from jlabgw.sessions.status import LaneStatus, ServerStatus, SessionStatus

__all__ = ["ExecutionResult", "Progress", "Session", "SessionManager"]

log = logging.getLogger(__name__)


_KERNEL_READY_TIMEOUT = 120.0


@dataclass
class Session:
    id: str
    experiment_name: str
    kernel_id: str
    kernel_name: str
    conn: KernelConnection
    doc: NotebookDoc
    created_at: float = field(default_factory=time.time)
    displays: DisplayIndex = field(default_factory=DisplayIndex)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    executions: int = 0
    runs: dict[str, Execution] = field(default_factory=dict)  # recent executions, oldest first
    lane: str = ""  # the resource shape whose job runs the kernel ("": the default job)
    # waiting for the gateway, then the kernel's start until it answered kernel_info
    start_seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> SessionStatus:
        return SessionStatus(
            session_id=self.id,
            experiment_name=self.experiment_name,
            kernel_id=self.kernel_id,
            kernel_name=self.kernel_name,
            notebook_path=str(self.doc.path),
            cells=len(self.doc.nb.cells),
            executions=self.executions,
            state="busy" if self.lock.locked() else "idle",
            created_at=self.created_at,
            start_seconds=self.start_seconds,
            notebook_write_error=self.doc.write_error,
            resources=self.lane or "default",
        )


async def _no_progress(done: float, total: float | None, message: str) -> None:
    return None


def _notebook_kernel(nb: Any) -> str | None:
    """The kernel spec a notebook names in its metadata, if any."""
    spec = nb.metadata.get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, dict) else None
    return str(name) if name else None


_Started = tuple[KernelConnection, dict[str, Any], dict[str, float]]
_SPARE_CHECK_TIMEOUT = 10.0
_SETTLE_TIMEOUT = 60.0  # for a kernel the gateway is auto-restarting to answer again
_DISCARD_TIMEOUT = 10.0
_ADOPT_CHECK = 3.0  # seconds between checks that an adopted cell still runs
_MAX_CODE_BYTES = 9 * 2**20  # the gateway drops a WebSocket on messages over 10 MiB
_KEEP_RUNS = 20  # finished executions kept for get_execution, per session


def _ok(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def _log_spare_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.info("starting a kernel ahead failed: %s", exc)


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    """An execution whose caller went away still ends somehow; log it instead of leaking it."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.info("an execution ended after its caller left: %s", exc)


class SessionManager:
    """Creates, runs and tears down sessions on one backend's gateway."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        writer: NotebookWriter | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.writer = writer or NotebookWriter()
        self._owns_writer = writer is None
        self._sessions: dict[str, Session] = {}
        self._on_change = on_change or (lambda: None)
        # one lane (backend + gateway client) per resource shape; "" is the configured backend
        self._lanes: dict[str, Lane] = {"": Lane(backend, self._changed)}
        self._lanes_lock = asyncio.Lock()
        # One kernel started ahead (JLABGW_SPARE_KERNEL): a new session takes it at once
        # instead of waiting ~0.5 s for a kernel to start, and another is started behind it.
        self._spare: asyncio.Task[_Started] | None = None
        self._closing = False
        # Sessions on a batch job outlive this server: the registry lets the next one take
        # them back (reattach). None for backends whose kernels stop with the server.
        name = backend.registry_name()
        self._registry = SessionRegistry(settings.state_dir / "sessions" / name) if name else None
        self._reattach_lock = asyncio.Lock()
        self._reattached = self._registry is None
        self._handing_over = False  # exiting with the kernels left running: registry frozen
        self._pruned: dict[str, str] = {}  # session id -> why a previous server's session is gone

    def _changed(self) -> None:
        """Sessions came or went: the status file and the registry are rewritten."""
        self._on_change()
        self._save_registry()

    def _save_registry(self) -> None:
        """A cell started or ended: only the registry (off-thread) needs to know; the status
        file's fsynced rewrite would cost every cell ~1 ms on its reply path."""
        if self._registry is not None and self._reattached and not self._handing_over:
            # the next server knows the default job only; shaped jobs end with this server
            records = [self._record(s) for s in self._sessions.values() if not s.lane]
            self._registry.save(self.backend.identity(), records)

    def _record(self, session: Session) -> dict[str, Any]:
        running = self._busy_with(session)
        return {
            "session_id": session.id,
            "experiment_name": session.experiment_name,
            "kernel_id": session.kernel_id,
            "kernel_name": session.kernel_name,
            "ws_session_id": session.conn.session_id,
            "notebook_path": str(session.doc.path),
            "executions": session.executions,
            "running": {
                "execution_id": running.id,
                "msg_id": running.msg_id,
                "cell_index": running.cell_index,
            }
            if running is not None and running.msg_id
            else None,
        }

    # -- reattach ------------------------------------------------------------------------------

    async def ready(self) -> None:
        """Take back the sessions a previous server left on this backend's gateway (once)."""
        if self._reattached:
            return
        async with self._reattach_lock:
            if not self._reattached:
                await self._reattach()
                self._reattached = True
                self._changed()

    async def _reattach(self) -> None:
        assert self._registry is not None
        identity, records = self._registry.load()
        if not records:
            return
        gw = await self.gateway()  # unreachable: raise, and try again on the next call
        if identity != self.backend.identity():
            self._gone(records, f"they ran on {identity}, which is gone")
            return
        for record in records:
            try:
                await self._take_back(gw, record)
            except (JlabgwError, OSError, KeyError, ValueError) as exc:
                self._gone([record], str(exc))

    def _gone(self, records: list[dict[str, Any]], why: str) -> None:
        for record in records:
            name = Path(str(record.get("notebook_path", "?"))).name
            message = (
                f"session {record.get('session_id')} was started by an earlier jlabgw server "
                f"and cannot be taken back: {why}. Its kernel state is gone; the notebook "
                f"{name} is intact: start_session_resume_notebook with notebook_path={name!r} "
                "rebuilds it"
            )
            log.warning("%s", message)
            self._pruned[str(record.get("session_id"))] = message

    async def _take_back(self, gw: GatewayClient, record: dict[str, Any]) -> None:
        kernel_id = str(record["kernel_id"])
        try:
            await gw.get_kernel(kernel_id)
        except KernelNotFoundError as exc:
            raise KernelNotFoundError(f"its kernel {kernel_id} is gone") from exc
        path = Path(record["notebook_path"])
        doc = NotebookDoc.open(path, self.writer)
        conn = KernelConnection(
            gw.endpoint,
            kernel_id,
            str(record["ws_session_id"]),
            lost=functools.partial(self.backend.lost_since, self.backend.generation),
        )
        conn.execution_count = None  # what the previous server last saw is not known
        session = Session(
            id=str(record["session_id"]),
            experiment_name=str(record.get("experiment_name", "")),
            kernel_id=kernel_id,
            kernel_name=str(record.get("kernel_name", self.settings.kernel_name)),
            conn=conn,
            doc=doc,
            executions=int(record.get("executions", 0)),
        )
        running = record.get("running")
        if running and running.get("msg_id") and running.get("cell_index") is not None:
            index = doc.cell_index(int(running["cell_index"]))
            execution = Execution(doc)
            execution.id = str(running.get("execution_id") or execution.id)
            execution.msg_id = str(running["msg_id"])
            cell = doc.nb.cells[index]
            # what the dead server wrote of the cell ends at this message: the gateway
            # re-sends what came after it, which that server may have received but not written
            conn.resume_after(resume_point(cell))
            execution.begin(cell, index, OutputRecorder(doc, cell, session.displays))
            execution.task = asyncio.create_task(self._adopted(session, execution))
            execution.task.add_done_callback(_consume_outcome)
            session.runs[execution.id] = execution
        else:
            await conn.connect()  # replays anything buffered for the session id (ignored)
        self._sessions[session.id] = session
        log.info("took back session %s: kernel %s, notebook %s", session.id, kernel_id, path)

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
                await self._raise_if_lost(session, exc)
                raise
            finally:
                adopted.cancel()
            content: dict[str, Any] = reply.get("content", {})
            with session.doc.editing(execution.cell):
                finish_cell(execution.cell, content.get("execution_count"))
            self._save_registry()
            return content

    # -- gateway -----------------------------------------------------------------------------

    async def gateway(self, progress: Progress | None = None, lane: str = "") -> GatewayClient:
        """The REST client for a lane's gateway (default: the configured backend's), starting
        the gateway (submitting the job) if needed."""
        return await self._lanes[lane].gateway(progress)

    async def kernelspecs(self, lane: str = "") -> dict[str, Any]:
        return await self._lanes[lane].kernelspecs()

    async def _lane_for(self, resources: dict[str, Any] | None) -> str:
        """The lane for a resource request, created (not started) if new."""
        if not resources or all(v is None for v in resources.values()):
            return ""
        if not self.backend.supports_resources:
            raise ConfigError(
                "resource requests (partition, gpus, cpus, mem, time) need the slurm backend; "
                f"this server uses {self.backend.name!r} (JLABGW_BACKEND)"
            )
        key, shaped = shape_of(self.settings, resources)
        async with self._lanes_lock:
            if key not in self._lanes:
                self._lanes[key] = create_lane(shaped, self._changed)
                log.info("new resource shape %s: job %s", key, shaped.job_name)
        return key

    async def list_kernelspecs(self) -> list[dict[str, Any]]:
        """The kernels the gateway can start, the default first."""
        specs = (await self.kernelspecs()).get("kernelspecs", {})
        listed = [
            {
                "name": name,
                "display_name": entry.get("spec", {}).get("display_name", name),
                "language": entry.get("spec", {}).get("language", ""),
                "default": name == self.settings.kernel_name,
            }
            for name, entry in sorted(specs.items())
        ]
        return sorted(listed, key=lambda spec: not spec["default"])

    async def _until_adopted(self, session: Session, adopted: asyncio.Future[Message]) -> Message:
        """The adopted request's reply. If the cell ended just before the previous server
        died (its end consumed, the registry not yet updated), no reply will come: the
        gateway's record of the kernel going idle, and staying so, ends the wait."""
        gw = await self.gateway()
        idle_checks = 0
        while True:
            done, _ = await asyncio.wait({adopted}, timeout=_ADOPT_CHECK)
            if done:
                return adopted.result()
            state = (await gw.get_kernel(session.kernel_id)).get("execution_state")
            idle_checks = idle_checks + 1 if state == "idle" else 0
            if idle_checks >= 2:
                log.warning(
                    "session %s: the cell the previous server ran ended unseen; its last "
                    "outputs may be missing from the notebook",
                    session.id,
                )
                return {"content": {"status": "ok", "execution_count": None}}

    # -- lookup ------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            if session_id in self._pruned:
                raise SessionLostError(self._pruned[session_id]) from None
            known = ", ".join(sorted(self._sessions)) or "none"
            raise UnknownSessionError(
                f"unknown session_id {session_id!r} (running sessions: {known}). Start one with "
                "start_new_session, or reopen a notebook with start_session_resume_notebook"
            ) from None

    def list(self) -> list[SessionStatus]:
        return [s.describe() for s in self._sessions.values()]

    def status(self) -> ServerStatus:
        spare = self._spare
        return ServerStatus(
            server_pid=os.getpid(),
            backend=self.backend.describe(),
            notebook_dir=str(self.settings.notebook_dir),
            spare_kernel=None
            if spare is None
            else ("starting" if not spare.done() else "ready" if _ok(spare) else "failed"),
            sessions=self.list(),
            jobs=[
                LaneStatus(
                    key or "default",
                    lane.backend.describe().job,
                    sum(s.lane == key for s in self._sessions.values()),
                )
                for key, lane in self._lanes.items()
            ]
            if self.backend.supports_resources
            else [],
        )

    def _holder_of(self, path: Path) -> Session | None:
        return next((s for s in self._sessions.values() if s.doc.path == path), None)

    # -- session creation ----------------------------------------------------------------------

    def prepare_spare(self) -> None:
        """Start a kernel ahead, for the next session (no-op if one is there or disabled)."""
        if not self.settings.spare_kernel or self._spare is not None or self._closing:
            return
        self._spare = asyncio.create_task(self._start_kernel(_no_progress), name="spare-kernel")
        self._spare.add_done_callback(_log_spare_failure)

    async def _take_kernel(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> _Started:
        """The spare kernel if it is alive, else a new one; then a new spare behind it.

        The spare runs the default kernel spec on the default job; another ``kernel_name`` or
        resource shape is started afresh."""
        if (kernel_name and kernel_name != self.settings.kernel_name) or lane:
            return await self._start_kernel(progress, kernel_name, lane)
        spare, self._spare = self._spare, None
        started = await self._claim(spare, progress) if spare is not None else None
        if started is None:
            started = await self._start_kernel(progress)
        self.prepare_spare()
        return started

    async def _claim(self, spare: asyncio.Task[_Started], progress: Progress) -> _Started | None:
        t0 = time.monotonic()
        await progress(0, None, "taking the kernel started ahead")
        try:
            # shielded: a caller that goes away must not cancel the spare's start half-way
            conn, metadata, _ = await asyncio.shield(spare)
        except asyncio.CancelledError:
            if self._spare is None and not spare.cancelled():
                self._spare = spare  # still good for the next caller
            else:
                spare.add_done_callback(self._discard_later)
            raise
        except JlabgwError as exc:
            log.info("the kernel started ahead failed (%s); starting a new one", exc)
            return None
        try:
            async with asyncio.timeout(_SPARE_CHECK_TIMEOUT):
                await conn.kernel_info()  # alive: not culled, gateway still there
        except (JlabgwError, TimeoutError) as exc:
            log.info("the kernel started ahead is gone (%s); starting a new one", exc)
            await self._discard_kernel(conn)
            return None
        return conn, metadata, {"gateway": 0.0, "kernel": round(time.monotonic() - t0, 3)}

    def _discard_later(self, spare: asyncio.Task[_Started]) -> None:
        if not spare.cancelled() and spare.exception() is None:
            conn = spare.result()[0]
            task = asyncio.create_task(self._discard_kernel(conn))
            task.add_done_callback(_log_spare_failure)

    async def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if not spare.done():
            spare.cancel()  # _start_kernel deletes a kernel it started when cancelled
        with contextlib.suppress(asyncio.CancelledError, JlabgwError):
            conn = (await spare)[0]
            await self._discard_kernel(conn)

    async def _start_kernel(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> _Started:
        """A new kernel, answering; its notebook metadata; seconds spent per step."""
        t0 = time.monotonic()
        await progress(0, None, "starting the gateway")
        gw = await self.gateway(progress, lane)
        backend = self._lanes[lane].backend
        t_gateway = time.monotonic()
        name = kernel_name or self.settings.kernel_name
        specs = await self.kernelspecs(lane)
        if name not in specs.get("kernelspecs", {}):
            available = ", ".join(sorted(specs.get("kernelspecs", {}))) or "none"
            raise KernelSpecError(
                f"kernel {name!r} is not installed on the gateway (available: {available}); "
                "pass one of those as kernel_name (list_kernelspecs describes them), or "
                "install it where the gateway runs"
            )
        await progress(0, None, f"starting a {name} kernel")
        generation = backend.generation
        model = await gw.start_kernel(name)
        conn = KernelConnection(
            gw.endpoint, model["id"], lost=functools.partial(backend.lost_since, generation)
        )
        try:
            async with asyncio.timeout(_KERNEL_READY_TIMEOUT):
                reply = await conn.kernel_info()
        except TimeoutError as exc:
            await conn.close()
            with contextlib.suppress(JlabgwError):
                await gw.delete_kernel(model["id"])
            raise KernelStartError(
                f"the {name} kernel did not answer within {_KERNEL_READY_TIMEOUT:.0f} s of "
                "starting; see the gateway log (jlabgw status) for its error"
            ) from exc
        except BaseException:
            await conn.close()
            with contextlib.suppress(JlabgwError):
                await gw.delete_kernel(model["id"])
            raise
        spec = specs["kernelspecs"][name]["spec"]
        metadata = {
            "kernelspec": {
                "name": name,
                "display_name": spec.get("display_name", name),
                "language": spec.get("language", ""),
            },
            "language_info": reply["content"].get("language_info", {}),
        }
        now = time.monotonic()
        timings = {
            "gateway": round(t_gateway - t0, 3),
            "kernel": round(now - t_gateway, 3),
        }
        return conn, metadata, timings

    def _register(
        self,
        experiment_name: str,
        conn: KernelConnection,
        doc: NotebookDoc,
        timings: dict[str, float],
        lane: str = "",
    ) -> Session:
        session = Session(
            id=uuid.uuid4().hex[:12],
            experiment_name=experiment_name,
            kernel_id=conn.kernel_id,
            kernel_name=_notebook_kernel(doc.nb) or self.settings.kernel_name,
            conn=conn,
            doc=doc,
            start_seconds=timings,
            lane=lane,
        )
        self._sessions[session.id] = session
        log.info("session %s: kernel %s, notebook %s", session.id, conn.kernel_id, doc.path)
        self._changed()
        return session

    def _info(self, session: Session, **extra: Any) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "notebook_path": str(session.doc.path),
            "kernel_id": session.kernel_id,
            "kernel_name": session.kernel_name,
            "backend": self.backend.name,
            **({"resources": session.lane} if session.lane else {}),
            **extra,
        }

    async def _discard_kernel(self, conn: KernelConnection, lane: str = "") -> None:
        """Close and delete a kernel no session uses (bounded: the gateway may be gone)."""
        await conn.close()
        with contextlib.suppress(JlabgwError, TimeoutError):
            async with asyncio.timeout(_DISCARD_TIMEOUT):
                await (await self.gateway(lane=lane)).delete_kernel(conn.kernel_id)

    async def start_new(
        self,
        experiment_name: str,
        progress: Progress = _no_progress,
        notebook_path: str | None = None,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """New kernel (``kernel_name``, default JLABGW_KERNEL_NAME) and a new notebook named
        after the experiment.

        With ``notebook_path`` (CLI ``run --notebook``): append to that notebook if it exists
        (nothing in it is re-run), else create it. ``resources`` (partition, gpus, cpus, mem,
        time) puts the kernel on a job of that shape, shared with other sessions asking for
        the same, submitted if there is none yet.
        """
        lane = await self._lane_for(resources)
        path = None
        if notebook_path is not None:
            path = resolve_notebook_path(
                self.settings.notebook_dir, notebook_path, must_exist=False
            )
            self._refuse_if_held(path)
        conn, metadata, timings = await self._take_kernel(progress, kernel_name, lane)
        try:
            if path is not None and path.exists():
                doc = NotebookDoc.open(path, self.writer)
                with doc.editing() as nb:
                    nb.metadata.update(metadata)
            else:
                doc = NotebookDoc.create(
                    path.parent if path else self.settings.notebook_dir,
                    path.stem if path else experiment_filename(experiment_name),
                    self.writer,
                    metadata=metadata,
                )
        except BaseException:
            await self._discard_kernel(conn, lane)
            raise
        return self._info(self._register(experiment_name, conn, doc, timings, lane))

    async def resume(
        self,
        experiment_name: str,
        notebook_path: str,
        progress: Progress = _no_progress,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """New kernel on an existing notebook; re-run its code cells in order, in place.

        The kernel is ``kernel_name``, else the one the notebook names, else the default."""
        path = resolve_notebook_path(self.settings.notebook_dir, notebook_path, must_exist=True)
        self._refuse_if_held(path)
        doc = NotebookDoc.open(path, self.writer)
        name = kernel_name or _notebook_kernel(doc.nb)
        lane = await self._lane_for(resources)
        conn, metadata, timings = await self._take_kernel(progress, name, lane)
        with doc.editing() as nb:
            nb.metadata.update(metadata)
        session = self._register(experiment_name, conn, doc, timings, lane)
        code_cells = [
            i for i, c in enumerate(doc.nb.cells) if c.cell_type == "code" and c.source.strip()
        ]
        failed: list[dict[str, Any]] = []
        for n, index in enumerate(code_cells, 1):
            await progress(n - 1, len(code_cells), f"re-running cell {index}")
            result = await self._run_cell(session, index, None, progress)
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
        return self._info(session, executed_cells=len(code_cells), failed_cells=failed)

    async def continue_(
        self,
        experiment_name: str,
        notebook_path: str,
        progress: Progress = _no_progress,
        kernel_name: str | None = None,
        resources: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Fork a notebook to a new file with a fresh kernel; nothing is re-run."""
        path = resolve_notebook_path(self.settings.notebook_dir, notebook_path, must_exist=True)
        holder = self._holder_of(path)
        source = holder.doc if holder else NotebookDoc.open(path, self.writer)
        _, nb = source.snapshot()
        name = kernel_name or _notebook_kernel(nb)
        lane = await self._lane_for(resources)
        conn, metadata, timings = await self._take_kernel(progress, name, lane)
        try:
            nb.metadata.update(metadata)
            doc = NotebookDoc.create(
                path.parent,
                f"{path.stem}_continued",
                self.writer,
                cells=nb.cells,
                metadata=dict(nb.metadata),
            )
        except BaseException:
            await self._discard_kernel(conn, lane)
            raise
        session = self._register(experiment_name, conn, doc, timings, lane)
        return self._info(session, original_notebook=str(path), cells=len(doc.nb.cells))

    def _refuse_if_held(self, path: Path) -> None:
        holder = self._holder_of(path)
        if holder is not None:
            raise SessionBusyError(
                f"{path.name} is already open in session {holder.id}; keep using that session, "
                "or shutdown_session it first (start_session_continue_notebook forks a copy)"
            )

    # -- execution -----------------------------------------------------------------------------

    async def execute(
        self,
        session_id: str,
        code: str,
        progress: Progress = _no_progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` in a new cell; see :meth:`_run_cell` for the keywords."""
        session = self.get(session_id)
        return await self._run_cell(
            session, None, code, progress, wait=wait, cell_timeout=cell_timeout, queue=queue
        )

    async def edit_cell(
        self,
        session_id: str,
        cell_index: int,
        code: str,
        progress: Progress = _no_progress,
        *,
        wait: float | None = None,
    ) -> ExecutionResult | str:
        """Replace a cell's source. Code cells are re-executed; markdown cells just change."""
        session = self.get(session_id)
        index = session.doc.cell_index(cell_index)
        cell = session.doc.nb.cells[index]
        if cell.cell_type != "code":
            with session.doc.editing(cell):
                cell.source = code
            return f"cell {index} ({cell.cell_type}) updated; not executed"
        return await self._run_cell(session, index, code, progress, wait=wait)

    async def get_execution(
        self,
        session_id: str,
        execution_id: str | None = None,
        progress: Progress = _no_progress,
        *,
        wait: float | None = None,
    ) -> ExecutionResult:
        """Output added since the last report of an execution (default: the latest one),
        waiting up to ``wait`` seconds for it to finish."""
        session = self.get(session_id)
        if not session.runs:
            raise UnknownExecutionError(
                f"session {session_id} has not run any code yet; execute_code runs some"
            )
        if execution_id is None:
            execution = next(reversed(session.runs.values()))
        elif execution_id in session.runs:
            execution = session.runs[execution_id]
        else:
            known = ", ".join(session.runs)
            raise UnknownExecutionError(
                f"unknown execution_id {execution_id!r} in session {session_id} (recent: "
                f"{known}); omit execution_id for the latest"
            )
        return await self._follow(session, execution, progress, wait)

    def _busy_with(self, session: Session) -> Execution | None:
        return next((e for e in session.runs.values() if not e.done), None)

    async def _run_cell(
        self,
        session: Session,
        index: int | None,
        code: str | None,
        progress: Progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` in a new cell (index None) or in cell ``index`` (new source if given).

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
        busy = self._busy_with(session)
        if busy is not None and not queue:
            where = f"cell {busy.cell_index}" if busy.cell_index is not None else "queued"
            raise SessionBusyError(
                f"session {session.id} is still running execution {busy.id} ({where}, "
                f"{busy.elapsed:.0f} s). get_execution(session_id, execution_id={busy.id!r}) "
                "follows it, interrupt_kernel stops it, or pass queue=true to run this after it"
            )
        execution = Execution(session.doc, cell_timeout)
        # The execution is its own task: a caller that stops waiting (or is cancelled)
        # leaves the cell running and recording into the notebook.
        execution.task = asyncio.create_task(self._execution(session, execution, index, code))
        execution.task.add_done_callback(_consume_outcome)
        session.runs[execution.id] = execution
        while len(session.runs) > _KEEP_RUNS and next(iter(session.runs.values())).done:
            session.runs.pop(next(iter(session.runs)))
        return await self._follow(session, execution, progress, wait)

    async def _follow(
        self,
        session: Session,
        execution: Execution,
        progress: Progress,
        wait: float | None,
    ) -> ExecutionResult:
        assert execution.task is not None
        t0 = time.monotonic()
        while True:
            step = self.settings.progress_interval
            if wait is not None:
                step = min(step, max(0.0, t0 + wait - time.monotonic()))
            done, _ = await asyncio.wait({execution.task}, timeout=step)
            if done or (wait is not None and time.monotonic() >= t0 + wait):
                break
            line = execution.last_line[-200:]
            state = "queued" if execution.cell is None else "running"
            message = f"{state} for {execution.elapsed:.0f} s" + (f": {line}" if line else "")
            for notice in await self._lanes[session.lane].backend.notices():
                message += f" | warning: {notice}"
            await progress(execution.elapsed, None, message)
        reply = execution.task.result() if done else None  # raises what the run raised
        outputs, redrawn = execution.new_outputs()
        execution.reports += 1
        warnings = [session.doc.write_error] if session.doc.write_error else []
        warnings += await self._lanes[session.lane].backend.notices()
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
            cell_index=execution.cell_index,
            execution_count=reply.get("execution_count") if reply else None,
            status=status,
            outputs=outputs,
            notebook_path=session.doc.path,
            elapsed=execution.elapsed,
            redrawn=redrawn,
            follow_up=execution.reports > 1,
            warnings=warnings,
        )

    async def _execution(
        self, session: Session, execution: Execution, index: int | None, code: str | None
    ) -> dict[str, Any]:
        async with session.lock:
            doc = session.doc
            if index is None:
                cell = new_code_cell(code or "")
                index = doc.append_cell(cell)
            else:
                cell = doc.nb.cells[index]
                with doc.editing(cell):
                    if code is not None:
                        cell.source = code
                    cell.outputs = []
                    finish_cell(cell, None)  # no count, and no mark of an earlier run
            recorder = OutputRecorder(doc, cell, session.displays)
            execution.begin(cell, index, recorder)
            session.executions += 1
            watchdog = None
            if execution.timeout is not None:
                watchdog = asyncio.get_running_loop().call_later(
                    execution.timeout, self._on_timeout, session, execution
                )

            def sent(msg_id: str) -> None:
                execution.msg_id = msg_id
                self._save_registry()  # the registry now names the running request

            try:
                reply = await session.conn.execute(cell.source, recorder, on_sent=sent)
            except GatewayError as exc:  # the gateway may be gone: ask the backend
                await self._raise_if_lost(session, exc)
                raise
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                execution.msg_id = None
                self._save_registry()
            content: dict[str, Any] = reply.get("content", {})
            with doc.editing(cell):
                finish_cell(cell, content.get("execution_count"))
            return content

    def _on_timeout(self, session: Session, execution: Execution) -> None:
        execution.timed_out = True
        log.info("execution %s passed its timeout; interrupting", execution.id)
        task = asyncio.create_task(self.interrupt(session.id))
        task.add_done_callback(_consume_outcome)

    async def _raise_if_lost(self, session: Session, exc: Exception) -> None:
        """Turn a dead gateway or ended job into an error that says how to carry on."""
        why = await session.conn.gateway_lost()
        if why is None:
            return
        self._sessions.pop(session.id, None)
        self._changed()
        await session.conn.close()
        await asyncio.to_thread(session.doc.flush)
        raise SessionLostError(
            f"{why}: session {session.id}'s kernel and its variables are gone. The notebook "
            f"{session.doc.path.name} is intact; start_session_resume_notebook with "
            f"notebook_path={session.doc.path.name!r} re-runs it on a new kernel"
        ) from exc

    async def add_markdown(self, session_id: str, markdown: str) -> dict[str, Any]:
        session = self.get(session_id)
        index = session.doc.append_cell(new_markdown_cell(markdown))
        return {"cell_index": index, "notebook_path": str(session.doc.path)}

    # -- kernel control ------------------------------------------------------------------------

    async def interrupt(self, session_id: str) -> str:
        session = self.get(session_id)
        await (await self.gateway(lane=session.lane)).interrupt_kernel(session.kernel_id)
        return f"interrupt sent to the kernel of session {session_id}"

    async def restart(self, session_id: str) -> str:
        session = self.get(session_id)
        if session.conn.restarting:
            # The kernel just died and the gateway is restarting it. A REST restart on top of
            # that collides with it (HTTP 500) and can leave the kernel without its restarter,
            # so a later death goes unnoticed: let the automatic restart finish first.
            with contextlib.suppress(JlabgwError, TimeoutError):
                async with asyncio.timeout(_SETTLE_TIMEOUT):
                    await session.conn.settle()
        await (await self.gateway(lane=session.lane)).restart_kernel(session.kernel_id)
        await session.conn.reset(
            KernelDiedError(
                f"the kernel of session {session_id} was restarted (restart_kernel) while this "
                "cell ran; its variables are gone and the cell did not finish"
            )
        )
        session.displays = DisplayIndex()
        return (
            f"kernel of session {session_id} restarted: all variables are gone, the notebook "
            f"{session.doc.path.name} is unchanged"
        )

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
        del self._sessions[session_id]
        self._changed()
        await session.conn.close()
        with contextlib.suppress(KernelNotFoundError):
            await (await self.gateway(lane=session.lane)).delete_kernel(session.kernel_id)
        await asyncio.to_thread(session.doc.flush)
        return f"session {session_id} shut down; notebook saved at {session.doc.path}"

    async def aclose(self) -> None:
        """Stop all kernels, the gateway client and the writer (the backend is the caller's)."""
        self._closing = True
        await self._drop_spare()
        if self._registry is not None and self._reattached and self.backend.keeps_kernels():
            # The job stays (JLABGW_KEEP_JOB): leave the kernels running for the next server,
            # which takes them back from the registry as they are now (a running cell too).
            self._handing_over = True
            for session in list(self._sessions.values()):
                await session.conn.close()
                try:
                    await asyncio.to_thread(session.doc.flush)
                except JlabgwError as exc:
                    log.error("handing over session %s: %s", session.id, exc)
            self._sessions.clear()
            log.info("left the kernels running on the kept job for the next server")
        for session_id in list(self._sessions):
            try:
                await self.shutdown(session_id, force=True)
            except JlabgwError as exc:
                log.warning("shutting down session %s: %s", session_id, exc)
        if self._registry is not None:
            await asyncio.to_thread(self._registry.close)
        for key, lane in list(self._lanes.items()):
            await lane.aclose_client()
            if key:  # shaped jobs are this manager's own; the default backend is the caller's
                try:
                    await lane.backend.aclose()
                except JlabgwError as exc:
                    log.warning("stopping the job for %s: %s", key, exc)
        if self._owns_writer:
            await asyncio.to_thread(self.writer.close)
        else:
            try:
                await asyncio.to_thread(self.writer.flush)
            except JlabgwError as exc:
                log.error("%s", exc)
