"""Reference MCP server for benchmarks/latency.py: one fastmcp tool that only runs the code.

No notebook, no sessions: the cost of fastmcp + MCP stdio + the gateway call and nothing else,
so the latency benchmark can show how much of execute_code's time is jlabgw's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from fastmcp import Context, FastMCP

from jlabgw.cluster.backends import LocalBackend
from jlabgw.config import load_settings
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.rest import GatewayClient
from jlabgw.mcp.stdio import serve_stdio


@contextlib.asynccontextmanager
async def local_kernel(state_dir: str) -> AsyncIterator[KernelConnection]:
    """A local gateway and one ready python3 kernel on it (also used by latency.py)."""
    backend = LocalBackend(load_settings(environ={"JLABGW_STATE_DIR": state_dir}))
    try:
        endpoint = await backend.start()
        gateway = GatewayClient(endpoint)
        kernel = await gateway.start_kernel("python3")
        conn = KernelConnection(endpoint, kernel["id"])
        await conn.kernel_info()
        yield conn
        await conn.close()
        await gateway.delete_kernel(kernel["id"])
        await gateway.aclose()
    finally:
        await backend.aclose()


@contextlib.asynccontextmanager
async def lifespan(_: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="jlabgw-bare-") as state:
        async with local_kernel(state) as conn:
            yield {"conn": conn}


mcp: FastMCP[Any] = FastMCP("bare", lifespan=lifespan)


@mcp.tool
async def run(code: str, ctx: Context) -> str:
    """Execute code; return only its execute_result text."""
    outputs: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg.get("msg_type") == "execute_result":
            outputs.append(msg["content"]["data"]["text/plain"])

    await ctx.lifespan_context["conn"].execute(code, collect)
    return "".join(outputs)


if __name__ == "__main__":
    asyncio.run(serve_stdio(mcp))
