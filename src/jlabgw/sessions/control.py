"""Kernel control of a session (interrupt, restart): a REST call to its gateway, and, should
the gateway be gone, the error that says so (see :meth:`.runner.Runner.raise_if_lost`)."""

from __future__ import annotations

import asyncio
import contextlib

from jlabgw.errors import GatewayError, JlabgwError, KernelDiedError
from jlabgw.notebook.recorder import DisplayIndex
from jlabgw.sessions.kernels import KernelStarter
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.session import Session

__all__ = ["interrupt", "restart"]

_SETTLE_TIMEOUT = 60.0  # for a kernel the gateway is auto-restarting to answer again


async def interrupt(starter: KernelStarter, runner: Runner, session: Session) -> str:
    try:
        await starter.interrupt(session.kernel_id, session.lane)
    except GatewayError as exc:  # the gateway may be gone: ask the backend
        await runner.raise_if_lost(session, exc)
        raise
    return f"interrupt sent to the kernel of session {session.id}"


async def restart(starter: KernelStarter, runner: Runner, session: Session) -> str:
    if session.conn.restarting:
        # The kernel just died and the gateway is restarting it. A REST restart on top of
        # that collides with it (HTTP 500) and can leave the kernel without its restarter,
        # so a later death goes unnoticed: let the automatic restart finish first.
        with contextlib.suppress(JlabgwError, TimeoutError):
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await session.conn.settle()
    died = KernelDiedError(
        f"the kernel of session {session.id} was restarted (restart_kernel) while this "
        "cell ran; its variables are gone and the cell did not finish"
    )
    # The running cell's fate is the restart's: a reply the dying kernel still sends for it
    # (an abort, racing the restart on a loaded machine) must not pass for its end
    session.conn.abandon(died)
    try:
        await starter.restart(session.kernel_id, session.lane)
    except GatewayError as exc:  # the gateway may be gone: ask the backend
        await runner.raise_if_lost(session, exc)
        raise
    await session.conn.reset(died)
    session.displays = DisplayIndex()
    return (
        f"kernel of session {session.id} restarted: all variables are gone, the notebook "
        f"{session.doc.path.name} is unchanged"
    )
