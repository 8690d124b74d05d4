"""Gateway REST client and kernel WebSocket against a real gateway and ipykernel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jlabgw.backends import LocalBackend
from jlabgw.errors import KernelDiedError, KernelNotFoundError
from jlabgw.gateway import GatewayClient
from jlabgw.kernel import KernelConnection

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
