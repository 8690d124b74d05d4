"""The tool parameters the MCP tools share (their descriptions are what the model reads), and
the lifespan's session manager and progress reporter from a tool call's context."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context
from pydantic import Field

from jlabgw.progress import Progress
from jlabgw.sessions.manager import SessionManager

__all__ = [
    "CellIndex",
    "ExperimentName",
    "KernelName",
    "NotebookPath",
    "SessionId",
    "_progress",
    "_sessions",
]

SessionId = Annotated[str, Field(description="Session id returned by start_new_session.")]
ExperimentName = Annotated[
    str,
    Field(description="Short name for the experiment; it becomes the notebook's file name."),
]
KernelName = Annotated[
    str | None,
    Field(
        description="Kernel spec to start (python3, ir, julia-1.10 ...; list_kernelspecs shows "
        "what the gateway has). Default: the configured one; for a notebook, the one it names."
    ),
]
NotebookPath = Annotated[
    str,
    Field(description="Notebook path, relative to the notebook directory (or absolute inside it)."),
]
CellIndex = Annotated[
    int,
    Field(
        description="Where the new cell lands: its index once added (0 = first). Negative counts "
        "from the end: -1 (default) appends, -2 puts it before the last cell."
    ),
]


def _sessions(ctx: Context) -> SessionManager:
    manager: SessionManager = ctx.lifespan_context["sessions"]
    return manager


def _progress(ctx: Context) -> Progress:
    async def report(done: float, total: float | None, message: str) -> None:
        await ctx.report_progress(done, total, message)

    return report
