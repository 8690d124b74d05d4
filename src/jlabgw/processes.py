"""Whether a process runs, and which process it is (foundation: no jlabgw imports)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = [
    "describe_owner",
    "identity_alive",
    "owner_alive",
    "pid_alive",
    "process_identity",
    "this_owner",
]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the third (state) on; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie (exited, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc (macOS): kill(0) is all we can know
    return fields[0] != "Z"


def process_identity(pid: int) -> str | None:
    """Which process ``pid`` is, in a way a recycled pid does not match: ``"PID:START"``, its
    start time in clock ticks since boot (/proc/PID/stat field 22); None if it does not run.
    Without /proc (macOS) only ``"PID"``: then a recycled pid cannot be told apart."""
    if not pid_alive(pid):
        return None
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return str(pid)
    return f"{pid}:{fields[19]}"  # field 22 of the line; fields[0] is field 3


def identity_alive(identity: str) -> bool:
    """Whether the process a :func:`process_identity` names still runs (the same one)."""
    pid_text, _, start = identity.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    now = process_identity(pid)
    if now is None:
        return False
    if not start or ":" not in now:
        return True  # a start time is missing on one side: the pid is all we can compare
    return now == identity


def this_owner() -> dict[str, str]:
    """Who this process is, in records other processes of the user read (the session
    registry, job leases, notebook holds): its host and :func:`process_identity`."""
    return {"host": socket.gethostname(), "process": process_identity(os.getpid()) or ""}


def owner_alive(owner: Any) -> bool:
    """Whether the process a :func:`this_owner` record names still runs. Nobody (None, a
    record handed over) is not; an owner on another host cannot be checked from here and
    counts as alive (never take what a live process holds)."""
    if not isinstance(owner, dict):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return identity_alive(str(owner.get("process", "")))


def describe_owner(owner: Any) -> str:
    """``"jlabgw server pid N"`` (``"... on HOST"`` when elsewhere), for messages."""
    if not isinstance(owner, dict):
        return "nobody"
    pid = str(owner.get("process", "?")).partition(":")[0]
    host = owner.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"jlabgw server pid {pid}{where}"
