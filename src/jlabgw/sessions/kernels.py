"""Kernels for sessions: started on a lane's gateway, checked, taken back, discarded; and the
spare kernel started ahead of the next session.

:class:`KernelStarter` is the seam between the session layer and the gateway: the manager is
given one (:class:`GatewayStarter` unless told otherwise), and nothing else in the layer talks
to a gateway about kernels or builds a :class:`~jlabgw.jupyter.channels.KernelConnection`. The
session layer uses a connection only through :class:`Connection`, so tests can hand it fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from jlabgw.aio import task_succeeded
from jlabgw.errors import JlabgwError, KernelNotFoundError, KernelSpecError, KernelStartError
from jlabgw.jupyter.channels import KernelConnection, Message, OnMessage
from jlabgw.progress import Progress, no_progress
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.tasks import background

__all__ = [
    "Connection",
    "GatewayStarter",
    "KernelStarter",
    "SparePool",
    "Started",
    "list_kernelspecs",
]

log = logging.getLogger(__name__)

_KERNEL_READY_TIMEOUT = 120.0
_SPARE_CHECK_TIMEOUT = 10.0
_DISCARD_TIMEOUT = 10.0


class Connection(Protocol):
    """What the session layer uses of a kernel's connection (a ``KernelConnection``)."""

    kernel_id: str
    session_id: str  # the WebSocket session id: the gateway buffers output for it
    execution_count: int | None  # as last seen in a reply (None: unknown)

    @property
    def restarting(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def kernel_info(self) -> Message: ...

    async def execute(
        self,
        code: str,
        on_iopub: OnMessage | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Message: ...

    async def adopt(self, msg_id: str, on_iopub: OnMessage | None = None) -> Message: ...

    def resume_after(self, msg_id: str | None) -> None: ...

    def abandon(self, error: Exception) -> None: ...

    async def reset(self, error: Exception) -> None: ...

    async def settle(self) -> None: ...

    async def gateway_lost(self) -> str | None: ...


class Started(NamedTuple):
    """A new kernel, answering."""

    conn: Connection
    metadata: dict[str, Any]  # for the notebook: kernelspec, language_info
    seconds: dict[str, float]  # waiting for the gateway, then the kernel until it answered


class KernelStarter(Protocol):
    """Starts, takes back, controls and discards kernels on a lane's gateway ("" the default)."""

    async def start(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> Started:
        """A new kernel of ``kernel_name`` (default: the configured one) that answered."""
        ...

    async def connect(self, kernel_id: str, ws_session_id: str, lane: str = "") -> Connection:
        """A connection to a running kernel another server started (not yet connected).
        Raises :class:`KernelNotFoundError` ("its kernel ... is gone") if there is none."""
        ...

    async def discard(self, conn: Connection, lane: str = "") -> None:
        """Close and delete a kernel no session uses (bounded: the gateway may be gone)."""
        ...

    async def interrupt(self, kernel_id: str, lane: str = "") -> None: ...

    async def restart(self, kernel_id: str, lane: str = "") -> None: ...

    async def delete(self, kernel_id: str, lane: str = "") -> None:
        """Stop a kernel; :class:`KernelNotFoundError` if it is gone already."""
        ...

    async def execution_state(self, kernel_id: str, lane: str = "") -> str | None:
        """What the gateway last heard of the kernel: "busy", "idle" ..."""
        ...


class GatewayStarter:
    """The real :class:`KernelStarter`: the gateway's REST API and a ``KernelConnection``."""

    def __init__(self, lanes: Lanes, default_kernel: str) -> None:
        self._lanes = lanes
        self._default_kernel = default_kernel

    async def start(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> Started:
        t0 = time.monotonic()
        await progress(0, None, "starting the gateway")
        gw = await self._lanes.gateway(progress, lane)
        backend = self._lanes.backend(lane)
        t_gateway = time.monotonic()
        name = kernel_name or self._default_kernel
        specs = await self._lanes.kernelspecs(lane)
        if name not in specs.get("kernelspecs", {}):
            available = ", ".join(sorted(specs.get("kernelspecs", {}))) or "none"
            raise KernelSpecError(
                f"kernel {name!r} is not installed on the gateway (available: {available}); "
                "pass one of those as kernel_name (list_kernelspecs describes them), or "
                "install it where the gateway runs"
            )
        await progress(0, None, f"starting a {name} kernel")
        generation = backend.generation
        model = await gw.start_kernel(name)
        conn = KernelConnection(
            gw.endpoint,
            model["id"],
            lost=functools.partial(backend.lost_since, generation),
            max_message=self._lanes.settings.max_message,
        )
        try:
            async with asyncio.timeout(_KERNEL_READY_TIMEOUT):
                reply = await conn.kernel_info()
        except TimeoutError as exc:
            await conn.close()
            with contextlib.suppress(JlabgwError):
                await gw.delete_kernel(model["id"])
            raise KernelStartError(
                f"the {name} kernel did not answer within {_KERNEL_READY_TIMEOUT:.0f} s of "
                "starting; see the gateway log (jlabgw status) for its error"
            ) from exc
        except BaseException:
            await conn.close()
            with contextlib.suppress(JlabgwError):
                await gw.delete_kernel(model["id"])
            raise
        spec = specs["kernelspecs"][name]["spec"]
        metadata = {
            "kernelspec": {
                "name": name,
                "display_name": spec.get("display_name", name),
                "language": spec.get("language", ""),
            },
            "language_info": reply["content"].get("language_info", {}),
        }
        now = time.monotonic()
        seconds = {"gateway": round(t_gateway - t0, 3), "kernel": round(now - t_gateway, 3)}
        return Started(conn, metadata, seconds)

    async def connect(self, kernel_id: str, ws_session_id: str, lane: str = "") -> Connection:
        gw = await self._lanes.gateway(lane=lane)
        try:
            await gw.get_kernel(kernel_id)
        except KernelNotFoundError as exc:
            raise KernelNotFoundError(f"its kernel {kernel_id} is gone") from exc
        backend = self._lanes.backend(lane)
        return KernelConnection(
            gw.endpoint,
            kernel_id,
            ws_session_id,
            lost=functools.partial(backend.lost_since, backend.generation),
            max_message=self._lanes.settings.max_message,
        )

    async def discard(self, conn: Connection, lane: str = "") -> None:
        await conn.close()
        with contextlib.suppress(JlabgwError, TimeoutError):
            async with asyncio.timeout(_DISCARD_TIMEOUT):
                await (await self._lanes.gateway(lane=lane)).delete_kernel(conn.kernel_id)

    async def interrupt(self, kernel_id: str, lane: str = "") -> None:
        await (await self._lanes.gateway(lane=lane)).interrupt_kernel(kernel_id)

    async def restart(self, kernel_id: str, lane: str = "") -> None:
        await (await self._lanes.gateway(lane=lane)).restart_kernel(kernel_id)

    async def delete(self, kernel_id: str, lane: str = "") -> None:
        await (await self._lanes.gateway(lane=lane)).delete_kernel(kernel_id)

    async def execution_state(self, kernel_id: str, lane: str = "") -> str | None:
        model = await (await self._lanes.gateway(lane=lane)).get_kernel(kernel_id)
        state = model.get("execution_state")
        return str(state) if state is not None else None


def list_kernelspecs(specs: dict[str, Any], default: str) -> list[dict[str, Any]]:
    """The kernels a gateway's ``/api/kernelspecs`` lists, described; ``default`` first."""
    listed = [
        {
            "name": name,
            "display_name": entry.get("spec", {}).get("display_name", name),
            "language": entry.get("spec", {}).get("language", ""),
            "default": name == default,
        }
        for name, entry in sorted(specs.get("kernelspecs", {}).items())
    ]
    return sorted(listed, key=lambda spec: not spec["default"])


class SparePool:
    """One kernel started ahead (JLABGW_SPARE_KERNEL): a new session takes it at once instead
    of waiting ~0.5 s for a kernel to start, and another is started behind it.

    The spare runs the default kernel spec on the default job; another ``kernel_name`` or
    resource shape is started afresh."""

    def __init__(self, starter: KernelStarter, enabled: bool, default_kernel: str) -> None:
        self._starter = starter
        self._enabled = enabled
        self._default_kernel = default_kernel
        self.task: asyncio.Task[Started] | None = None  # the spare's start, done or under way
        self._closed = False

    @property
    def state(self) -> str | None:
        """None (no spare: disabled or taken) | "starting" | "ready" | "failed"."""
        spare = self.task
        if spare is None:
            return None
        return "starting" if not spare.done() else "ready" if task_succeeded(spare) else "failed"

    def prepare(self) -> None:
        """Start a kernel ahead, for the next session (no-op if one is there or disabled)."""
        if not self._enabled or self.task is not None or self._closed:
            return
        self.task = background(
            self._starter.start(no_progress), "starting a kernel ahead failed", "spare-kernel"
        )

    async def take(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> Started:
        """The spare kernel if it is alive, else a new one; then a new spare behind it."""
        if (kernel_name and kernel_name != self._default_kernel) or lane:
            return await self._starter.start(progress, kernel_name, lane)
        spare, self.task = self.task, None
        started = await self._claim(spare, progress) if spare is not None else None
        if started is None:
            started = await self._starter.start(progress)
        self.prepare()
        return started

    async def _claim(self, spare: asyncio.Task[Started], progress: Progress) -> Started | None:
        t0 = time.monotonic()
        await progress(0, None, "taking the kernel started ahead")
        try:
            # shielded: a caller that goes away must not cancel the spare's start half-way
            conn, metadata, _ = await asyncio.shield(spare)
        except asyncio.CancelledError:
            if self.task is None and not spare.cancelled():
                self.task = spare  # still good for the next caller
            else:
                spare.add_done_callback(self._discard_later)
            raise
        except JlabgwError as exc:
            log.info("the kernel started ahead failed (%s); starting a new one", exc)
            return None
        try:
            async with asyncio.timeout(_SPARE_CHECK_TIMEOUT):
                await conn.kernel_info()  # alive: not culled, gateway still there
        except (JlabgwError, TimeoutError) as exc:
            log.info("the kernel started ahead is gone (%s); starting a new one", exc)
            await self._starter.discard(conn)
            return None
        return Started(conn, metadata, {"gateway": 0.0, "kernel": round(time.monotonic() - t0, 3)})

    def _discard_later(self, spare: asyncio.Task[Started]) -> None:
        if task_succeeded(spare):
            background(self._starter.discard(spare.result().conn), "discarding a kernel failed")

    async def close(self) -> None:
        """No more spares; the one there (or starting) is discarded."""
        self._closed = True
        spare, self.task = self.task, None
        if spare is None:
            return
        if not spare.done():
            spare.cancel()  # a starter deletes a kernel it started when cancelled
        with contextlib.suppress(asyncio.CancelledError, JlabgwError):
            conn = (await spare).conn
            await self._starter.discard(conn)
