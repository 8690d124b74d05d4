"""MCP over stdio without worker threads.

The ``mcp`` SDK's stdio transport reads stdin and writes stdout through anyio worker threads:
every message crosses threads twice. On a busy 2-vCPU machine (MCP client, server, gateway and
kernel all awake) those wake-ups cost ~0.6 ms for a trivial call and more for a call that
awaits I/O (measured: a tool awaiting 5 ms took 7.7 ms round trip, 6.3–7.0 ms with this
transport). Here stdin and stdout are asyncio pipe transports on the event loop itself.

Like the SDK, fd 0 is pointed at /dev/null and fd 1 at stderr while serving, so a child
process or a stray ``print`` can never corrupt the protocol stream.

When stdin/stdout are not pipes (a file, say) or fastmcp's internals moved, this falls back to
``FastMCP.run_stdio_async`` so the server still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

import anyio
from fastmcp import FastMCP

__all__ = ["serve_stdio"]

log = logging.getLogger(__name__)

_MAX_LINE = 1 << 30  # a JSON-RPC message is one line; code and outputs can be many MB


class _LineReader:
    """``async for line in reader`` over an asyncio StreamReader, as text."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _LineReader:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


async def _open_pipes() -> tuple[_LineReader, _Writer, list[tuple[int, int]]]:
    """Take over fds 0/1 as asyncio pipes; return the streams and (fd, saved) to restore."""
    loop = asyncio.get_running_loop()
    restore: list[tuple[int, int]] = []
    wire_in = os.dup(0)
    wire_out = os.dup(1)
    try:
        reader = asyncio.StreamReader(limit=_MAX_LINE)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
        )
    except (OSError, ValueError):
        for fd in (wire_in, wire_out):
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    # Divert the standard descriptors away from the wire (as the SDK's transport does).
    for fd, replacement in ((0, os.open(os.devnull, os.O_RDONLY)), (1, os.dup(2))):
        restore.append((fd, os.dup(fd)))
        os.dup2(replacement, fd)
        os.close(replacement)
    return _LineReader(reader), _Writer(writer), restore


async def serve_stdio(mcp: FastMCP[Any]) -> None:
    """Serve ``mcp`` over stdin/stdout until stdin closes, SIGTERM or SIGINT.

    A signal cancels an anyio scope around the server (the SDK runs on anyio task groups,
    which do not reliably pass on a bare asyncio task cancellation); the server's lifespan
    then cleans up: kernels, gateway, notebook flush.
    """
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await _serve(mcp)
        tg.cancel_scope.cancel()


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _serve(mcp: FastMCP[Any]) -> None:
    from fastmcp.server.context import reset_transport, set_transport
    from mcp.server.stdio import stdio_server

    lifespan = getattr(mcp, "_lifespan_manager", None)
    lowlevel = getattr(mcp, "_mcp_server", None)
    if lifespan is None or lowlevel is None:
        log.debug("fastmcp internals changed; using its stdio transport")
        await mcp.run_stdio_async(show_banner=False)
        return
    try:
        reader, writer, restore = await _open_pipes()
    except (OSError, ValueError) as exc:
        log.debug("stdin/stdout are not pipes (%s); using fastmcp's stdio transport", exc)
        await mcp.run_stdio_async(show_banner=False)
        return
    token = set_transport("stdio")
    try:
        async with lifespan(), stdio_server(reader, writer) as (read_stream, write_stream):  # type: ignore[arg-type]
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        reset_transport(token)
        for fd, saved in restore:
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
                os.close(saved)
