"""MCP tool declarations and the server's lifespan. The work lives in :mod:`jlabgw.sessions`;
a cell's result becomes MCP blocks in :mod:`jlabgw.mcp.results`; the text the model reads at
initialize is :mod:`jlabgw.mcp.instructions`. This module only adapts.

Tool names and parameters match jlab-mcp, so its users switch without editing prompts.
Errors from :mod:`jlabgw.errors` become MCP error results carrying their message; anything
unexpected is masked (no traceback reaches the client) and logged to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.tools.base import ToolResult
from pydantic import Field

from jlabgw.cluster.backends import Backend, create_backend
from jlabgw.config import Settings
from jlabgw.errors import JlabgwError
from jlabgw.mcp.instructions import INSTRUCTIONS
from jlabgw.mcp.notebook_tools import NOTEBOOK_TOOLS
from jlabgw.mcp.params import (
    CellIndex,
    ExperimentName,
    KernelName,
    NotebookPath,
    SessionId,
    _progress,
    _sessions,
)
from jlabgw.mcp.results import execution_result, limits_for, text_result
from jlabgw.sessions.manager import SessionManager
from jlabgw.sessions.state import ServerStateFile

__all__ = ["build_server"]

log = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT = 30.0

P = ParamSpec("P")
R = TypeVar("R")


def _user_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn :class:`JlabgwError` into a ToolError with the same, user-facing message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            ctx = kwargs.get("ctx")
            if isinstance(ctx, Context):  # sessions a previous server left are taken back first
                await _sessions(ctx).ready()
            return await fn(*args, **kwargs)
        except JlabgwError as exc:
            raise ToolError(str(exc)) from exc

    return wrapper


# -- tools -------------------------------------------------------------------------------------


async def start_new_session(
    experiment_name: ExperimentName,
    ctx: Context,
    kernel_name: KernelName = None,
    partition: Annotated[
        str | None, Field(description="SLURM partition (default: the configured one).")
    ] = None,
    gpus: Annotated[
        int | None, Field(description="GPUs for this session's job (e.g. 1).", ge=1)
    ] = None,
    cpus: Annotated[int | None, Field(description="CPUs for the job (e.g. 8).", ge=1)] = None,
    mem: Annotated[str | None, Field(description="Memory for the job (e.g. 64G).")] = None,
    time: Annotated[str | None, Field(description="Walltime for the job (e.g. 04:00:00).")] = None,
    profile: Annotated[
        str | None,
        Field(
            description="Another cluster (or partition set-up): a [profiles.NAME] of the "
            "config file (default: the server's own)."
        ),
    ] = None,
) -> dict[str, Any]:
    """Start a new kernel and a new, empty notebook for it. Use this first.

    Returns session_id (pass it to every other tool), notebook_path, kernel_id and backend.
    On a cluster (slurm, gridengine), partition/gpus/cpus/mem/time ask for a job of that
    shape: sessions asking for the same resources share one job, a new shape submits its own
    (it may wait in the queue; progress says why). Leave them out for the configured job.
    profile starts the session on another cluster of the config file (its own SSH, job and
    tunnel); list_sessions shows each session's cluster.
    To pick up earlier work instead, use start_session_resume_notebook.
    """
    resources = {"partition": partition, "gpus": gpus, "cpus": cpus, "mem": mem, "time": time}
    return await _sessions(ctx).start_new(
        experiment_name,
        _progress(ctx),
        kernel_name=kernel_name,
        resources=resources,
        profile=profile,
    )


async def start_session_resume_notebook(
    experiment_name: ExperimentName,
    notebook_path: NotebookPath,
    ctx: Context,
    kernel_name: KernelName = None,
) -> dict[str, Any]:
    """Reopen an existing notebook with a new kernel and re-run its code cells in order.

    Rebuilds the kernel state after a restart, a lost job or a lost session (an error that
    says a session's kernel is gone names the notebook to pass here). New outputs replace the
    old ones in the same file. Returns the session plus executed_cells and failed_cells
    (cell_index, ename, evalue) if any.
    """
    return await _sessions(ctx).resume(
        experiment_name, notebook_path, _progress(ctx), kernel_name=kernel_name
    )


async def start_session_continue_notebook(
    experiment_name: ExperimentName,
    notebook_path: NotebookPath,
    ctx: Context,
    kernel_name: KernelName = None,
) -> dict[str, Any]:
    """Copy a notebook to <name>_continued.ipynb and attach a fresh kernel; nothing is re-run.

    The original file is left untouched. Variables from the old notebook are NOT defined:
    use this to build on a notebook's text, start_session_resume_notebook to get its state.
    """
    return await _sessions(ctx).continue_(
        experiment_name, notebook_path, _progress(ctx), kernel_name=kernel_name
    )


async def execute_code(
    session_id: SessionId,
    code: Annotated[str, Field(description="Code to run in the session's kernel.")],
    ctx: Context,
    timeout: Annotated[  # noqa: ASYNC109 - the cell's time limit, not this call's
        float | None,
        Field(description="Interrupt the cell after this many seconds (default: no limit)."),
    ] = None,
    queue: Annotated[
        bool,
        Field(
            description="If the session is busy, run after the running cell instead of refusing."
        ),
    ] = False,
    cell_index: CellIndex = -1,
) -> ToolResult:
    """Add a code cell to the session's notebook (appended, or at cell_index), run it, and
    return its outputs.

    Returns text (stdout/stderr, results) and images. If the code raises, the result is an
    error carrying the exception name, message and traceback; the cell stays in the notebook.
    A cell still running after a while (JLABGW_EXEC_WAIT, 30 s) is returned with its output so
    far and an execution_id; it keeps running: follow it with get_execution.
    """
    manager = _sessions(ctx)
    result = await manager.execute(
        session_id,
        code,
        _progress(ctx),
        wait=manager.settings.exec_wait,
        cell_timeout=timeout,
        queue=queue,
        cell_index=cell_index,
    )
    return execution_result(result, limits_for(manager.settings))


async def get_execution(
    session_id: SessionId,
    ctx: Context,
    execution_id: Annotated[
        str | None,
        Field(description="From execute_code's result; default: the session's latest."),
    ] = None,
    wait: Annotated[
        float | None,
        Field(
            description="Seconds to wait for the cell to finish (default JLABGW_EXEC_WAIT).",
            ge=0,
            le=600,
        ),
    ] = None,
) -> ToolResult:
    """Output a running (or finished) cell added since the last report, and whether it finished.

    Waits up to `wait` seconds for the cell to finish; call again while it is still running.
    """
    manager = _sessions(ctx)
    result = await manager.get_execution(
        session_id,
        execution_id,
        _progress(ctx),
        wait=manager.settings.exec_wait if wait is None else wait,
    )
    return execution_result(result, limits_for(manager.settings))


async def edit_cell(
    session_id: SessionId,
    cell_index: Annotated[
        int, Field(description="Cell to replace; negative counts from the end (-1 = last).")
    ],
    code: Annotated[str, Field(description="New source for the cell.")],
    ctx: Context,
) -> ToolResult:
    """Replace a cell's source. A code cell is re-run and its outputs replaced.

    A markdown cell only gets the new text.
    """
    manager = _sessions(ctx)
    result = await manager.edit_cell(
        session_id, cell_index, code, _progress(ctx), wait=manager.settings.exec_wait
    )
    if isinstance(result, str):
        return text_result(result)
    return execution_result(result, limits_for(manager.settings))


async def add_markdown(
    session_id: SessionId,
    markdown: Annotated[str, Field(description="Markdown text for the new cell.")],
    ctx: Context,
    cell_index: CellIndex = -1,
) -> dict[str, Any]:
    """Add a markdown cell (notes, headings, explanations) to the session's notebook:
    appended, or at cell_index. Returns its cell_index."""
    return await _sessions(ctx).add_markdown(session_id, markdown, cell_index)


async def shutdown_session(session_id: SessionId, ctx: Context) -> str:
    """Stop the session's kernel (its variables are lost); the notebook stays on disk.

    Only when the user asks for it: a running session keeps valuable state.
    """
    return await _sessions(ctx).shutdown(session_id)


async def list_sessions(ctx: Context) -> list[dict[str, Any]]:
    """Running sessions with their notebook path, kernel, cell count and state."""
    return [s.to_dict() for s in _sessions(ctx).list()]


async def list_kernelspecs(ctx: Context) -> list[dict[str, Any]]:
    """Kernels the gateway can start (name, display_name, language; the default first).

    Pass a name as kernel_name to start_new_session for R, Julia or another language.
    """
    return await _sessions(ctx).list_kernelspecs()


async def interrupt_kernel(session_id: SessionId, ctx: Context) -> str:
    """Interrupt the code running in the session (like Ctrl-C); variables are kept."""
    return await _sessions(ctx).interrupt(session_id)


async def restart_kernel(session_id: SessionId, ctx: Context) -> str:
    """Restart the session's kernel: all variables are lost, the notebook is kept.

    Use start_session_resume_notebook instead to rebuild the state from the notebook.
    """
    return await _sessions(ctx).restart(session_id)


TOOLS = (
    start_new_session,
    start_session_resume_notebook,
    start_session_continue_notebook,
    execute_code,
    get_execution,
    edit_cell,
    add_markdown,
    shutdown_session,
    list_sessions,
    list_kernelspecs,
    interrupt_kernel,
    restart_kernel,
    *NOTEBOOK_TOOLS,
)


# -- server ------------------------------------------------------------------------------------


def build_server(settings: Settings, backend: Backend | None = None) -> FastMCP[dict[str, Any]]:
    """A FastMCP server whose lifespan owns the backend, sessions and state file.

    ``backend``: one created (and perhaps begun) before the server, else a new one."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        active = backend or create_backend(settings)
        state = ServerStateFile(settings.state_dir)
        sessions = SessionManager(
            settings, active, on_change=lambda: state.update(sessions.status())
        )
        state.update(sessions.status())
        # Start the gateway (submit the job) now so the first tool call waits less; a failure
        # is reported (again) by that first call.
        warmup = asyncio.create_task(_warm_up(sessions)) if settings.eager_start else None
        try:
            yield {"sessions": sessions}
        finally:
            # Shielded: on SIGTERM/SIGINT we get here inside a cancelled scope, and every
            # await below would be cancelled at once; bounded so a hung kernel cannot block exit.
            with anyio.move_on_after(_SHUTDOWN_TIMEOUT, shield=True):
                if warmup is not None:
                    warmup.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await warmup
                try:
                    await sessions.aclose()
                finally:
                    await active.aclose()
            active.close_now()  # no-op unless the bounded shutdown above was cut short
            state.remove()

    mcp: FastMCP[dict[str, Any]] = FastMCP(
        "jlabgw",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        mask_error_details=True,
    )
    for tool in TOOLS:
        mcp.tool(_user_errors(tool))

    @mcp.resource("jlabgw://server/status", mime_type="application/json")
    async def server_status(ctx: Context) -> str:
        """Backend, gateway state and the running sessions (no secrets)."""
        return json.dumps(_sessions(ctx).status().to_dict(), indent=1)

    return mcp


async def _warm_up(sessions: SessionManager) -> None:
    try:
        await sessions.gateway()
        await sessions.ready()
        sessions.prepare_spare()
    except JlabgwError as exc:
        log.error("gateway start failed: %s", exc)
