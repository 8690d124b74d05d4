"""KernelConnection against a scripted WebSocket peer (the transport is the one faked boundary).

A kernel that replies but whose ``status: idle`` never reaches us (IOPub lost, e.g. right after
a restart) must not hang the caller forever; IOPub that keeps talking after the reply must not
be cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from jlabgw.errors import ConnectionLostError
from jlabgw.jupyter import pending as pending_module
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.endpoint import GatewayEndpoint

pytestmark = pytest.mark.anyio

Script = Callable[[ServerConnection, dict[str, Any]], Any]


_ids = itertools.count()


def reply_to(request: dict[str, Any], channel: str, msg_type: str, content: dict[str, Any]) -> str:
    """A message from the "kernel" with a msg_id of its own, as real kernels give."""
    return json.dumps(
        {
            "channel": channel,
            "msg_type": msg_type,
            "header": {"msg_id": f"{msg_type}-{next(_ids)}", "msg_type": msg_type},
            "parent_header": request["header"],
            "metadata": {},
            "content": content,
        }
    )


@contextlib.asynccontextmanager
async def peer(script: Script) -> AsyncIterator[GatewayEndpoint]:
    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            await script(ws, json.loads(raw))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield GatewayEndpoint(url=f"http://127.0.0.1:{port}", token="t")


async def test_a_reply_without_idle_completes_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending_module, "IDLE_GRACE", 0.3)

    async def no_idle(ws: ServerConnection, req: dict[str, Any]) -> None:
        await ws.send(reply_to(req, "iopub", "status", {"execution_state": "busy"}))
        await ws.send(
            reply_to(req, "shell", "execute_reply", {"status": "ok", "execution_count": 1})
        )

    async with peer(no_idle) as endpoint:
        conn = KernelConnection(endpoint, "k1")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reply = await asyncio.wait_for(conn.execute("1"), timeout=5)
        waited = loop.time() - t0
        await conn.close()
    assert reply["content"]["execution_count"] == 1
    assert waited >= 0.3  # it did wait for the idle that never came


async def test_output_after_the_reply_keeps_the_request_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending_module, "IDLE_GRACE", 0.3)

    async def slow_iopub(ws: ServerConnection, req: dict[str, Any]) -> None:
        await ws.send(
            reply_to(req, "shell", "execute_reply", {"status": "ok", "execution_count": 2})
        )
        for i in range(5):  # 5 x 0.2 s = 1 s of output, each gap shorter than the grace
            await asyncio.sleep(0.2)
            await ws.send(reply_to(req, "iopub", "stream", {"name": "stdout", "text": f"{i}\n"}))
        await ws.send(reply_to(req, "iopub", "status", {"execution_state": "idle"}))

    seen: list[str] = []
    async with peer(slow_iopub) as endpoint:
        conn = KernelConnection(endpoint, "k2")
        await asyncio.wait_for(
            conn.execute("1", lambda m: seen.append(m["content"].get("text", ""))), timeout=5
        )
        await conn.close()
    assert "".join(seen) == "0\n1\n2\n3\n4\n"


class CutOffPeer:
    """A kernel whose first connection dies as a request arrives; ``ran_first`` says whether
    that request ran (its output lost with the connection) or never arrived."""

    def __init__(self, ran_first: bool) -> None:
        self.ran_first = ran_first
        self.count = 0  # the kernel's execution count
        self.runs: list[str] = []  # msg_ids of user code the kernel ran
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        async for raw in ws:
            req = json.loads(raw)
            content = req["content"]
            if first:
                if self.ran_first:
                    self.count += 1
                    self.runs.append(req["header"]["msg_id"])
                await ws.close()  # nothing of it reaches the client
                return
            if not content.get("silent"):
                self.count += 1
                self.runs.append(req["header"]["msg_id"])
            reply = {"status": "ok", "execution_count": self.count}
            await ws.send(reply_to(req, "iopub", "status", {"execution_state": "busy"}))
            await ws.send(reply_to(req, "shell", "execute_reply", reply))
            await ws.send(reply_to(req, "iopub", "status", {"execution_state": "idle"}))


@contextlib.asynccontextmanager
async def cut_off_peer(peer: CutOffPeer) -> AsyncIterator[GatewayEndpoint]:
    async with serve(peer.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield GatewayEndpoint(url=f"http://127.0.0.1:{port}", token="t")


async def test_a_request_lost_in_a_dead_connection_is_sent_again_and_runs_once() -> None:
    peer = CutOffPeer(ran_first=False)
    async with cut_off_peer(peer) as endpoint:
        conn = KernelConnection(endpoint, "k3")
        reply = await asyncio.wait_for(conn.execute("x = 1"), timeout=10)
        await conn.close()
    assert reply["content"]["execution_count"] == 1
    assert len(peer.runs) == 1  # ran once: it had never arrived, so it was sent again


async def test_a_request_that_ran_unseen_is_reported_not_rerun() -> None:
    peer = CutOffPeer(ran_first=True)
    async with cut_off_peer(peer) as endpoint:
        conn = KernelConnection(endpoint, "k4")
        with pytest.raises(ConnectionLostError, match=r"the kernel ran it \(execution_count 1\)"):
            await asyncio.wait_for(conn.execute("x = 1"), timeout=10)
        await conn.close()
    assert len(peer.runs) == 1  # not re-run


async def test_repeated_messages_are_dropped_and_a_reopen_names_the_last_one() -> None:
    """A gateway replaying after a reconnect may repeat messages: each counts once. The
    reopened WebSocket asks for what came after the last message received."""
    paths: list[str] = []

    async def twice(ws: ServerConnection, req: dict[str, Any]) -> None:
        paths.append(ws.request.path if ws.request else "")
        out = reply_to(req, "iopub", "stream", {"name": "stdout", "text": "once\n"})
        await ws.send(out)
        await ws.send('{"jlabgw_replay": true, ' + out[1:])  # as a replay would
        await ws.send(
            reply_to(req, "shell", "execute_reply", {"status": "ok", "execution_count": 1})
        )
        await ws.send(reply_to(req, "iopub", "status", {"execution_state": "idle"}))
        await ws.close()  # the next request has to reopen

    async with peer(twice) as endpoint:
        conn = KernelConnection(endpoint, "k1")
        texts: list[str] = []
        await conn.execute("1", on_iopub=lambda m: texts.append(m["content"].get("text", "")))
        assert texts == ["once\n"]
        assert conn.duplicates == 1
        for _ in range(100):  # bounded: until the reader has seen the close
            if not conn.connected:
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(ConnectionLostError):
            await asyncio.wait_for(conn.execute("2"), timeout=5)
        await conn.close()
    assert "jlabgw_last" not in paths[0]
    assert len(paths) == 2, paths
    assert "&jlabgw_last=status-" in paths[1]  # the idle status was the last message
