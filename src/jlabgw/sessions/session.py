"""A session: a kernel on a gateway plus the notebook that records it, its three views, and
the table of a manager's sessions.

* :meth:`Session.describe`: its typed status (``list_sessions``, the state file);
* :meth:`Session.record`: what the registry keeps for the next server to take it back, read
  again by :meth:`Session.from_record`;
* :meth:`Session.info`: what the tools that open a session return.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jlabgw.errors import (
    SessionBusyError,
    SessionLostError,
    UnknownExecutionError,
    UnknownSessionError,
)
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.recorder import DisplayIndex
from jlabgw.sessions.execution import Execution
from jlabgw.sessions.holds import NotebookHolds
from jlabgw.sessions.kernels import Connection
from jlabgw.sessions.status import SessionStatus

__all__ = ["Session", "SessionTable", "notebook_kernel"]

log = logging.getLogger(__name__)


@dataclass
class Session:
    id: str
    experiment_name: str
    kernel_id: str
    kernel_name: str
    conn: Connection
    doc: NotebookDoc
    created_at: float = field(default_factory=time.time)
    displays: DisplayIndex = field(default_factory=DisplayIndex)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held by the cell that runs
    executions: int = 0
    runs: dict[str, Execution] = field(default_factory=dict)  # recent executions, oldest first
    lane: str = ""  # the resource shape whose job runs the kernel ("": the default job)
    # waiting for the gateway, then the kernel's start until it answered kernel_info
    start_seconds: dict[str, float] = field(default_factory=dict)

    def busy_with(self) -> Execution | None:
        """The execution running or queued here, if any (the oldest such)."""
        return next((e for e in self.runs.values() if not e.done), None)

    def find_run(self, execution_id: str | None) -> Execution:
        """A recent execution by id (None: the latest); the error lists the recent ones."""
        if not self.runs:
            raise UnknownExecutionError(
                f"session {self.id} has not run any code yet; execute_code runs some"
            )
        if execution_id is None:
            return next(reversed(self.runs.values()))
        if execution_id in self.runs:
            return self.runs[execution_id]
        known = ", ".join(self.runs)
        raise UnknownExecutionError(
            f"unknown execution_id {execution_id!r} in session {self.id} (recent: "
            f"{known}); omit execution_id for the latest"
        )

    # -- views ---------------------------------------------------------------------------------

    def describe(self) -> SessionStatus:
        return SessionStatus(
            session_id=self.id,
            experiment_name=self.experiment_name,
            kernel_id=self.kernel_id,
            kernel_name=self.kernel_name,
            notebook_path=str(self.doc.path),
            cells=len(self.doc.nb.cells),
            executions=self.executions,
            state="busy" if self.lock.locked() else "idle",
            created_at=self.created_at,
            start_seconds=self.start_seconds,
            notebook_write_error=self.doc.write_error or self.doc.conflict,
            resources=self.shape or "default",
            cluster=self.cluster,
        )

    @property
    def cluster(self) -> str:
        """The config file's profile the session runs on ("default": the server's own)."""
        head = self.lane.split(",", 1)[0]
        return head[1:] if head.startswith("@") else "default"

    @property
    def shape(self) -> str:
        """The resource shape of its job ("" for the cluster's configured job)."""
        parts = self.lane.split(",")
        return ",".join(p for p in parts if p and not p.startswith("@"))

    def record(self) -> dict[str, Any]:
        """The registry's record: enough to reconnect to the kernel and to the running cell."""
        running = self.busy_with()
        return {
            "session_id": self.id,
            "experiment_name": self.experiment_name,
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "ws_session_id": self.conn.session_id,
            "notebook_path": str(self.doc.path),
            "executions": self.executions,
            "running": {
                "execution_id": running.id,
                "msg_id": running.msg_id,
                "cell_index": self._index_now(running),
            }
            if running is not None and running.msg_id and running.doc is self.doc
            else None,  # a scratch run records nothing: nothing to take back
        }

    def _index_now(self, execution: Execution) -> int | None:
        """Where ``execution``'s cell is now (cells inserted, moved or deleted above it)."""
        with self.doc.reading() as nb:
            found = (i for i, c in enumerate(nb.cells) if c is execution.cell)
            return next(found, execution.cell_index)

    @classmethod
    def from_record(
        cls, record: dict[str, Any], conn: Connection, doc: NotebookDoc, default_kernel: str
    ) -> Session:
        """The session a :meth:`record` describes, on ``conn`` and ``doc`` (its running cell,
        if any, is for the caller to adopt)."""
        return cls(
            id=str(record["session_id"]),
            experiment_name=str(record.get("experiment_name", "")),
            kernel_id=str(record["kernel_id"]),
            kernel_name=str(record.get("kernel_name", default_kernel)),
            conn=conn,
            doc=doc,
            executions=int(record.get("executions", 0)),
        )

    def lost_message(self, why: str) -> str:
        """What a call on this session says once its gateway (batch job) is gone for good:
        ``why``, and how to carry on from the notebook."""
        name = self.doc.path.name
        return (
            f"{why}: session {self.id}'s kernel and its variables are gone. The notebook "
            f"{name} is intact; start_session_resume_notebook with notebook_path={name!r} "
            "re-runs it on a new kernel"
        )

    def info(self, backend: str, **extra: Any) -> dict[str, Any]:
        """What starting (resuming, continuing) this session returns to the caller."""
        return {
            "session_id": self.id,
            "notebook_path": str(self.doc.path),
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "backend": backend,
            **({"resources": self.shape} if self.shape else {}),
            **({"cluster": self.cluster} if self.cluster != "default" else {}),
            **extra,
        }


class SessionTable:
    """A manager's sessions by id, and why the ones that are gone are gone: an earlier
    server's that could not be taken back, and this server's whose gateway (batch job) ended.
    Those are kept for the server's life, so every call on one says what happened."""

    def __init__(self, holds: NotebookHolds | None = None) -> None:
        """``holds``: the notebooks held by this user's servers (None: this table only)."""
        self._by_id: dict[str, Session] = {}
        self._gone: dict[str, str] = {}  # session id -> why it is gone (what get() raises)
        self._holds = holds

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def add(self, session: Session) -> None:
        """Raises :class:`SessionBusyError` if another session here, or another live server,
        holds the notebook."""
        self.refuse_if_held_here(session.doc.path)
        if self._holds is not None:
            try:
                self._holds.take(session.doc.path, session.id)
            except OSError as exc:  # never refuse work over it; say so
                log.warning("cannot record that %s is in use: %s", session.doc.path, exc)
        self._by_id[session.id] = session

    def _release(self, session: Session) -> None:
        if self._holds is not None:
            try:
                self._holds.release(session.doc.path)
            except OSError as exc:
                log.warning("cannot record that %s is free: %s", session.doc.path, exc)

    def remove(self, session_id: str) -> Session | None:
        session = self._by_id.pop(session_id, None)
        if session is not None:
            self._release(session)
        return session

    def clear(self) -> None:
        for session in list(self._by_id.values()):
            self._release(session)
        self._by_id.clear()

    def mark_gone(self, session_id: str, why: str) -> None:
        """A session of a previous server that is gone: :meth:`get` raises ``why``."""
        self._gone[session_id] = why

    def lose(self, session: Session, why: str) -> bool:
        """``session``'s gateway is gone for good: it leaves the table and :meth:`get` raises
        ``why`` for it from now on. False (and nothing changes) if it is no longer in the
        table: shut down, or found lost already."""
        if self._by_id.get(session.id) is not session:
            return False
        del self._by_id[session.id]
        self._release(session)
        self._gone[session.id] = why
        return True

    def get(self, session_id: str) -> Session:
        try:
            return self._by_id[session_id]
        except KeyError:
            if session_id in self._gone:
                raise SessionLostError(self._gone[session_id]) from None
            known = ", ".join(sorted(self._by_id)) or "none"
            raise UnknownSessionError(
                f"unknown session_id {session_id!r} (running sessions: {known}). Start one with "
                "start_new_session, or reopen a notebook with start_session_resume_notebook"
            ) from None

    def holder_of(self, path: Path) -> Session | None:
        """The session whose notebook is ``path``, if any."""
        return next((s for s in self._by_id.values() if s.doc.path == path), None)

    def refuse_if_held_here(self, path: Path) -> None:
        """Raises :class:`SessionBusyError` if a session of this table records into ``path``."""
        holder = self.holder_of(path)
        if holder is not None:
            raise SessionBusyError(
                f"{path.name} is already open in session {holder.id}; keep using that session, "
                "or shutdown_session it first (start_session_continue_notebook forks a copy)"
            )

    def refuse_if_held(self, path: Path) -> None:
        """Raises :class:`SessionBusyError` if a session here or of another live server of
        this user records into ``path``."""
        self.refuse_if_held_here(path)
        if self._holds is not None:
            try:
                self._holds.refuse_if_held(path)
            except OSError as exc:
                log.warning("cannot tell whether %s is in use elsewhere: %s", path, exc)


def notebook_kernel(nb: Any) -> str | None:
    """The kernel spec a notebook names in its metadata, if any."""
    spec = nb.metadata.get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, dict) else None
    return str(name) if name else None
