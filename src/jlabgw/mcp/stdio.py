"""MCP over stdio without worker threads.

The ``mcp`` SDK's stdio transport reads stdin and writes stdout through anyio worker threads:
every message crosses threads twice. On a busy 2-vCPU machine (MCP client, server, gateway and
kernel all awake) those wake-ups cost ~0.6 ms for a trivial call and more for a call that
awaits I/O (measured: a tool awaiting 5 ms took 7.7 ms round trip, 6.3–7.0 ms with this
transport). Here stdin and stdout are asyncio pipe transports on the event loop itself.

Like the SDK, fd 0 is pointed at /dev/null and fd 1 at stderr while serving, so a child
process or a stray ``print`` can never corrupt the protocol stream.

A line (one JSON-RPC message) is read in chunks and refused once it is over ``max_line`` bytes
(JLABGW_MAX_MESSAGE): the rest of it is skipped unkept and the client gets a JSON-RPC error for
the request's id (read from the line's first bytes; null if it is not there), so memory stays
bounded whatever the client sends, and the server goes on with the next line.

When stdin/stdout are not pipes (a file, say) or fastmcp's internals moved, this falls back to
``FastMCP.run_stdio_async`` so the server still works (without the line bound: the SDK's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Callable
from typing import Any

import anyio
from fastmcp import FastMCP

from jlabgw.config import DEFAULT_MAX_MESSAGE

__all__ = ["serve_stdio"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # a line is read in pieces of up to this (the StreamReader's limit)
_HEAD = 4096  # bytes of a refused line searched for its request id
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')
INVALID_REQUEST = -32600  # JSON-RPC


def request_id(head: bytes) -> int | str | None:
    """The top-level ``"id"`` in the first bytes of a JSON-RPC message, if it is there."""
    depth = 0
    tokens = _TOKEN.findall(head)
    for i, token in enumerate(tokens):
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and token == b'"id"' and tokens[i + 1 : i + 2] == [b":"]:
            try:
                value = json.loads(tokens[i + 2]) if i + 2 < len(tokens) else None
            except ValueError:
                return None
            return value if isinstance(value, int | str) and not isinstance(value, bool) else None
    return None


class _LineReader:
    """``async for line in reader`` over an asyncio StreamReader, as text; a line over
    ``max_line`` bytes is passed to ``refuse(head, size)`` instead, and skipped."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        max_line: int,
        refuse: Callable[[bytes, int], None],
    ) -> None:
        self._reader = reader
        self._max_line = max_line
        self._refuse = refuse

    def __aiter__(self) -> _LineReader:
        return self

    async def __anext__(self) -> str:
        while True:
            parts: list[bytes] = []
            head, size, end = b"", 0, False
            while not end:
                try:
                    chunk = await self._reader.readuntil(b"\n")
                    end = True
                except asyncio.LimitOverrunError as exc:  # no newline in the next _CHUNK
                    chunk = await self._reader.readexactly(exc.consumed)
                except asyncio.IncompleteReadError as exc:  # EOF: a last line without \n
                    chunk, end = exc.partial, True
                head = head or chunk[:_HEAD]
                size += len(chunk)
                if size <= self._max_line:
                    parts.append(chunk)
                else:
                    parts.clear()  # over the limit: the rest goes by, unkept
            if size == 0:
                raise StopAsyncIteration
            if size <= self._max_line:
                return b"".join(parts).decode("utf-8", errors="replace")
            self._refuse(head, size)


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()

    def refuse(self, head: bytes, size: int, max_line: int) -> None:
        """Answer a request whose line was over ``max_line`` bytes with a JSON-RPC error
        (one write: whole between the SDK's own lines)."""
        rid = request_id(head)
        message = (
            f"the message ({size} bytes) is over the {max_line} byte limit of this server "
            "(JLABGW_MAX_MESSAGE); it was not read, nothing of it ran"
        )
        log.warning("refused a message from the MCP client (id %r): %s", rid, message)
        error = {"code": INVALID_REQUEST, "message": message}
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}) + "\n"
        self._writer.write(line.encode("utf-8"))


async def _open_pipes(max_line: int) -> tuple[_LineReader, _Writer, list[tuple[int, int]]]:
    """Take over fds 0/1 as asyncio pipes; return the streams and (fd, saved) to restore."""
    loop = asyncio.get_running_loop()
    restore: list[tuple[int, int]] = []
    wire_in = os.dup(0)
    wire_out = os.dup(1)
    try:
        reader = asyncio.StreamReader(limit=_CHUNK)
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
    writer = _Writer(asyncio.StreamWriter(transport, protocol, None, loop))
    # Divert the standard descriptors away from the wire (as the SDK's transport does).
    for fd, replacement in ((0, os.open(os.devnull, os.O_RDONLY)), (1, os.dup(2))):
        restore.append((fd, os.dup(fd)))
        os.dup2(replacement, fd)
        os.close(replacement)
    lines = _LineReader(reader, max_line, lambda head, size: writer.refuse(head, size, max_line))
    return lines, writer, restore


async def serve_stdio(mcp: FastMCP[Any], max_line: int = DEFAULT_MAX_MESSAGE) -> None:
    """Serve ``mcp`` over stdin/stdout until stdin closes, SIGTERM or SIGINT; a message
    (line) from the client over ``max_line`` bytes is refused with a JSON-RPC error.

    A signal cancels an anyio scope around the server (the SDK runs on anyio task groups,
    which do not reliably pass on a bare asyncio task cancellation); the server's lifespan
    then cleans up: kernels, gateway, notebook flush.
    """
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        await _serve(mcp, max_line)
        tg.cancel_scope.cancel()


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _serve(mcp: FastMCP[Any], max_line: int) -> None:
    from fastmcp.server.context import reset_transport, set_transport
    from mcp.server.stdio import stdio_server

    lifespan = getattr(mcp, "_lifespan_manager", None)
    lowlevel = getattr(mcp, "_mcp_server", None)
    if lifespan is None or lowlevel is None:
        log.debug("fastmcp internals changed; using its stdio transport")
        await mcp.run_stdio_async(show_banner=False)
        return
    try:
        reader, writer, restore = await _open_pipes(max_line)
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
