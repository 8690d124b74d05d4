"""A message from the MCP client over the line limit (issue 13) is refused with a JSON-RPC
error, without being kept in memory, and the server goes on with the next one (mcp/stdio.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from jlabgw.mcp.stdio import _LineReader, request_id

pytestmark = pytest.mark.anyio

LIMIT = 1 << 20


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"a', 7),
        (b'{"jsonrpc":"2.0","id":"abc","method":"x"', "abc"),
        (b'{"method": "tools/call", "params": {"id": 3, "code": "xxxx', None),  # nested, cut
        (b'{"method": "x", "params": {"id": 3}, "id": 4, "jsonrpc"', 4),
        (b'{"method": "notifications/x", "params": {"text": "\\"id\\": 5', None),
        (b'{"id": true}', None),
        (b'{"id": {"a": 1}}', None),
        (b"\xff\xfe garbage", None),
        (b"", None),
    ],
)
def test_the_request_id_is_read_from_the_top_level_only(head: bytes, expected: Any) -> None:
    assert request_id(head) == expected


async def read_all(data: list[bytes], limit: int) -> tuple[list[str], list[tuple[bytes, int]]]:
    """Lines from a real StreamReader fed ``data`` in pieces, as a pipe would (the feeder
    waits while the buffer is full, as a paused pipe does)."""
    stream = asyncio.StreamReader(limit=64 * 1024)
    refused: list[tuple[bytes, int]] = []
    lines = _LineReader(stream, limit, lambda head, size: refused.append((head[:40], size)))

    async def feed() -> None:
        for piece in data:
            for i in range(0, len(piece), 64 * 1024):
                while len(stream._buffer) > 256 * 1024:  # what a pipe's flow control does
                    await asyncio.sleep(0)
                stream.feed_data(piece[i : i + 64 * 1024])
                await asyncio.sleep(0)
        stream.feed_eof()

    feeder = asyncio.create_task(feed())
    got = [line async for line in lines]
    await feeder
    return got, refused


async def test_lines_under_the_limit_pass_whole() -> None:
    big = b'{"id": 1, "x": "' + b"y" * (LIMIT - 100) + b'"}\n'
    got, refused = await read_all([b'{"id": 0}\n', big, b'{"id": 2}'], LIMIT)
    assert got == ['{"id": 0}\n', big.decode(), '{"id": 2}']
    assert refused == []


async def test_a_line_over_the_limit_is_refused_unkept_and_the_next_one_is_whole() -> None:
    huge = b'{"jsonrpc": "2.0", "id": 9, "params": "' + b"z" * (64 * LIMIT) + b'"}\n'
    tracemalloc.start()
    try:
        got, refused = await read_all([b'{"id": 1}\n', huge, b'{"id": 2}\n'], LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == ['{"id": 1}\n', '{"id": 2}\n']
    assert [(request_id(head), size) for head, size in refused] == [(9, len(huge))]
    assert peak < 8 * LIMIT  # the 64 MiB line was never held (the test holds it once: untraced)


SERVER = textwrap.dedent(
    """
    import asyncio
    from fastmcp import FastMCP
    from jlabgw.mcp.stdio import serve_stdio

    mcp = FastMCP("bounded")

    @mcp.tool
    def echo(text: str) -> int:
        return len(text)

    asyncio.run(serve_stdio(mcp, max_line=%d))
    """
)


def test_the_server_answers_a_message_over_the_limit_with_an_error_and_goes_on(
    tmp_path: Path,
) -> None:
    """A real server process over real pipes (what an MCP client does, by hand)."""
    with (
        (tmp_path / "stderr").open("wb") as errlog,
        subprocess.Popen(
            [sys.executable, "-c", SERVER % LIMIT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
        ) as proc,
    ):
        wire_in, wire_out = proc.stdin, proc.stdout
        assert wire_in is not None
        assert wire_out is not None

        def send(message: dict[str, Any]) -> None:
            wire_in.write(json.dumps(message).encode() + b"\n")
            wire_in.flush()

        def receive() -> dict[str, Any]:
            line = wire_out.readline()
            assert line, (tmp_path / "stderr").read_text()
            answer: dict[str, Any] = json.loads(line)
            return answer

        def call(rid: int, text: str) -> dict[str, Any]:
            params = {"name": "echo", "arguments": {"text": text}}
            return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}

        try:
            hello = {"name": "test", "version": "0"}
            params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": hello}
            send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
            assert receive()["id"] == 0
            send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            send(call(1, "x" * (3 * LIMIT)))  # the id comes first, as SDK clients write it
            refused = receive()
            assert refused["id"] == 1
            assert refused["error"]["code"] == -32600
            assert "over the 1048576 byte limit" in refused["error"]["message"]
            assert "JLABGW_MAX_MESSAGE" in refused["error"]["message"]
            send(call(2, "y" * 1000))  # the session goes on
            answer = receive()
            assert answer["id"] == 2
            assert "1000" in json.dumps(answer["result"])
        finally:
            wire_in.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
