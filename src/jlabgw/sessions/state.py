"""Per-server state files, so ``jlabgw status`` / ``jlabgw stop`` can find running servers.

Each server writes ``<state_dir>/servers/<pid>.json`` (0600, atomic) when its gateway or
sessions change, and removes it on exit. Files of processes that no longer exist are stale and
pruned when read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jlabgw.fsutil import ensure_private_dir, write_private_file
from jlabgw.processes import identity_alive, pid_alive, process_identity
from jlabgw.sessions.status import ServerStatus

# pid_alive lives in the foundation (jlabgw.processes); still importable from here
__all__ = ["ServerState", "ServerStateFile", "pid_alive", "read_server_states"]

log = logging.getLogger(__name__)


class ServerStateFile:
    """The state file of this process."""

    def __init__(self, state_dir: Path) -> None:
        self.path = ensure_private_dir(state_dir / "servers") / f"{os.getpid()}.json"
        self.started_at = time.time()
        # pid + start time: `jlabgw stop` must never signal a process that reused the pid
        self.identity = process_identity(os.getpid()) or str(os.getpid())
        self._gateway_identity: tuple[int, str] | None = None

    def update(self, status: ServerStatus) -> None:
        gateway_pid = status.backend.gateway.pid
        if isinstance(gateway_pid, int) and (
            self._gateway_identity is None or self._gateway_identity[0] != gateway_pid
        ):
            found = process_identity(gateway_pid)
            self._gateway_identity = (gateway_pid, found) if found else None
        data = {
            "pid": os.getpid(),
            "process": self.identity,
            "gateway_process": self._gateway_identity[1] if self._gateway_identity else None,
            "started_at": self.started_at,
            "updated_at": time.time(),
            **status.to_dict(),
        }
        try:
            write_private_file(self.path, json.dumps(data, indent=1).encode())
        except OSError as exc:  # status is a convenience; never fail a tool call over it
            log.warning("cannot write state file %s: %s", self.path, exc.strerror)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass(frozen=True)
class ServerState:
    """A server as its state file describes it."""

    pid: int
    started_at: float
    status: ServerStatus
    state_file: Path
    # the server is gone, but the gateway it started still runs (local backend): this pid
    orphan_gateway_pid: int | None = None
    updated_at: float | None = None  # when the server last rewrote its file

    @property
    def stale(self) -> bool:
        return self.orphan_gateway_pid is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            **self.status.to_dict(),
            "stale": self.stale,
            "orphan_gateway_pid": self.orphan_gateway_pid,
            "state_file": str(self.state_file),
        }


def read_server_states(state_dir: Path) -> list[ServerState]:
    """States of live servers; files left by dead processes are removed."""
    folder = state_dir / "servers"
    states: list[ServerState] = []
    if not folder.is_dir():
        return states
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
            status = ServerStatus.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring unreadable state file %s", path)
            continue
        orphan = None
        if not _alive(pid, data.get("process")):
            gateway_pid = status.backend.gateway.pid
            if isinstance(gateway_pid, int) and _alive(gateway_pid, data.get("gateway_process")):
                orphan = gateway_pid
            else:
                path.unlink(missing_ok=True)
                continue
        updated = data.get("updated_at")
        states.append(
            ServerState(
                pid,
                float(data.get("started_at", 0)),
                status,
                path,
                orphan,
                float(updated) if isinstance(updated, int | float) else None,
            )
        )
    return states


def _alive(pid: int, identity: object) -> bool:
    """Whether ``pid`` still is the process the file recorded: by pid and start time when the
    file has them (a recycled pid is another process), else by pid alone (older files)."""
    if isinstance(identity, str) and identity:
        return identity_alive(identity)
    return pid_alive(pid)
