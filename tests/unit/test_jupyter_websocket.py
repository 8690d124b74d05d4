"""The WebSocket reopen schedule against a fake opener (the one faked boundary: one attempt
to open the socket) and a fake backend answer to "is the gateway gone?"; the size limit of a
message against a scripted gateway peer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from jlabgw.errors import (
    ConnectionLostError,
    GatewayAuthError,
    GatewayServerError,
    KernelNotFoundError,
)
from jlabgw.jupyter import websocket as websocket_module
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.jupyter.websocket import reopen_websocket

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_module, "REOPEN_DELAYS", (0.0, 0.0, 0.0, 0.0))


KERNEL = "12345678-1234-1234-1234-123456789abc"
OPENED: Any = object()  # what a successful attempt returns


class Opener:
    """Fails with ``errors`` in turn, then opens."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def __call__(self) -> Any:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return OPENED


async def gone_never() -> str | None:
    return None


async def test_no_answer_and_server_errors_are_retried_until_it_opens() -> None:
    opener = Opener(ConnectionLostError("refused"), GatewayServerError("HTTP 503"))
    ws = await reopen_websocket(
        opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False
    )
    assert ws is OPENED
    assert opener.attempts == 3


@pytest.mark.parametrize("error", [GatewayAuthError("401"), KernelNotFoundError("404")])
async def test_what_a_retry_cannot_fix_ends_at_once(error: Exception) -> None:
    opener = Opener(error)
    with pytest.raises(type(error)):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False)
    assert opener.attempts == 1


async def test_a_gateway_the_backend_calls_gone_ends_the_schedule_with_its_reason() -> None:
    async def job_ended() -> str | None:
        return "batch job 7 is no longer running (TIMEOUT)"

    opener = Opener(*[ConnectionLostError("refused")] * 4)
    with pytest.raises(ConnectionLostError, match=r"batch job 7 is no longer running"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=job_ended, closed=lambda: False)
    assert opener.attempts == 1


async def test_the_schedule_is_bounded_and_ends_with_the_last_error() -> None:
    opener = Opener(*[ConnectionLostError(f"refused {i}") for i in range(10)])
    with pytest.raises(ConnectionLostError, match="refused 3"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False)
    assert opener.attempts == 4


async def test_a_closed_connection_stops_reopening() -> None:
    opener = Opener()
    with pytest.raises(ConnectionLostError, match="closed"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: True)
    assert opener.attempts == 0


# -- a message over the size limit (issue 13): refused unread, the cell says so ---------------
# KernelConnection against a scripted gateway on 127.0.0.1 (the peer is the faked boundary).

LIMIT = 1 << 20
_ids = itertools.count()


def from_kernel(request: dict[str, Any], channel: str, msg_type: str, content: Any) -> str:
    return json.dumps(
        {
            "channel": channel,
            "msg_type": msg_type,
            "header": {"msg_id": f"k-{msg_type}-{next(_ids)}", "msg_type": msg_type},
            "parent_header": request["header"],
            "metadata": {},
            "content": content,
        }
    )


def stream(request: dict[str, Any], text: str) -> str:
    return from_kernel(request, "iopub", "stream", {"name": "stdout", "text": text})


def reply(request: dict[str, Any], count: int) -> list[str]:
    return [
        from_kernel(request, "shell", "execute_reply", {"status": "ok", "execution_count": count}),
        from_kernel(request, "iopub", "status", {"execution_state": "idle"}),
    ]


class Gateway:
    """Runs the first cell as: "before", a message of ``huge`` bytes, then (``after_close``)
    what jupyter_server would replay to the next socket. Every later request (the probe) is
    answered at once."""

    def __init__(self, huge: int, reply_survives: bool) -> None:
        self.huge = huge
        self.reply_survives = reply_survives
        self.paths: list[str] = []
        self.first: dict[str, Any] | None = None
        self.close_codes: list[int | None] = []

    async def handler(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        if self.first is not None and self.reply_survives:  # buffered while no socket was open
            await ws.send(stream(self.first, "after\n"))
            for msg in reply(self.first, 1):
                await ws.send(msg)
        try:
            async for raw in ws:
                request = json.loads(raw)
                if self.first is None:
                    self.first = request
                    await ws.send(stream(request, "before\n"))
                    await ws.send(stream(request, "x" * self.huge))
                    await ws.send(stream(request, "lost with the socket\n"))
                    continue
                for msg in reply(request, 1):
                    await ws.send(msg)
        except websockets.ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)


@contextlib.asynccontextmanager
async def gateway(script: Gateway) -> AsyncIterator[GatewayEndpoint]:
    async with serve(script.handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield GatewayEndpoint(url=f"http://127.0.0.1:{port}", token="t")


def texts(outputs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")


async def test_a_message_over_the_limit_is_refused_and_the_cell_goes_on() -> None:
    script = Gateway(huge=2 * LIMIT, reply_survives=True)
    outputs: list[dict[str, Any]] = []
    async with gateway(script) as endpoint:
        conn = KernelConnection(endpoint, KERNEL, max_message=LIMIT)
        result = await asyncio.wait_for(conn.execute("print(...)", outputs.append), 10)
        assert result["content"]["status"] == "ok"
        assert conn.refused == 1
        # the session goes on, on the reopened socket
        second = await asyncio.wait_for(conn.execute("1"), 10)
        assert second["content"]["status"] == "ok"
        await conn.close()
    text = texts(outputs)
    assert text.startswith("before\n[jlabgw: the kernel sent a message over 1 MiB")
    assert "(JLABGW_MAX_MESSAGE); it was refused unread" in text
    assert text.endswith("after\n")
    assert "x" * 100 not in text
    # the note names no message: a server taking the cell over must not resume after it
    notes = [m for m in outputs if "[jlabgw:" in m["content"].get("text", "")]
    assert [m["header"]["msg_id"] for m in notes] == [""]
    assert script.close_codes[0] == 1009  # "message too big", from the client
    # the reopened socket does not ask for a replay, which would bring the message again
    assert len(script.paths) == 2
    assert "jlabgw_last" not in script.paths[1]


async def test_a_reply_lost_with_the_refused_message_fails_the_cell_saying_why() -> None:
    script = Gateway(huge=2 * LIMIT, reply_survives=False)
    outputs: list[dict[str, Any]] = []
    async with gateway(script) as endpoint:
        conn = KernelConnection(endpoint, KERNEL, max_message=LIMIT)
        with pytest.raises(ConnectionLostError, match=r"over 1 MiB \(JLABGW_MAX_MESSAGE\)"):
            await asyncio.wait_for(conn.execute("print(...)", outputs.append), 10)
        assert "it was refused unread" in texts(outputs)
        second = await asyncio.wait_for(conn.execute("1"), 10)
        assert second["content"]["status"] == "ok"
        await conn.close()


async def test_a_message_under_the_limit_passes_whole() -> None:
    script = Gateway(huge=LIMIT - 4096, reply_survives=True)
    outputs: list[dict[str, Any]] = []

    async def cell_then_reply(ws: ServerConnection) -> None:
        async for raw in ws:
            request = json.loads(raw)
            await ws.send(stream(request, "x" * (LIMIT - 4096)))
            for msg in reply(request, 1):
                await ws.send(msg)

    script.handler = cell_then_reply  # type: ignore[method-assign]
    async with gateway(script) as endpoint:
        conn = KernelConnection(endpoint, KERNEL, max_message=LIMIT)
        await asyncio.wait_for(conn.execute("print(...)", outputs.append), 10)
        await conn.close()
    assert texts(outputs) == "x" * (LIMIT - 4096)
    assert conn.refused == 0
