"""Progress of a slow start (``jlabgw run``, ``jlabgw tunnel``) on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

__all__ = ["Spinner"]


class Spinner:
    """Progress on stderr: an updating line on a terminal, plain lines otherwise.

    ``update`` has the :data:`jlabgw.progress.Progress` signature, so it is passed where the
    session layer and the backends report progress."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.message = ""
        self.t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def update(self, done: float, total: float | None, message: str) -> None:
        if message != self.message and not self.tty:
            print(f"jlabgw: {message}", file=sys.stderr)
        self.message = message

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Spinner]:
        if self.tty:
            self._task = asyncio.create_task(self._spin())
        try:
            yield self
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                print("\r\x1b[K", end="", file=sys.stderr, flush=True)

    async def _spin(self) -> None:
        for i in range(10**9):
            elapsed = time.monotonic() - self.t0
            frame = self.FRAMES[i % len(self.FRAMES)]
            line = f"\r\x1b[K{frame} {self.message} ({elapsed:.1f} s)"
            print(line, end="", file=sys.stderr, flush=True)
            await asyncio.sleep(0.1)
