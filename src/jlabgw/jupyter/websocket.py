"""Opening a kernel's channels WebSocket, and reopening it on a bounded schedule.

websockets' errors are translated into :mod:`jlabgw.errors` here: no answer (refused, reset,
timed out) is :class:`~jlabgw.errors.ConnectionLostError`, as for REST; an HTTP status is
the matching :class:`~jlabgw.errors.GatewayError`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection

from jlabgw.errors import (
    ConnectionLostError,
    GatewayAuthError,
    GatewayError,
    GatewayImpostorError,
    GatewayServerError,
    JlabgwError,
    KernelNotFoundError,
)
from jlabgw.jupyter.endpoint import GatewayEndpoint, impostor_message, is_impostor

__all__ = ["open_websocket", "reopen_websocket"]

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 30.0
REOPEN_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # bounded: ~16 s plus connect timeouts


async def open_websocket(
    url: str, endpoint: GatewayEndpoint, kernel_id: str, max_size: int
) -> ClientConnection:
    """One attempt to open ``url`` (a kernel's channels) with the endpoint's token.

    A message over ``max_size`` bytes is refused by websockets from its frame header, before
    it is read: the connection closes with 1009 (see :mod:`jlabgw.jupyter.replay`)."""
    try:
        ws = await websockets.connect(
            url,
            additional_headers=endpoint.headers,
            max_size=max_size,  # outputs of many MB are normal; hundreds are an attack
            compression=None,  # loopback/tunnel: deflate costs more than it saves
            open_timeout=OPEN_TIMEOUT,
            ping_interval=20,
            ping_timeout=60,
            ssl=endpoint.ssl_context,  # wss: the pinned certificate only
        )
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise GatewayAuthError(f"the gateway refused our token for kernel {kernel_id}") from exc
        if status == 404:
            raise KernelNotFoundError(
                f"kernel {kernel_id} no longer exists on the gateway; its state is "
                "gone — start a new session, or start_session_resume_notebook"
            ) from exc
        error = GatewayServerError if status >= 500 else GatewayError
        raise error(f"WebSocket to kernel {kernel_id} refused: HTTP {status}") from exc
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        if is_impostor(exc):  # a certificate that is not ours, or no TLS at all on that port
            raise GatewayImpostorError(
                impostor_message(endpoint, f"the WebSocket to kernel {kernel_id} was not opened")
            ) from exc
        raise ConnectionLostError(
            f"cannot open a WebSocket to kernel {kernel_id} at {endpoint.url}: {type(exc).__name__}"
        ) from exc
    sock = ws.transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ws


async def reopen_websocket(
    open_ws: Callable[[], Awaitable[ClientConnection]],
    *,
    kernel_id: str,
    gateway_lost: Callable[[], Awaitable[str | None]],
    closed: Callable[[], bool],
) -> ClientConnection:
    """``open_ws`` on the :data:`REOPEN_DELAYS` schedule, until it works or ``closed()``.

    Between attempts the backend is asked whether the gateway is gone for good
    (``gateway_lost``): a dead job is reported at once instead of after the whole schedule.
    A rejected token or a kernel that no longer exists ends the attempts at once."""
    last: JlabgwError | None = None
    for attempt, delay in enumerate(REOPEN_DELAYS, 1):
        await asyncio.sleep(delay)
        if closed():
            break
        try:
            ws = await open_ws()
        except (KernelNotFoundError, GatewayAuthError):
            raise  # trying again cannot help
        except GatewayError as exc:  # no answer, or one that may pass: is the gateway gone?
            last = exc
            log.info("reopening kernel %s WebSocket, attempt %d: %s", kernel_id, attempt, exc)
            try:
                why = await gateway_lost()
            except JlabgwError as probe_error:  # cannot tell (login node down too): retry
                log.info("cannot tell whether the gateway is gone: %s", probe_error)
                continue
            if why:
                raise ConnectionLostError(why) from exc
            continue
        log.info("kernel %s WebSocket reopened (attempt %d)", kernel_id, attempt)
        return ws
    raise last or ConnectionLostError("the kernel connection was closed")
