"""What every backend offers: an authenticated Kernel Gateway endpoint on this machine."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import ClassVar

__all__ = ["Backend", "GatewayEndpoint", "Progress"]

from jlabgw.cluster.backends.status import BackendStatus
from jlabgw.cluster.files import Node
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.progress import Progress

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """Owns the lifecycle of one gateway (process, batch job, tunnel)."""

    name: ClassVar[str]
    # Whether sessions may ask for their own resources (partition, GPUs, ...): each shape is
    # a backend of its own (a batch job), made with ``Settings`` of that shape.
    supports_resources: ClassVar[bool] = False

    def __init__(self) -> None:
        self._watchers: list[asyncio.Queue[tuple[float, float | None, str]]] = []
        # Bumped each time a new gateway (process, batch job) comes up. A kernel belongs to
        # the generation it was started on; once that one is lost, the answer stays the same
        # for every session on it, whatever the backend has started since.
        self.generation = 0
        self._lost_reasons: dict[int, str] = {}

    @contextlib.asynccontextmanager
    async def watching(self, progress: Progress | None) -> AsyncIterator[None]:
        """Let ``progress`` hear about slow start-up steps while the caller waits.

        Every waiting caller hears them, also one that only waits for a start already under
        way (the eager start at server launch, say). Each caller's updates are sent from a
        relay task created in the caller's own task: an MCP tool's progress needs that
        task's request context, which the task doing the start does not have."""
        if progress is None:
            yield
            return
        queue: asyncio.Queue[tuple[float, float | None, str]] = asyncio.Queue()
        self._watchers.append(queue)
        relay = asyncio.create_task(_relay(queue, progress))
        try:
            yield
        finally:
            self._watchers.remove(queue)
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def report(self, done: float, total: float | None, message: str) -> None:
        for queue in list(self._watchers):
            queue.put_nowait((done, total, message))

    @abc.abstractmethod
    async def start(self) -> GatewayEndpoint:
        """Start the gateway if needed and return its endpoint. Safe to call concurrently.

        Slow steps (a batch job waiting in the queue) go to :meth:`report`."""

    def begin(self) -> None:  # noqa: B027 - an optional hook: a no-op unless overridden
        """Set the slow, remote part of :meth:`start` going from a background thread, before
        the event loop and the MCP server exist (their imports take about a second, which a
        batch job can spend in the queue meanwhile). :meth:`start` picks it up, and reports
        its failure. Optional; the default does nothing."""

    def registry_name(self) -> str | None:
        """File name for the session registry, if this backend's kernels can outlive the
        server (a batch job does; a local gateway stops with it)."""
        return None

    def keeps_kernels(self) -> bool:
        """Whether the gateway stays up after this server exits (a kept batch job): then the
        sessions are handed over to the next server instead of shut down."""
        return False

    def keep_for(self, why: str) -> None:  # noqa: B027 - an optional hook
        """Leave the gateway running at exit, ``why``: sessions that a server which died left
        on it, for the next server to take back (its idle timeout ends it otherwise). Only for
        backends whose kernels outlive the server; a no-op by default."""

    def identity(self) -> str | None:
        """Which gateway is up now (a job id); sessions recorded under another are gone."""
        return None

    def node(self) -> Node | None:
        """The node the gateway runs on, over a connection this backend already holds (a
        batch backend's SSH to the compute node): its files and commands without a kernel
        (upload_file / download_file, check_resources). None where there is none: the local
        backend (the node is this machine, which the session layer reads directly) and a
        gateway that is not up."""
        return None

    async def notices(self) -> list[str]:
        """Things a user should hear about with every result (the job's walltime ending
        soon, say). Cheap: backends refresh what they need at most every so often."""
        return []

    @abc.abstractmethod
    async def lost(self) -> str | None:
        """If the current gateway is gone for good (process died, job ended), say why."""

    async def lost_since(self, generation: int) -> str | None:
        """Why the gateway of ``generation`` is gone for good, or None while it is up."""
        if generation in self._lost_reasons:
            return self._lost_reasons[generation]
        why: str | None = "the gateway this session ran on was replaced by a new one"
        if generation == self.generation:
            why = await self.lost()
        if why:
            self._lost_reasons[generation] = why
        return why

    def _retire(self, why: str) -> None:
        """Record why the current generation's gateway is gone (before starting another)."""
        self._lost_reasons.setdefault(self.generation, why)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop everything this backend started. Idempotent."""

    @abc.abstractmethod
    def close_now(self) -> None:
        """Synchronous last-resort stop (signal handlers, atexit). Idempotent."""

    @abc.abstractmethod
    def describe(self) -> BackendStatus:
        """Status for humans and the status resource. Never includes secrets."""
        return BackendStatus(self.name)


async def _relay(queue: asyncio.Queue[tuple[float, float | None, str]], progress: Progress) -> None:
    while True:
        done, total, message = await queue.get()
        try:
            await progress(done, total, message)
        except Exception:  # a client that went away must not break the start
            log.debug("progress watcher failed", exc_info=True)
