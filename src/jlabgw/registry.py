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
from pathlib import Path
from typing import Any

from .fsutil import ensure_private_dir, write_private_file

__all__ = ["SessionRegistry"]

log = logging.getLogger(__name__)


class SessionRegistry:
    """One file per backend identity key (a job name), read at start, rewritten on change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None

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
        if data == self._last:
            return
        try:
            ensure_private_dir(self.path.parent)
            write_private_file(self.path, data)
        except OSError as exc:  # never fail a tool call over it; the next change retries
            log.warning("cannot write the session registry %s: %s", self.path, exc.strerror)
            return
        self._last = data
