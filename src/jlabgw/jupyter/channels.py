"""One persistent WebSocket to one kernel, speaking the Jupyter messaging protocol.

Messages are built by :class:`jupyter_client.session.Session` and sent as JSON with a
``channel`` key (the gateway's default WebSocket protocol). A single reader task routes every
incoming message by ``parent_header.msg_id`` to the request that caused it
(:mod:`jlabgw.jupyter.pending` says when a request is complete), so no trailing output is
ever lost.

The WebSocket URL carries a fixed ``session_id``. If the socket drops while a request is in
flight, the reader reopens it with the same id (:mod:`jlabgw.jupyter.websocket`: bounded
retries) and the gateway replays what it buffered meanwhile, so the request completes with
nothing lost (:mod:`jlabgw.jupyter.replay` drops repeats and settles requests the old socket
swallowed). Code is never executed twice. Every way of getting no answer (the socket cannot be
opened, drops, or the connection was closed) fails the request with
:class:`~jlabgw.errors.ConnectionLostError`.

The kernel's messages are untrusted input: one over ``max_message`` bytes is refused unread
(:mod:`~jlabgw.jupyter.replay`), each other is checked (:mod:`~jlabgw.jupyter.messages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from websockets.asyncio.client import ClientConnection

from jlabgw.config import DEFAULT_MAX_MESSAGE
from jlabgw.errors import ConnectionLostError, JlabgwError, KernelDiedError
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.jupyter.messages import parse
from jlabgw.jupyter.pending import Message, OnMessage, PendingRequest, PendingRequests
from jlabgw.jupyter.replay import (
    SILENT_EXECUTE,
    SeenMessages,
    on_refused,
    refused_too_big,
    settle_refused,
    settle_unheard,
)
from jlabgw.jupyter.websocket import open_websocket, reopen_websocket

__all__ = ["KernelConnection", "Message", "OnMessage"]

log = logging.getLogger(__name__)

# After a restart: kernel_info until IOPub answers too, each attempt waiting this long.
_SYNC_WAIT = 1.0
_SYNC_ATTEMPTS = 30
# an execute_request's content besides its code (no stdin: input() fails at once)
_EXECUTE = {
    "silent": False,
    "store_history": True,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": True,
}


class KernelConnection:
    """Request/reply over a kernel's channels WebSocket, with IOPub routed per request."""

    def __init__(
        self,
        endpoint: GatewayEndpoint,
        kernel_id: str,
        session_id: str | None = None,
        *,
        lost: Callable[[], Awaitable[str | None]] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        """``lost`` says why the gateway behind ``endpoint`` is gone for good (a dead process,
        an ended job), or None: asked before retrying a dropped WebSocket, so a dead job is
        reported at once instead of after the whole reconnect schedule. ``max_message``:
        bytes in the largest message accepted from the kernel (JLABGW_MAX_MESSAGE)."""
        self.endpoint = endpoint
        self.max_message = max_message
        self.refused = 0  # messages refused for their size
        self._lost = lost
        self.kernel_id = kernel_id
        self.session_id = session_id or uuid.uuid4().hex
        self._session = Session(session=self.session_id, username="jlabgw")
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending = PendingRequests()
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._stale = False  # the kernel restarted by itself: reconnect before the next request
        self._checks: set[asyncio.Task[None]] = set()  # settle_unheard probes under way
        # the kernel's execution count as last seen in a reply (None: unknown)
        self.execution_count: int | None = 0
        self.reopens = 0
        self._opened = False  # a WebSocket was open once (later opens use the retry schedule)
        # msg_ids already received, and the newest: a reopened WebSocket asks the gateway
        # (gateway_ext) for what was written after it, which may repeat some of these
        self._seen = SeenMessages(self.session_id)

    @property
    def url(self) -> str:
        url = (
            f"{self.endpoint.ws_url}/api/kernels/{self.kernel_id}/channels"
            f"?session_id={self.session_id}"
        )
        last = self._seen.last_msg_id
        if last is not None:
            url += f"&jlabgw_last={urllib.parse.quote(last, safe='')}"
        return url

    def resume_after(self, msg_id: str | None) -> None:
        """Before the first connect: ask the gateway for what it sent after ``msg_id`` (to a
        connection with this session id that may have swallowed it: a server that died)."""
        if msg_id:
            self._seen.last_msg_id = msg_id

    @property
    def restarting(self) -> bool:
        """The kernel died and the gateway is restarting it (we have not caught up yet)."""
        return self._stale

    async def settle(self) -> None:
        """Wait until a kernel the gateway is auto-restarting answers again (bounded)."""
        if self._stale:
            self._stale = False
            await self.reset(ConnectionLostError("the kernel restarted"))

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            if self._closed:
                raise ConnectionLostError("this kernel connection was closed")
            # The first time, one try: a wrong endpoint should fail fast. After that (the
            # connection dropped while idle, a tunnel being re-made), the reopen schedule.
            self._ws = await (self._reopen() if self._opened else self._open_ws())
            self._opened = True
            self._reader = asyncio.create_task(self._read_loop(), name=f"ws-{self.kernel_id}")

    @property
    def duplicates(self) -> int:
        """Replayed messages dropped because they had arrived before."""
        return self._seen.duplicates

    async def _open_ws(self) -> ClientConnection:
        return await open_websocket(self.url, self.endpoint, self.kernel_id, self.max_message)

    async def _reopen(self) -> ClientConnection:
        ws = await reopen_websocket(
            self._open_ws,
            kernel_id=self.kernel_id,
            gateway_lost=self.gateway_lost,
            closed=lambda: self._closed,
        )
        self.reopens += 1
        return ws

    async def close(self) -> None:
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._pending.fail_all(ConnectionLostError("the kernel connection was closed"))

    def abandon(self, error: Exception) -> None:
        """Fail the requests in flight now with ``error``: a restart was asked for, so what
        the dying kernel may still send for them (an aborted reply, say) does not count."""
        self._pending.fail_all(error)

    async def reset(self, error: Exception) -> None:
        """Start over on a fresh WebSocket after the kernel was restarted.

        Requests in flight fail with ``error`` (a restarted kernel never answers them). The
        gateway keeps its ZMQ sockets across a restart, and IOPub published before they
        reconnect is lost, so a request sent right away could wait forever for its
        ``status: idle``. A new WebSocket makes the gateway nudge the kernel until IOPub
        flows before it accepts messages (JupyterLab reconnects after a restart too), except
        when it still believes the kernel busy (one that died mid-cell never said idle): so
        we nudge it ourselves as well.
        """
        async with self._connect_lock:
            self._pending.fail_all(error)
            reader, self._reader = self._reader, None
            ws, self._ws = self._ws, None
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if ws is not None:
                await ws.close()
            self.execution_count = 0  # a restarted kernel counts from the start
        await self.connect()
        await self._until_iopub_flows()

    async def _until_iopub_flows(self) -> None:
        """kernel_info until one is answered on shell *and* IOPub (bounded: ~30 s)."""
        for attempt in range(1, _SYNC_ATTEMPTS + 1):
            try:
                async with asyncio.timeout(_SYNC_WAIT):
                    await self.request("kernel_info_request", {}, wait_idle=True)
                return
            except TimeoutError:
                log.debug("kernel %s: IOPub not flowing yet (attempt %d)", self.kernel_id, attempt)
        log.warning("kernel %s: IOPub did not answer after a restart; going on", self.kernel_id)

    async def gateway_lost(self) -> str | None:
        """Why this kernel's gateway is gone for good, or None (also when nobody can tell)."""
        return await self._lost() if self._lost is not None else None

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        msg_type: str,
        content: dict[str, Any],
        *,
        on_iopub: OnMessage | None = None,
        wait_idle: bool = True,
        channel: str = "shell",
        on_sent: Callable[[str], None] | None = None,
    ) -> Message:
        """Send one request and wait for its reply (and its IOPub idle when ``wait_idle``).

        ``on_sent`` gets the request's msg_id once it is on the wire (a restarted server can
        then adopt the request: see :meth:`adopt`)."""
        await self.settle()
        await self.connect()
        ws = self._ws
        if ws is None:  # dropped between connecting and now
            raise ConnectionLostError(
                f"the WebSocket to kernel {self.kernel_id} closed before the request was sent; "
                "nothing was executed"
            )
        msg = self._session.msg(msg_type, content)
        msg_id: str = msg["header"]["msg_id"]
        msg["channel"] = channel
        pending = self._pending.expect(msg_id, on_iopub, wait_idle)
        pending.wire = json.dumps(msg, default=json_default)
        pending.runs_code = msg_type == "execute_request"
        try:
            try:
                await ws.send(pending.wire)
            except websockets.ConnectionClosed as exc:
                raise ConnectionLostError(
                    f"the WebSocket to kernel {self.kernel_id} closed before the request was "
                    "sent; nothing was executed"
                ) from exc
            if on_sent is not None:
                on_sent(msg_id)
            return await pending.done
        finally:
            self._pending.discard(msg_id)

    def _after_reopen(self, cut: dict[str, PendingRequest] | None) -> None:
        """Settle the requests (and, ``cut`` by a refused message, replies) a socket lost."""
        probe = functools.partial(self.request, "execute_request", SILENT_EXECUTE)
        unheard = self._pending.unheard()
        checks = [
            settle_unheard(unheard, self.execution_count, probe, self._resend, self.kernel_id)
        ]
        if cut:
            checks.append(settle_refused(cut, probe, self.kernel_id, self.max_message))
        for coro in checks:
            check = asyncio.create_task(coro)
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def _resend(self, msg_id: str, wire: str) -> bool:
        """Send a request that never arrived again; False if there is no socket to send on."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(wire)
            log.info("kernel %s: sent %s again (it never arrived)", self.kernel_id, msg_id)
        except websockets.ConnectionClosed:
            # dropped again: still unheard of, so the next reopen probes anew
            log.info("kernel %s: the connection dropped again", self.kernel_id)
        return True

    async def adopt(self, msg_id: str, on_iopub: OnMessage | None = None) -> Message:
        """Wait for the reply to a request another process sent with this WebSocket session id
        (a server that was killed while a cell ran). Registered before connecting: the gateway
        replays what it buffered for the session id as soon as the WebSocket opens."""
        pending = self._pending.expect(msg_id, on_iopub, wait_idle=True)
        try:
            await self.connect()
            return await pending.done
        finally:
            self._pending.discard(msg_id)

    async def execute(
        self,
        code: str,
        on_iopub: OnMessage | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Message:
        """Run ``code``; IOPub messages go to ``on_iopub``; returns the ``execute_reply``."""
        content = {"code": code, **_EXECUTE}
        return await self.request("execute_request", content, on_iopub=on_iopub, on_sent=on_sent)

    async def kernel_info(self) -> Message:
        """The kernel's ``kernel_info_reply`` (it answers once the kernel is ready)."""
        return await self.request("kernel_info_request", {}, wait_idle=False)

    # -- reader ----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        error: Exception = ConnectionLostError(
            f"the WebSocket to kernel {self.kernel_id} closed while a request was running"
        )
        try:
            while True:
                ws = self._ws
                if ws is None:
                    break
                cut = None
                try:
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            log.debug("ignoring binary frame (%d bytes) from kernel", len(raw))
                            continue
                        msg = parse(raw)
                        if msg is not None and self._seen.first_time(msg):
                            self._dispatch(msg)
                except websockets.ConnectionClosed as exc:
                    if refused_too_big(exc):  # websockets closed it: 1009, message too big
                        self.refused += 1
                        cut = self._pending.waiting()
                        on_refused(cut, self._seen, self.max_message)
                if self._closed or not self._pending:
                    break  # idle: the next request reconnects
                # A request is in flight: reopen with the same session id. The gateway buffered
                # the kernel's messages meanwhile and replays them, so the request completes
                # with nothing lost and nothing sent twice.
                try:
                    self._ws = await self._reopen()
                    self._after_reopen(cut)
                except JlabgwError as exc:
                    error = ConnectionLostError(
                        f"lost the WebSocket to kernel {self.kernel_id} during a request and "
                        f"could not reopen it ({exc}); the cell was not re-run, its output may "
                        "be incomplete in the notebook"
                    )
                    break
        except Exception as exc:  # a bug in dispatch must not leave requests hanging forever
            log.exception("kernel %s reader failed", self.kernel_id)
            error = ConnectionLostError(f"reading from kernel {self.kernel_id} failed: {exc}")
        finally:
            self._ws = None
            self._pending.fail_all(error)

    def _dispatch(self, msg: Message) -> None:  # msg is checked: messages.parse
        channel, msg_type = msg.get("channel"), msg["msg_type"]
        pending = self._pending.get(msg["parent_header"].get("msg_id"))
        if pending is not None:
            pending.seen = True
        if channel == "iopub" and msg_type == "status":
            state = msg["content"].get("execution_state")
            if pending is not None and state == "idle":
                pending.on_idle()
            elif state in ("restarting", "dead") and pending is None:
                # The gateway restarts a dead kernel on the same ports; IOPub published before
                # its SUB socket reconnects is lost. The next request goes on a new WebSocket,
                # which the gateway opens only once IOPub flows (as after restart_kernel).
                self._stale = True
                what = "died and is restarting" if state == "restarting" else "died"
                self._pending.fail_all(
                    KernelDiedError(
                        f"the kernel {what} while running this cell; its variables are gone. "
                        "Use restart_kernel or start_session_resume_notebook to rebuild the state"
                    )
                )
            return
        if pending is None:
            return
        if channel == "iopub":
            try:
                pending.on_output(msg)
            except Exception:  # one output that cannot be recorded must not end the reader
                log.exception("kernel %s: an output could not be recorded", self.kernel_id)
        elif channel == "shell" or channel == "control":
            count = msg["content"].get("execution_count")
            if isinstance(count, int) and self.execution_count is not None:
                self.execution_count = max(self.execution_count, count)
            pending.on_reply(msg)
        elif channel == "stdin":
            # allow_stdin=False means this should not happen; never leave the kernel waiting.
            log.warning("kernel asked for input although stdin is disabled; ignoring")
