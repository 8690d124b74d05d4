"""MCP tools on notebooks beyond running new code: re-run, delete and move cells; read, list
and open notebooks; and scratch runs, recorded in none. Declared like those in
:mod:`jlabgw.mcp.server`, which registers them (``NOTEBOOK_TOOLS``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastmcp import Context
from fastmcp.tools.base import ToolResult
from pydantic import Field

from jlabgw.mcp.content import image_blocks
from jlabgw.mcp.params import KernelName, NotebookPath, SessionId, _progress, _sessions
from jlabgw.mcp.results import execution_result, limits_for, text_result

__all__ = ["NOTEBOOK_TOOLS"]

ExistingCell = Annotated[
    int, Field(description="Index of an existing cell; negative counts from the end (-1 = last).")
]


async def run_cell(session_id: SessionId, cell_index: ExistingCell, ctx: Context) -> ToolResult:
    """Run an existing code cell again, as it is, in place: its outputs are replaced and it
    gets a new execution count (edit_cell changes the code first; execute_code adds a cell).

    Long cells behave as with execute_code: after a while the output so far comes back with
    an execution_id, and get_execution follows it.
    """
    manager = _sessions(ctx)
    result = await manager.run_cell(
        session_id, cell_index, _progress(ctx), wait=manager.settings.exec_wait
    )
    return execution_result(result, limits_for(manager.settings))


async def delete_cell(
    session_id: SessionId, cell_index: ExistingCell, ctx: Context
) -> dict[str, Any]:
    """Delete a cell from the session's notebook (the cells after it move up by one).

    Nothing in the kernel changes. The running cell cannot be deleted. Returns what was
    deleted and how many cells are left."""
    return await _sessions(ctx).delete_cell(session_id, cell_index)


async def move_cell(
    session_id: SessionId,
    from_index: Annotated[
        int, Field(description="The cell to move; negative counts from the end.")
    ],
    to_index: Annotated[
        int,
        Field(description="Its index after the move (0 = first, -1 = last)."),
    ],
    ctx: Context,
) -> dict[str, Any]:
    """Move a cell within the session's notebook; the others keep their order. Nothing is
    re-run. The running cell cannot be moved (others may move around it)."""
    return await _sessions(ctx).move_cell(session_id, from_index, to_index)


async def read_notebook(
    ctx: Context,
    notebook_path: Annotated[
        str | None,
        Field(
            description="Notebook to read, relative to the notebook directory (list_notebooks "
            "shows them). Or pass session_id for a session's notebook."
        ),
    ] = None,
    session_id: Annotated[
        str | None, Field(description="Read this session's notebook (instead of a path).")
    ] = None,
    start: Annotated[
        int, Field(description="First cell to show; negative counts from the end (-5: last 5).")
    ] = 0,
    count: Annotated[
        int | None,
        Field(description="At most this many cells (default: as many as fit in one result).", ge=1),
    ] = None,
    images: Annotated[
        bool,
        Field(
            description="Also return the shown cells' images (downscaled, as in execute_code). "
            "Default: a one-line note per image, to keep the result small."
        ),
    ] = False,
) -> ToolResult:
    """Read a notebook's cells: index, type, execution count, source and outputs as text.

    Works on any notebook in the notebook directory, open in a session or not (reading never
    holds it). Long sources and outputs are cut in the middle, images are a one-line note
    (images=true returns them too);
    a page holds as many cells as fit in one result, and its last line says which start
    shows the next ones (meta.next_start).
    """
    manager = _sessions(ctx)
    # off the event loop: a big notebook's parse must not stall the kernels' I/O
    page = await asyncio.to_thread(
        manager.notebooks.read, notebook_path, session_id, start, count, images
    )
    result = text_result(page.text)
    result.content += image_blocks(page.images, limits_for(manager.settings))
    result.meta = page.meta()
    return result


async def list_notebooks(ctx: Context) -> list[dict[str, Any]]:
    """Notebooks in the notebook directory: path (relative, as notebook_path takes it), size
    in bytes, modified (UTC), cells, and held_by (the session recording into it, of this
    server or another one) or null."""
    return await asyncio.to_thread(_sessions(ctx).notebooks.list)  # reads every file


async def start_notebook(
    notebook_path: NotebookPath, ctx: Context, kernel_name: KernelName = None
) -> dict[str, Any]:
    """Open an existing notebook to work on it: a fresh kernel, nothing re-run; new cells are
    added to that same file.

    If a session of this server already has it open, that session is returned (its
    variables kept; already_open is true). Its old outputs stay, but variables from the old
    cells are NOT defined in a fresh kernel: run_cell the cells you need, or use
    start_session_resume_notebook to re-run them all. To keep the file untouched, use
    start_session_continue_notebook (a copy).
    """
    return await _sessions(ctx).notebooks.start(notebook_path, _progress(ctx), kernel_name)


async def execute_scratch(
    code: Annotated[str, Field(description="Code to run; it is recorded in no notebook.")],
    ctx: Context,
    session_id: Annotated[
        str | None,
        Field(
            description="Run in this session's kernel (its variables) instead of a throwaway "
            "kernel. Default: a throwaway kernel, shut down after."
        ),
    ] = None,
    timeout: Annotated[  # noqa: ASYNC109 - the cell's time limit, not this call's
        float | None,
        Field(description="Interrupt the code after this many seconds (default: no limit)."),
    ] = None,
) -> ToolResult:
    """Run code that is NOT recorded in any notebook: quick checks (is a package installed,
    how big is a file, what does the GPU say) that should not clutter the notebook.

    Default: a throwaway kernel on the same gateway, shut down when the code ends (nothing of
    the session's state is there). With session_id: in that session's kernel, with its
    variables; the notebook then no longer reproduces the kernel's state if the code changed
    it, so use execute_code for anything the analysis builds on. Output, errors and long runs
    as with execute_code (get_execution follows a long one under the session_id the result
    names).
    """
    manager = _sessions(ctx)
    wait = manager.settings.exec_wait
    if session_id is None:
        result = await manager.scratch.throwaway(
            code, _progress(ctx), wait=wait, cell_timeout=timeout
        )
    else:
        result = await manager.scratch.in_session(
            manager.get(session_id), code, _progress(ctx), wait=wait, cell_timeout=timeout
        )
    return execution_result(result, limits_for(manager.settings))


async def check_resources(
    ctx: Context,
    session_id: Annotated[
        str | None,
        Field(description="The session whose node to check (default: the default job's)."),
    ] = None,
) -> dict[str, Any]:
    """What the machine a session runs on has: CPUs (count, usable, load), memory
    (total/used/available, the job's limit), GPUs (name, memory, utilisation, via nvidia-smi),
    free disk where the kernel works, and the batch job (id, node, time left).

    Use it before a big computation (will it fit, is the GPU free) and when a job may end
    soon. Asked directly, no kernel started: this machine on the local backend, the
    session's compute node over SSH on a cluster.
    """
    manager = _sessions(ctx)
    session = manager.get(session_id) if session_id is not None else None
    return await manager.resources.check(session, _progress(ctx))


Overwrite = Annotated[bool, Field(description="Replace the file if it exists (default: refuse).")]


async def upload_file(
    session_id: SessionId,
    local_path: Annotated[
        str, Field(description="File to send, relative to the notebook directory.")
    ],
    remote_path: Annotated[
        str,
        Field(
            description="Where the kernel finds it: relative to the kernel's working "
            "directory (as its open() sees it), or absolute under your home or "
            "JLABGW_TRANSFER_ROOT."
        ),
    ],
    ctx: Context,
    overwrite: Overwrite = False,
) -> dict[str, Any]:
    """Copy a file from the notebook directory to where the session's kernel works, e.g. a
    data set for the kernel to load. Size capped (JLABGW_TRANSFER_MAX_BYTES, 1 GiB); an
    existing file is kept unless overwrite; a failed copy leaves no partial file. Returns the
    paths, bytes and seconds. On a cluster the copy goes over SSH (SFTP) to the node."""
    manager = _sessions(ctx)
    return await manager.transfers.upload(
        manager.get(session_id), local_path, remote_path, _progress(ctx), overwrite
    )


async def download_file(
    session_id: SessionId,
    remote_path: Annotated[
        str,
        Field(
            description="The file on the kernel's side: relative to its working directory, "
            "or absolute under your home or JLABGW_TRANSFER_ROOT."
        ),
    ],
    local_path: Annotated[
        str, Field(description="Where to put it, relative to the notebook directory.")
    ],
    ctx: Context,
    overwrite: Overwrite = False,
) -> dict[str, Any]:
    """Copy a file the session's kernel wrote (results, a model, a figure) into the
    notebook directory. Size capped, no overwrite unless asked, never half-written, as
    upload_file; on a cluster over SSH (SFTP) from the node."""
    manager = _sessions(ctx)
    return await manager.transfers.download(
        manager.get(session_id), remote_path, local_path, _progress(ctx), overwrite
    )


NOTEBOOK_TOOLS = (
    start_notebook,
    read_notebook,
    list_notebooks,
    run_cell,
    delete_cell,
    move_cell,
    execute_scratch,
    check_resources,
    upload_file,
    download_file,
)
