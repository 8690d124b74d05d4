"""One persistent WebSocket to one kernel, speaking the Jupyter messaging protocol.

Messages are built by :class:`jupyter_client.session.Session` and sent as JSON with a
``channel`` key (the gateway's default WebSocket protocol). A single reader task routes every
incoming message by ``parent_header.msg_id`` to the request that caused it; a request is
complete when its shell reply *and* its ``status: idle`` on IOPub have both arrived
(jupyter_client's rule), so no trailing output is ever lost.

The WebSocket URL carries a fixed ``session_id``. If the socket drops while a request is in
flight, the reader reopens it with the same id (bounded retries) and the gateway replays what it
buffered meanwhile, so the request completes with nothing lost. A request is never re-sent:
code is never executed twice. If reopening fails, the request fails with a clear error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from websockets.asyncio.client import ClientConnection

from jlabgw.errors import (
    ConnectionLostError,
    GatewayAuthError,
    GatewayError,
    JlabgwError,
    KernelDiedError,
    KernelNotFoundError,
)
from jlabgw.jupyter.endpoint import GatewayEndpoint

__all__ = ["KernelConnection", "Message", "OnMessage"]

log = logging.getLogger(__name__)

Message = dict[str, Any]
OnMessage = Callable[[Message], None]

_OPEN_TIMEOUT = 30.0
_SEEN_MAX = 20_000  # msg_ids remembered for dropping replays (the gateway keeps <= 4096)
_REOPEN_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # bounded: ~16 s plus connect timeouts
# After the reply, IOPub must end with ``status: idle``. If IOPub goes quiet for this long
# instead (a lost subscription), the request completes rather than waiting forever.
IDLE_GRACE = 10.0
# After a restart: kernel_info until IOPub answers too, each attempt waiting this long.
_SYNC_WAIT = 1.0
_SYNC_ATTEMPTS = 30
# After a reopen, how long the kernel_info that tells delivered from lost requests may take
# (it waits behind a running cell; past this, requests are left to complete as they will).
_UNDELIVERED_PROBE = 120.0


@dataclass
class _Pending:
    on_iopub: OnMessage | None
    done: asyncio.Future[Message]
    reply: Message | None = None
    idle: bool = False
    wait_idle: bool = True
    seen: bool = False  # any IOPub message or reply for it: the kernel got the request
    wire: str | None = None  # the request as sent (sent again only if it provably never arrived)
    runs_code: bool = False  # an execute_request: may be sent again only if it never arrived
    grace: asyncio.TimerHandle | None = None

    def maybe_finish(self) -> None:
        if self.done.done() or self.reply is None:
            return
        if self.idle or not self.wait_idle:
            self._cancel_grace()
            self.done.set_result(self.reply)
        else:  # replied, IOPub not idle yet: (re)arm the quiet timer
            self._cancel_grace()
            self.grace = asyncio.get_running_loop().call_later(IDLE_GRACE, self._give_up_idle)

    def _give_up_idle(self) -> None:
        if not self.done.done() and self.reply is not None:
            log.warning(
                "no IOPub idle status %.0f s after the reply to %s; completing without it",
                IDLE_GRACE,
                self.reply.get("parent_header", {}).get("msg_id", "?"),
            )
            self.done.set_result(self.reply)

    def _cancel_grace(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None


class KernelConnection:
    """Request/reply over a kernel's channels WebSocket, with IOPub routed per request."""

    def __init__(
        self,
        endpoint: GatewayEndpoint,
        kernel_id: str,
        session_id: str | None = None,
        *,
        lost: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        """``lost`` says why the gateway behind ``endpoint`` is gone for good (a dead process,
        an ended job), or None: asked before retrying a dropped WebSocket, so a dead job is
        reported at once instead of after the whole reconnect schedule."""
        self.endpoint = endpoint
        self._lost = lost
        self.kernel_id = kernel_id
        self.session_id = session_id or uuid.uuid4().hex
        self._session = Session(session=self.session_id, username="jlabgw")
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, _Pending] = {}
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._stale = False  # the kernel restarted by itself: reconnect before the next request
        self._checks: set[asyncio.Task[None]] = set()  # _fail_undelivered probes under way
        # the kernel's execution count as last seen in a reply (None: unknown)
        self.execution_count: int | None = 0
        self.reopens = 0
        self._opened = False  # a WebSocket was open once (later opens use the retry schedule)
        self.on_status: Callable[[str], None] | None = None
        # msg_ids already received, and the newest: a reopened WebSocket asks the gateway
        # (gateway_ext) for what was written after it, which may repeat some of these
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_msg_id: str | None = None
        self._own_prefix = self.session_id + "_"
        self.duplicates = 0

    @property
    def url(self) -> str:
        url = (
            f"{self.endpoint.ws_url}/api/kernels/{self.kernel_id}/channels"
            f"?session_id={self.session_id}"
        )
        if self._last_msg_id is not None:
            url += f"&jlabgw_last={urllib.parse.quote(self._last_msg_id, safe='')}"
        return url

    def resume_after(self, msg_id: str | None) -> None:
        """Before the first connect: ask the gateway for what it sent after ``msg_id`` (to a
        connection with this session id that may have swallowed it: a server that died)."""
        if msg_id:
            self._last_msg_id = msg_id

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

    async def _open_ws(self) -> ClientConnection:
        try:
            ws = await websockets.connect(
                self.url,
                additional_headers={"Authorization": f"token {self.endpoint.token}"},
                max_size=None,  # outputs of many MB are normal
                compression=None,  # loopback/tunnel: deflate costs more than it saves
                open_timeout=_OPEN_TIMEOUT,
                ping_interval=20,
                ping_timeout=60,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise GatewayAuthError(
                    f"the gateway refused our token for kernel {self.kernel_id}"
                ) from exc
            if status == 404:
                raise KernelNotFoundError(
                    f"kernel {self.kernel_id} no longer exists on the gateway; its state is "
                    "gone — start a new session, or start_session_resume_notebook"
                ) from exc
            raise GatewayError(
                f"WebSocket to kernel {self.kernel_id} refused: HTTP {status}"
            ) from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise ConnectionLostError(
                f"cannot open a WebSocket to kernel {self.kernel_id} at "
                f"{self.endpoint.url}: {type(exc).__name__}"
            ) from exc
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        self._fail_all(ConnectionLostError("the kernel connection was closed"))

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
            self._fail_all(error)
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
        pending = self._expect(msg_id, on_iopub, wait_idle)
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
            self._pending.pop(msg_id, None)

    async def _fail_undelivered(self) -> None:
        """After a reopen: settle the requests nothing was heard of (no IOPub, no reply).

        The gateway replays what the kernel said while we were away, but not what it wrote to
        the dead connection before noticing it had died. So a request that is still unheard
        of was either lost in transit (the kernel never got it) or ran entirely unseen. A
        silent execute tells which: it is answered after anything the kernel got before it
        (shell requests are handled in order), with the kernel's execution count, which a
        run of the lost request would have moved past the last one we saw. A request that
        provably never arrived is sent again (it then runs once, as asked);
        one that ran unseen, or that cannot be told, fails saying so. Nothing runs twice.
        """
        suspects = {m: p for m, p in self._pending.items() if not p.seen and not p.done.done()}
        if not suspects:
            return
        known = self.execution_count
        try:
            async with asyncio.timeout(_UNDELIVERED_PROBE):
                probe = await self.request(
                    "execute_request",
                    {
                        "code": "",
                        "silent": True,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": False,
                    },
                )
        except (TimeoutError, JlabgwError) as exc:
            log.info("kernel %s: cannot tell which requests arrived: %s", self.kernel_id, exc)
            return
        now = probe.get("content", {}).get("execution_count")
        code_suspects = sum(p.runs_code for p in suspects.values())
        for msg_id, pending in suspects.items():
            if pending.seen or pending.done.done():
                continue
            log.warning(
                "kernel %s: request %s was cut off with the connection", self.kernel_id, msg_id
            )
            never_arrived = code_suspects == 1 and known is not None and now == known
            if not pending.runs_code or never_arrived:
                # never received (or harmless to repeat): sending it now runs it once
                ws = self._ws
                if ws is not None and pending.wire is not None:
                    try:
                        await ws.send(pending.wire)
                        log.info(
                            "kernel %s: sent %s again (it never arrived)", self.kernel_id, msg_id
                        )
                    except websockets.ConnectionClosed:
                        # dropped again: still unheard of, so the next reopen probes anew
                        log.info("kernel %s: the connection dropped again", self.kernel_id)
                    continue
                what = (
                    "the kernel never received it: it was NOT executed. The kernel and its "
                    "variables are fine; send it again"
                )
            elif code_suspects == 1 and known is not None and now == known + 1:
                what = (
                    f"the kernel ran it (execution_count {now}) but its output was lost with "
                    "the connection; it is not re-run"
                )
            else:
                what = (
                    "jlabgw cannot tell whether the kernel ran it; check its effects before "
                    "running it again"
                )
            log.warning("kernel %s: request %s: %s", self.kernel_id, msg_id, what)
            pending.done.set_exception(
                ConnectionLostError(
                    f"the connection to kernel {self.kernel_id} broke as this was sent: {what}"
                )
            )

    def _expect(self, msg_id: str, on_iopub: OnMessage | None, wait_idle: bool) -> _Pending:
        """Route the reply and IOPub of ``msg_id`` to a new pending entry."""
        pending = _Pending(
            on_iopub=on_iopub,
            done=asyncio.get_running_loop().create_future(),
            wait_idle=wait_idle,
        )
        self._pending[msg_id] = pending
        return pending

    async def adopt(self, msg_id: str, on_iopub: OnMessage | None = None) -> Message:
        """Wait for the reply to a request another process sent with this WebSocket session id
        (a server that was killed while a cell ran). Registered before connecting: the gateway
        replays what it buffered for the session id as soon as the WebSocket opens."""
        pending = self._expect(msg_id, on_iopub, wait_idle=True)
        try:
            await self.connect()
            return await pending.done
        finally:
            self._pending.pop(msg_id, None)

    async def execute(
        self,
        code: str,
        on_iopub: OnMessage | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Message:
        """Run ``code``; IOPub messages go to ``on_iopub``; returns the ``execute_reply``."""
        return await self.request(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                # input() fails at once with StdinNotImplementedError instead of hanging
                "allow_stdin": False,
                "stop_on_error": True,
            },
            on_iopub=on_iopub,
            on_sent=on_sent,
        )

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
                try:
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            log.debug("ignoring binary frame (%d bytes) from kernel", len(raw))
                            continue
                        msg = json.loads(raw)
                        if self._first_time(msg):
                            self._dispatch(msg)
                except websockets.ConnectionClosed:
                    pass
                if self._closed or not self._pending:
                    break  # idle: the next request reconnects
                # A request is in flight: reopen with the same session id. The gateway buffered
                # the kernel's messages meanwhile and replays them, so the request completes
                # with nothing lost and nothing sent twice.
                try:
                    self._ws = await self._reopen()
                    check = asyncio.create_task(self._fail_undelivered())
                    self._checks.add(check)
                    check.add_done_callback(self._checks.discard)
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
            self._fail_all(error)

    async def _reopen(self) -> ClientConnection:
        last: JlabgwError | None = None
        for attempt, delay in enumerate(_REOPEN_DELAYS, 1):
            await asyncio.sleep(delay)
            if self._closed:
                break
            try:
                ws = await self._open_ws()
            except GatewayError as exc:  # the gateway may be gone: ask the backend
                if isinstance(exc, (KernelNotFoundError, GatewayAuthError)):
                    raise
                last = exc
                log.info(
                    "reopening kernel %s WebSocket, attempt %d: %s", self.kernel_id, attempt, exc
                )
                try:
                    why = await self.gateway_lost()
                except JlabgwError as probe_error:  # cannot tell (login node down too): retry
                    log.info("cannot tell whether the gateway is gone: %s", probe_error)
                    continue
                if why:
                    raise ConnectionLostError(why) from exc
                continue
            log.info("kernel %s WebSocket reopened (attempt %d)", self.kernel_id, attempt)
            self.reopens += 1
            return ws
        raise last or ConnectionLostError("the kernel connection was closed")

    def _first_time(self, msg: Message) -> bool:
        """Record ``msg``'s id; False for a replayed message received before.

        Messages the gateway makes itself (status "restarting" ...) carry our session id and
        a counter that starts over on each connection: their ids repeat, they are never
        replayed, and they are always delivered."""
        msg_id = (msg.get("header") or {}).get("msg_id") or msg.get("msg_id")
        if not isinstance(msg_id, str) or msg_id.startswith(self._own_prefix):
            return True
        if msg_id in self._seen:
            if msg.get("jlabgw_replay"):
                self.duplicates += 1
                return False
            return True
        self._seen[msg_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        self._last_msg_id = msg_id
        return True

    def _dispatch(self, msg: Message) -> None:
        channel = msg.get("channel")
        msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        parent_id = (msg.get("parent_header") or {}).get("msg_id")
        pending = self._pending.get(parent_id) if parent_id else None

        if pending is not None:
            pending.seen = True
        if channel == "iopub" and msg_type == "status":
            state = msg.get("content", {}).get("execution_state")
            if pending is not None and state == "idle":
                pending.idle = True
                pending.maybe_finish()
            elif state in ("restarting", "dead") and pending is None:
                # The gateway restarts a dead kernel on the same ports; IOPub published before
                # its SUB socket reconnects is lost. The next request goes on a new WebSocket,
                # which the gateway opens only once IOPub flows (as after restart_kernel).
                self._stale = True
                if self.on_status is not None:
                    self.on_status(state)
                what = "died and is restarting" if state == "restarting" else "died"
                self._fail_all(
                    KernelDiedError(
                        f"the kernel {what} while running this cell; its variables are gone. "
                        "Use restart_kernel or start_session_resume_notebook to rebuild the state"
                    )
                )
            return
        if pending is None:
            return
        if channel == "iopub":
            if pending.grace is not None:
                pending.maybe_finish()  # IOPub is still talking: restart the quiet timer
            if pending.on_iopub is not None:
                pending.on_iopub(msg)
        elif channel == "shell" or channel == "control":
            count = msg.get("content", {}).get("execution_count")
            if isinstance(count, int) and self.execution_count is not None:
                self.execution_count = max(self.execution_count, count)
            pending.reply = msg
            pending.maybe_finish()
        elif channel == "stdin":
            # allow_stdin=False means this should not happen; never leave the kernel waiting.
            log.warning("kernel asked for input although stdin is disabled; ignoring")

    def _fail_all(self, error: Exception) -> None:
        for pending in list(self._pending.values()):
            pending._cancel_grace()
            if not pending.done.done():
                pending.done.set_exception(error)
