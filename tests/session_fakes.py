"""Fakes for the session layer's unit tests (no tests here): a fake gateway of fake kernels,
the connections to them, the :class:`~jlabgw.sessions.kernels.KernelStarter` that hands them
out, and a minimal backend. Notebooks are real (a NotebookWriter in tmp_path).

A fake kernel runs a tiny language, one statement per line:

    print TEXT    a line on stdout
    wait NAME     block until ``gateway.release(NAME)``; an interrupt ends the cell with
                  KeyboardInterrupt
    fail          end the cell with ValueError: boom
    = VALUE       an execute_result of VALUE

Like a real one, a kernel's run goes on when the connection that sent it closes (a server
that exits); its messages stay on the gateway and are replayed to ``adopt`` after the last one
the caller saw (``resume_after``).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jlabgw.cluster.backends.base import Backend
from jlabgw.cluster.backends.status import BackendStatus
from jlabgw.config import Settings
from jlabgw.errors import ConnectionLostError, KernelNotFoundError
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.progress import Progress
from jlabgw.sessions.kernels import Connection, Started
from tests.helpers import make_settings

Message = dict[str, Any]
OnMessage = Callable[[Message], None]

_ids = itertools.count(1)


def settings_for(root: Path, **extra: str) -> Settings:
    """:func:`tests.helpers.make_settings` with no spare kernel and fast progress reports."""
    return make_settings(root, **{"spare_kernel": "false", "progress_interval": "0.05", **extra})


def _message(parent: str, msg_type: str, content: dict[str, Any]) -> Message:
    return {
        "msg_type": msg_type,
        "header": {"msg_id": f"out-{next(_ids)}", "msg_type": msg_type},
        "parent_header": {"msg_id": parent},
        "metadata": {},
        "content": content,
    }


class FakeRun:
    """One execute_request as the gateway sees it: its messages so far and its reply."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.listeners: list[OnMessage] = []
        self.done: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def emit(self, msg: Message) -> None:
        self.messages.append(msg)
        for listener in list(self.listeners):
            listener(msg)

    def after(self, msg_id: str | None) -> list[Message]:
        ids = [m["header"]["msg_id"] for m in self.messages]
        return self.messages[ids.index(msg_id) + 1 :] if msg_id in ids else list(self.messages)


