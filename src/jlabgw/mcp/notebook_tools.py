"""MCP tools on a notebook's cells beyond running new code: re-run, delete and move cells.
Declared like those in :mod:`jlabgw.mcp.server`, which registers them (``NOTEBOOK_TOOLS``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastmcp import Context
from fastmcp.tools.base import ToolResult
from pydantic import Field

from jlabgw.mcp.params import SessionId, _progress, _sessions
from jlabgw.mcp.results import execution_result, limits_for

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


NOTEBOOK_TOOLS = (run_cell, delete_cell, move_cell)
