"""What a restarted server needs to take its sessions back, shared by the servers of one user.

The kernels on a batch job outlive the MCP server: Claude Desktop restarts its servers, a
laptop's server gets killed. The registry (0600, replaced atomically on every change) records,
per session, the gateway it lives on (the backend's identity: the job), its kernel, its
WebSocket session id (the gateway buffers a kernel's output by it while nobody is connected,
and replays it), its notebook, the execution running in it, if any, and its owner: the server
process that runs it (pid and start time, so a recycled pid does not pass for it), or nobody
once that server handed it over (JLABGW_KEEP_JOB).

Several servers of one user (two MCP clients side by side) share the file: every change is a
read-modify-write under an exclusive ``flock`` on ``NAME.lock`` beside it, and a server
rewrites its own records only. A server takes back (:meth:`SessionRegistry.claim`) only the
records nobody owns: handed over, or whose owner is dead. A file that is not a registry of
this format (corrupt, or written by another version) is set aside as ``NAME.corrupt-TIME``
with a warning, and counts as empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jlabgw.fsutil import locked, write_private_file
from jlabgw.processes import owner_alive, this_owner

__all__ = ["VERSION", "SessionRegistry", "this_owner"]

log = logging.getLogger(__name__)

VERSION = 2  # 1: the unversioned file of one server ({"identity", "sessions"}), still read

Record = dict[str, Any]


class _Corrupt(ValueError):
    """The file is not a registry this version reads."""


def _parse(raw: bytes) -> list[Record]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise _Corrupt("not a JSON object")
    version = data.get("version", 1)
    if version not in (1, VERSION):
        raise _Corrupt(f"format version {version!r}, this jlabgw reads {VERSION}")
    sessions = data.get("sessions", [])
    if not isinstance(sessions, list):
        raise _Corrupt("'sessions' is not a list")
    identity = data.get("identity")
    records: list[Record] = []
    for record in sessions:
        if not isinstance(record, dict) or not isinstance(record.get("session_id"), str):
            raise _Corrupt("a session record is not an object with a session_id")
        if version == 1:  # one identity for all, no owner: a server that left them
            record = {**record, "identity": identity, "owner": None}
        records.append(record)
    return records


class SessionRegistry:
    """One file per backend identity key (a job name), shared by the servers on that job.

    Writes happen on a thread of their own, newest state wins: the file changes when a cell
    starts and ends, and an fsynced write (~0.5 ms) should not sit on a cell's reply path."""

    def __init__(self, path: Path, owner: dict[str, str] | None = None) -> None:
        """``owner``: who this server is in its records (default: this process)."""
        self.path = path
        self.owner = owner or this_owner()
        self._lock = threading.Lock()
        self._queued: tuple[list[Record], bool] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jlabgw-registry")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Held by one process (server) at a time, across a read-modify-write."""
        return locked(self.lock_path)

    def _read(self) -> list[Record]:
        """The records on disk (lock held); a file this version cannot read is set aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return _parse(raw)
        except (ValueError, TypeError, AttributeError) as exc:  # _Corrupt, JSON errors too
            aside = self.path.with_name(
                f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            )
            try:
                os.replace(self.path, aside)
            except OSError as move:
                log.warning("cannot set the session registry %s aside: %s", self.path, move)
                aside = self.path
            log.warning(
                "the session registry %s is unreadable (%s): set aside as %s; nothing to take "
                "back from it",
                self.path,
                exc,
                aside.name,
            )
            return []

    def _replace(self, records: list[Record]) -> None:
        # "identity": the newest record's gateway, for a reader's eye (each record has its own)
        identity = records[-1].get("identity") if records else None
        data = {"version": VERSION, "identity": identity, "sessions": records}
        write_private_file(self.path, json.dumps(data, indent=1).encode())

    def load(self) -> tuple[str | None, list[Record]]:
        """Every record on disk (any owner), and the newest one's gateway (None if none)."""
        with self._locked():
            records = self._read()
        return (records[-1].get("identity") if records else None), records

    def claim(self) -> list[Record]:
        """Make this server the owner of the records nobody runs (handed over, or whose
        owner is dead; this server's own, on a retry) and return them: the sessions to take
        back. Another server's live records are left alone. Nothing if the file cannot be
        read or written (said in the log)."""
        try:
            return self._claim()
        except OSError as exc:
            log.warning("cannot take sessions back from the registry %s: %s", self.path, exc)
            return []

    def _claim(self) -> list[Record]:
        with self._locked():
            records = self._read()
            claimed = [
                r
                for r in records
                if r.get("owner") == self.owner or not owner_alive(r.get("owner"))
            ]
            for record in claimed:
                record["owner"] = self.owner
                record.pop("handed_over", None)
            if claimed:
                self._replace(records)
        return claimed

    def orphans(self) -> list[Record]:
        """The records left by a server that died without handing them over (owner gone):
        what a next server would take back. [] if the file cannot be read."""
        try:
            with self._locked():
                records = self._read()
        except OSError as exc:
            log.warning("cannot read the session registry %s: %s", self.path, exc)
            return []
        return [
            r
            for r in records
            if isinstance(r.get("owner"), dict)
            and r.get("owner") != self.owner
            and not owner_alive(r.get("owner"))
        ]

    def save(self, identity: str | None, sessions: list[Record], handed_over: bool = False) -> None:
        """Make this server's records ``sessions`` (on gateway ``identity``), off-thread.
        ``handed_over``: they are left for the next server (owner cleared)."""
        with self._lock:
            idle = self._queued is None
            self._queued = ([{**s, "identity": identity} for s in sessions], handed_over)
        if idle:
            try:
                self._pool.submit(self._write)
            except RuntimeError:  # closed: the server is exiting, what is on disk stays
                log.debug("session registry closed; not writing")

    def _write(self) -> None:
        with self._lock:
            queued, self._queued = self._queued, None
        if queued is None:
            return
        mine, handed_over = queued
        try:
            with self._locked():
                before = self._read()
                others = [r for r in before if r.get("owner") != self.owner]
                taken = {r["session_id"] for r in others}  # claimed by another server
                owner = None if handed_over else self.owner
                after = others + [
                    {**r, "owner": owner, **({"handed_over": True} if handed_over else {})}
                    for r in mine
                    if r["session_id"] not in taken
                ]
                if after != before or not self.path.exists():
                    self._replace(after)
        except OSError as exc:  # never fail a tool call over it; the next change retries
            log.warning("cannot write the session registry %s: %s", self.path, exc)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._pool.shutdown(wait=True)