class FakeKernel:
    def __init__(self, gateway: FakeGateway, kernel_id: str) -> None:
        self.gateway = gateway
        self.id = kernel_id
        self.count = 0
        self.alive = True
        self.state = "idle"
        self.ran: list[str] = []  # the code of every cell it ran, in order
        self.runs: dict[str, FakeRun] = {}  # msg_id -> run
        self.interrupted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, code: str, msg_id: str) -> FakeRun:
        run = self.runs[msg_id] = FakeRun()
        task = asyncio.create_task(self._program(run, code, msg_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _program(self, run: FakeRun, code: str, parent: str) -> None:
        self.state = "busy"
        self.interrupted.clear()
        self.ran.append(code)
        self.count += 1
        count, status = self.count, "ok"
        for line in code.splitlines():
            verb, _, arg = line.partition(" ")
            if verb == "print":
                run.emit(_message(parent, "stream", {"name": "stdout", "text": arg + "\n"}))
            elif verb == "wait" and not await self._wait(arg):
                status = self._error(run, parent, "KeyboardInterrupt", "")
                break
            elif verb == "fail":
                status = self._error(run, parent, "ValueError", "boom")
                break
            elif verb == "=":
                content = {"data": {"text/plain": arg}, "metadata": {}, "execution_count": count}
                run.emit(_message(parent, "execute_result", content))
        self.state = "idle"
        run.done.set_result({"content": {"status": status, "execution_count": count}})

    async def _wait(self, gate: str) -> bool:
        """False if interrupted before ``gate`` opened."""
        opened = asyncio.ensure_future(self.gateway.gate(gate).wait())
        interrupted = asyncio.ensure_future(self.interrupted.wait())
        await asyncio.wait({opened, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        interrupted.cancel()
        return not self.interrupted.is_set()

    def _error(self, run: FakeRun, parent: str, ename: str, evalue: str) -> str:
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        run.emit(_message(parent, "error", content))
        return "error"


class FakeGateway:
    """The kernels of one gateway, shared by every starter (server) that reaches it."""

    def __init__(self) -> None:
        self.kernels: dict[str, FakeKernel] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.lost_reason: str | None = None  # set: the gateway is gone for good

    def new_kernel(self) -> FakeKernel:
        kernel = FakeKernel(self, str(uuid.uuid4()))  # as a gateway names them
        self.kernels[kernel.id] = kernel
        return kernel

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def kill(self, kernel_id: str) -> None:
        """The kernel is gone (culled, say): it no longer answers and cannot be found."""
        self.kernels.pop(kernel_id).alive = False


class FakeConnection:
    """What the session layer uses of a KernelConnection (see ``kernels.Connection``)."""

    def __init__(self, kernel: FakeKernel, session_id: str | None = None) -> None:
        self.kernel = kernel
        self.kernel_id = kernel.id
        self.session_id = session_id or f"ws-{next(_ids)}"
        self.execution_count: int | None = 0
        self.restarting = False
        self.closed = False
        self.connects = 0
        self.resumed_after: str | None = None
        self._pending: set[asyncio.Future[Message]] = set()

    def _check(self) -> None:
        if self.kernel.gateway.lost_reason is not None:
            raise ConnectionLostError("the WebSocket to the kernel closed")
        if self.closed:
            raise ConnectionLostError("this kernel connection was closed")

    async def connect(self) -> None:
        self._check()
        self.connects += 1

    async def close(self) -> None:
        self.closed = True
        for waiter in list(self._pending):
            if not waiter.done():
                waiter.set_exception(ConnectionLostError("the kernel connection was closed"))

    async def kernel_info(self) -> Message:
        self._check()
        if not self.kernel.alive:
            raise KernelNotFoundError(f"kernel {self.kernel_id} no longer exists")
        return {"content": {"status": "ok", "language_info": {"name": "python"}}}

    async def execute(
        self,
        code: str,
        on_iopub: OnMessage | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Message:
        self._check()
        msg_id = f"{self.session_id}_{next(_ids)}"
        if on_sent is not None:
            on_sent(msg_id)
        return await self._follow(self.kernel.run(code, msg_id), on_iopub, None)

    async def adopt(self, msg_id: str, on_iopub: OnMessage | None = None) -> Message:
        await self.connect()
        return await self._follow(self.kernel.runs[msg_id], on_iopub, self.resumed_after)

    def resume_after(self, msg_id: str | None) -> None:
        self.resumed_after = msg_id

    async def _follow(self, run: FakeRun, on_iopub: OnMessage | None, after: str | None) -> Message:
        listener = on_iopub or (lambda msg: None)
        for msg in run.after(after):
            listener(msg)
        run.listeners.append(listener)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending.add(waiter)

        def finished(done: asyncio.Future[Message]) -> None:
            if not waiter.done():
                waiter.set_result(done.result())

        run.done.add_done_callback(finished)
        try:
            reply = await waiter
        finally:
            self._pending.discard(waiter)
            run.listeners.remove(listener)
        self.execution_count = reply["content"]["execution_count"]
        return reply

    def abandon(self, error: Exception) -> None:
        for waiter in list(self._pending):
            if not waiter.done():
                waiter.set_exception(error)

    async def reset(self, error: Exception) -> None:
        self.abandon(error)
        self.execution_count = 0

    async def settle(self) -> None:
        self.restarting = False

    async def gateway_lost(self) -> str | None:
        return self.kernel.gateway.lost_reason


METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Fake Python", "language": "python"},
    "language_info": {"name": "python"},
}


class FakeStarter:
    """A KernelStarter on a :class:`FakeGateway`; records what it was asked to do."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.started: list[str] = []  # kernel ids, in order
        self.discarded: list[str] = []
        self.interrupted: list[str] = []
        self.hold: asyncio.Event | None = None  # set: a start waits until it is set

    async def start(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> Started:
        await progress(0, None, "starting a fake kernel")
        if self.hold is not None:
            await self.hold.wait()
        conn = FakeConnection(self.gateway.new_kernel())
        await conn.kernel_info()
        self.started.append(conn.kernel_id)
        return Started(conn, METADATA, {"gateway": 0.0, "kernel": 0.0})

    async def connect(self, kernel_id: str, ws_session_id: str, lane: str = "") -> Connection:
        if kernel_id not in self.gateway.kernels:
            raise KernelNotFoundError(f"its kernel {kernel_id} is gone")
        return FakeConnection(self.gateway.kernels[kernel_id], ws_session_id)

    async def discard(self, conn: Connection, lane: str = "") -> None:
        await conn.close()
        self.gateway.kernels.pop(conn.kernel_id, None)
        self.discarded.append(conn.kernel_id)

    async def interrupt(self, kernel_id: str, lane: str = "") -> None:
        self.interrupted.append(kernel_id)
        self.gateway.kernels[kernel_id].interrupted.set()

    async def restart(self, kernel_id: str, lane: str = "") -> None:
        self.gateway.kernels[kernel_id].count = 0

    async def delete(self, kernel_id: str, lane: str = "") -> None:
        if self.gateway.kernels.pop(kernel_id, None) is None:
            raise KernelNotFoundError(f"kernel {kernel_id} not found")

    async def execution_state(self, kernel_id: str, lane: str = "") -> str | None:
        return self.gateway.kernels[kernel_id].state


class FakeBackend(Backend):
    """A backend whose gateway is never reached (the starter is fake); with a ``registry``
    name its kernels outlive the server (as a kept batch job's do), on job ``identity``."""

    name = "fake"

    def __init__(self, registry: str | None = None, identity: str = "job-1") -> None:
        super().__init__()
        self._registry = registry
        self._identity = identity

    async def start(self) -> GatewayEndpoint:
        return GatewayEndpoint(url="http://127.0.0.1:9", token="fake")

    async def lost(self) -> str | None:
        return None

    def registry_name(self) -> str | None:
        return self._registry

    def keeps_kernels(self) -> bool:
        return self._registry is not None

    def identity(self) -> str | None:
        return self._identity

    async def aclose(self) -> None:
        return None

    def close_now(self) -> None:
        return None

    def describe(self) -> BackendStatus:
        return BackendStatus(self.name)
