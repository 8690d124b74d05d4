"""Driving a jlabgw server over MCP stdio with the mcp SDK's client, as Claude Desktop and Claude
Code do (``mode="legacy"``: the initialize handshake). Shared by the stdio, workload and SLURM
tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import TextContent

from tests.helpers import PYTHON, server_env


@asynccontextmanager
async def serve(
    root: Path, errlog: TextIO, mode: str = "legacy", **env: str
) -> AsyncIterator[Client]:
    """``jlabgw serve`` under ``root`` (see :func:`tests.helpers.server_env`), its stderr to
    ``errlog``; ``env`` adds to or overrides the server's environment."""
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "jlabgw", "serve"], env=server_env(root, **env)
    )
    async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:  # type: ignore[arg-type]
        yield client


async def call(client: Client, tool: str, **args: Any) -> Any:
    return await client.call_tool(tool, args)


async def new_session(client: Client, name: str) -> str:
    started = await call(client, "start_new_session", experiment_name=name)
    assert not started.is_error, started
    return str(started.structured_content["session_id"])


def text_of(result: Any) -> str:
    return "".join(b.text for b in result.content if isinstance(b, TextContent))


async def status(client: Client) -> dict[str, Any]:
    """The ``jlabgw://server/status`` resource, parsed."""
    res = await client.read_resource("jlabgw://server/status")
    return json.loads(res.contents[0].text)


async def poll_to_the_end(client: Any, sid: str, first: Any, limit: int = 60) -> list[Any]:
    """execute_code's first report, then get_execution until the cell finished (bounded)."""
    reports = [first]
    for _ in range(limit):
        if reports[-1].meta["status"] not in ("running", "queued"):
            return reports
        execution_id = first.meta["execution_id"]
        reports.append(
            await call(client, "get_execution", session_id=sid, execution_id=execution_id)
        )
    raise AssertionError(f"still running after {limit} reports")


def body(result: Any) -> str:
    """The cell's text in a report, without jlabgw's bracketed status footer."""
    text = text_of(result)
    for footer in ("\n[still running after", "\n[finished after"):
        text = text.split(footer, 1)[0]
    return "" if text == "(no new output)" else text


@asynccontextmanager
async def serve_in(cwd: Path, root: Path, errlog: TextIO, **env: str) -> AsyncIterator[Client]:
    """:func:`serve`, with the server (and so a local backend's kernels) working in ``cwd``:
    for tests whose kernels write files where they run."""
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "jlabgw", "serve"], env=server_env(root, **env), cwd=cwd
    )
    async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:  # type: ignore[arg-type]
        yield client
