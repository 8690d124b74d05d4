"""What a tool hands back for a cell: its outputs as MCP blocks (:mod:`jlabgw.mcp.content`),
framed by a header when the output was redrawn and a footer saying whether the cell is still
running (and how to follow it), queued, or finished after a follow-up; the execution's ids and
status in the result's ``meta``."""

from __future__ import annotations

from fastmcp.tools.base import ToolResult
from mcp.types import TextContent

from jlabgw.config import Settings
from jlabgw.mcp.content import Limits, outputs_to_content
from jlabgw.sessions.execution import ExecutionResult

__all__ = ["execution_result", "limits_for", "text_result"]


def limits_for(settings: Settings) -> Limits:
    """How much text and how large images one result may carry."""
    return Limits(
        settings.output_limit,
        settings.image_max_px,
        settings.image_max_bytes,
        settings.image_max_pixels,
    )


def text_result(text: str) -> ToolResult:
    return ToolResult(content=[TextContent(type="text", text=text)])


def execution_result(result: ExecutionResult, limits: Limits) -> ToolResult:
    where = f"cell {result.cell_index} of {result.notebook_path.name}"
    header = (
        "[the output was cleared or redrawn since the last report; this is all of it now]\n"
        if result.redrawn
        else ""
    )
    footer = ""
    if result.status == "queued":
        footer = (
            f"\n[queued behind another execution for {result.elapsed:.0f} s: "
            f"execution_id={result.execution_id!r}; get_execution follows it]"
        )
    elif result.running:
        footer = (
            f"\n[still running after {result.elapsed:.0f} s, in {where}: "
            f"execution_id={result.execution_id!r}. get_execution(session_id, "
            f"execution_id={result.execution_id!r}) returns the output from here on; "
            "interrupt_kernel stops it. Its output keeps going into the notebook.]"
        )
    elif result.follow_up:
        footer = (
            f"\n[finished after {result.elapsed:.0f} s with status {result.status}, "
            f"execution_count {result.execution_count}, in {where}]"
        )
    content = outputs_to_content(result.outputs, limits, where, header=header, footer=footer)
    content += [TextContent(type="text", text=f"warning: {w}") for w in result.warnings]
    return ToolResult(
        content=content,
        is_error=result.is_error,
        meta={
            "session_id": result.session_id,
            "execution_id": result.execution_id,
            "cell_index": result.cell_index,
            "execution_count": result.execution_count,
            "status": result.status,
            "elapsed": round(result.elapsed, 3),
            "notebook_path": str(result.notebook_path),
        },
    )
