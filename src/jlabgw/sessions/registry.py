"""What a restarted server needs to take its sessions back.

The kernels on a batch job outlive the MCP server: Claude Desktop restarts its servers, a
laptop's server gets killed. The registry (0600, written atomically on every change) records
which gateway the sessions live on (the backend's identity: the job) and, per session, its
kernel, its WebSocket session id (the gateway buffers a kernel's output by it while nobody
is connected, and replays it), its notebook and the execution running in it, if any.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jlabgw.fsutil import ensure_private_dir, write_private_file

__all__ = ["SessionRegistry"]

log = logging.getLogger(__name__)


class SessionRegistry:
    """One file per backend identity key (a job name), read at start, rewritten on change.

    Writes happen on a thread of their own, newest state wins: the file changes when a cell
    starts and ends, and an fsynced write (~0.5 ms) should not sit on a cell's reply path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None
        self._lock = threading.Lock()
        self._queued: bytes | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jlabgw-registry")

    def load(self) -> tuple[str | None, list[dict[str, Any]]]:
        """The recorded gateway identity and sessions; nothing if unreadable (said in the log)."""
        try:
            data = json.loads(self.path.read_bytes())
            identity = data.get("identity")
            sessions = [s for s in data.get("sessions", []) if isinstance(s, dict)]
        except FileNotFoundError:
            return None, []
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring the unreadable session registry %s: %s", self.path, exc)
            return None, []
        return (str(identity) if identity else None), sessions

    def save(self, identity: str | None, sessions: list[dict[str, Any]]) -> None:
        data = json.dumps({"identity": identity, "sessions": sessions}, indent=1).encode()
        with self._lock:
            idle = self._queued is None
            self._queued = data
        if idle:
            try:
                self._pool.submit(self._write)
            except RuntimeError:  # closed: the server is exiting, what is on disk stays
                log.debug("session registry closed; not writing")

    def _write(self) -> None:
        with self._lock:
            data, self._queued = self._queued, None
        if data is None or data == self._last:
            return
        try:
            ensure_private_dir(self.path.parent)
            write_private_file(self.path, data)
        except OSError as exc:  # never fail a tool call over it; the next change retries
            log.warning("cannot write the session registry %s: %s", self.path, exc.strerror)
            return
        self._last = data

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._pool.shutdown(wait=True)
