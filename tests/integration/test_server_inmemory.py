"""The MCP server in-process through fastmcp's in-memory Client (fast; real gateway behind it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp.types import TextContent

from jlabgw.mcp.server import TOOLS, build_server
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_tools_errors_and_a_cell_in_process(tmp_path: Path) -> None:
    server = build_server(make_settings(tmp_path))
    async with Client(server) as client:
        tools = {t.name: t for t in await client.list_tools()}
        assert set(tools) == {fn.__name__ for fn in TOOLS}
        schema = tools["edit_cell"].input_schema
        assert schema["required"] == ["session_id", "cell_index", "code"]
        assert "negative" in schema["properties"]["cell_index"]["description"]
        assert "ctx" not in schema["properties"]

        with pytest.raises(ToolError, match="unknown session_id 'missing'"):
            await client.call_tool("add_markdown", {"session_id": "missing", "markdown": "x"})
        # unexpected failures are masked: no traceback or internals reach the client
        with pytest.raises(ToolError) as info:
            await client.call_tool("edit_cell", {"session_id": "x", "cell_index": "a", "code": ""})
        assert "Traceback" not in str(info.value)

        started = await client.call_tool("start_new_session", {"experiment_name": "inmem"})
        sid = started.data["session_id"]
        result = await client.call_tool("execute_code", {"session_id": sid, "code": "2 ** 10"})
        assert isinstance(result.content[0], TextContent)
        assert result.content[0].text == "1024\n"
        assert result.meta is not None
        assert result.meta["cell_index"] == 0
        assert result.meta["execution_count"] == 1


@pytest.mark.parametrize("eager", [True, False])
async def test_eager_start_brings_the_gateway_up_before_any_tool_call(
    tmp_path: Path, eager: bool
) -> None:
    server = build_server(make_settings(tmp_path, eager_start="1" if eager else "0"))
    async with Client(server) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        state = None
        while loop.time() < deadline:
            contents = await client.read_resource("jlabgw://server/status")
            status = json.loads(getattr(contents[0], "text", "{}"))
            state = status["gateway"]["state"]
            if state == "running" or not eager:
                break
            await asyncio.sleep(0.1)
        assert state == ("running" if eager else "stopped")
        # lazy or not, the first session works
        started = await client.call_tool("start_new_session", {"experiment_name": "eager"})
        assert started.data["session_id"]
