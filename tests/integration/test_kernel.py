"""Gateway REST client and kernel WebSocket against a real gateway and ipykernel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.errors import KernelDiedError, KernelNotFoundError
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.rest import GatewayClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Kernel = tuple[GatewayClient, KernelConnection]


@pytest.fixture
async def kernel(shared_backend: LocalBackend) -> AsyncIterator[Kernel]:
    endpoint = await shared_backend.start()
    gateway = GatewayClient(endpoint)
    model = await gateway.start_kernel("python3")
    conn = KernelConnection(endpoint, model["id"])
    await conn.kernel_info()
    yield gateway, conn
    await conn.close()
    with contextlib.suppress(KernelNotFoundError):
        await gateway.delete_kernel(model["id"])
    await gateway.aclose()


def stream_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


async def test_execute_collects_everything_until_idle(kernel: Kernel) -> None:
    _, conn = kernel
    messages: list[dict[str, Any]] = []
    reply = await conn.execute(
        "import sys\nfor i in range(3): print(i)\nprint('err', file=sys.stderr)\n'done'",
        messages.append,
    )
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["execution_count"] == 1
    types = [m["msg_type"] for m in messages]
    assert "execute_result" in types
    assert stream_text(messages).replace("err\n", "") == "0\n1\n2\n"
    # the last IOPub message for the request (idle) came before we returned
    assert types[-1] == "execute_result" or types[-1] == "stream"


async def test_input_fails_fast(kernel: Kernel) -> None:
    _, conn = kernel
    t0 = time.monotonic()
    reply = await asyncio.wait_for(conn.execute("input('name? ')"), timeout=10)
    assert time.monotonic() - t0 < 5
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "StdinNotImplementedError"


async def test_client_socket_has_nodelay(kernel: Kernel) -> None:
    _, conn = kernel
    assert conn._ws is not None
    sock = conn._ws.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_interrupt_stops_a_sleeping_cell(kernel: Kernel) -> None:
    gateway, conn = kernel
    task = asyncio.create_task(conn.execute("import time; time.sleep(60)"))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    await gateway.interrupt_kernel(conn.kernel_id)
    reply = await asyncio.wait_for(task, timeout=20)
    assert time.monotonic() - t0 < 10
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # the kernel is still usable and kept its state
    assert (await conn.execute("1"))["content"]["status"] == "ok"


async def test_kernel_death_is_reported(kernel: Kernel) -> None:
    _, conn = kernel
    with pytest.raises(KernelDiedError, match="restart_kernel"):
        await asyncio.wait_for(conn.execute("import os; os._exit(1)"), timeout=30)


async def test_reconnect_after_the_socket_drops(kernel: Kernel) -> None:
    _, conn = kernel
    await conn.execute("x = 41")
    assert conn._ws is not None
    await conn._ws.close()
    await asyncio.sleep(0.1)
    assert not conn.connected
    messages: list[dict[str, Any]] = []
    reply = await conn.execute("print(x + 1)", messages.append)
    assert reply["content"]["status"] == "ok"
    assert stream_text(messages) == "42\n"  # same kernel, state kept, nothing re-run


async def test_restart_and_missing_kernel(kernel: Kernel) -> None:
    gateway, conn = kernel
    await conn.execute("y = 1")
    await gateway.restart_kernel(conn.kernel_id)
    reply = await conn.execute("y")
    assert reply["content"]["ename"] == "NameError"
    specs = await gateway.kernelspecs()
    assert "python3" in specs["kernelspecs"]
    assert any(k["id"] == conn.kernel_id for k in await gateway.list_kernels())
    with pytest.raises(KernelNotFoundError, match="no longer exists"):
        await gateway.get_kernel("00000000-0000-0000-0000-000000000000")


async def _drop_mid_cell_and_reconnect(shared_backend: LocalBackend, *, ask_replay: bool) -> str:
    """Run a printing cell on a raw WebSocket, stop reading after its first line, let the
    gateway write more into the socket, abort it (what an sshd killed mid-cell does to those
    bytes), reconnect with the same session id and collect the rest. Returns all text seen."""
    import json
    import uuid

    import websockets
    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    endpoint = await shared_backend.start()
    gateway = GatewayClient(endpoint)
    kernel_id = (await gateway.start_kernel("python3"))["id"]
    session = Session(session=uuid.uuid4().hex, username="test")
    url = f"{endpoint.ws_url}/api/kernels/{kernel_id}/channels?session_id={session.session}"
    headers = {"Authorization": f"token {endpoint.token}"}
    seen: dict[str, dict[str, Any]] = {}
    try:
        ws = await websockets.connect(
            url, additional_headers=headers, max_size=None, ssl=endpoint.ssl_context
        )
        code = "import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.02)"
        request = session.msg("execute_request", {"code": code, "silent": False})
        request["channel"] = "shell"
        await ws.send(json.dumps(request, default=json_default))
        parent = request["header"]["msg_id"]
        last = ""
        async with asyncio.timeout(30):
            while not stream_text(list(seen.values())):
                msg = json.loads(await ws.recv())
                seen[msg["header"]["msg_id"]] = msg
                last = msg["header"]["msg_id"]
        await asyncio.sleep(0.4)  # the gateway goes on writing; nobody reads it
        ws.transport.abort()
        await asyncio.sleep(0.3)
        again = url + (f"&jlabgw_last={last}" if ask_replay else "")
        ws = await websockets.connect(
            again, additional_headers=headers, max_size=None, ssl=endpoint.ssl_context
        )
        idle = replied = False
        async with asyncio.timeout(30):
            while not (idle and replied):
                msg = json.loads(await ws.recv())
                seen.setdefault(msg["header"]["msg_id"], msg)
                if msg["parent_header"].get("msg_id") == parent:
                    replied |= msg["msg_type"] == "execute_reply"
                    idle |= (
                        msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    )
        await ws.close()
    finally:
        with contextlib.suppress(KernelNotFoundError):
            await gateway.delete_kernel(kernel_id)
        await gateway.aclose()
    mine = [m for m in seen.values() if m["parent_header"].get("msg_id") == parent]
    return stream_text(mine)


async def test_output_swallowed_by_a_dropped_connection_is_sent_again(
    shared_backend: LocalBackend,
) -> None:
    everything = "".join(f"{i}\n" for i in range(30))
    assert await _drop_mid_cell_and_reconnect(shared_backend, ask_replay=True) == everything
    # the loss it repairs: jupyter_server's own replay alone misses what was in flight
    partial = await _drop_mid_cell_and_reconnect(shared_backend, ask_replay=False)
    assert partial != everything
    assert len(partial) < len(everything)
