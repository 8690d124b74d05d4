"""Sessions that outlive the server: the registry, take-back at start, hand-over at exit.

Kernels on a batch job outlive this server. While it runs, the registry records its sessions on
the default job (shaped jobs end with the server), as their owner; the next server on the same
job takes back (:meth:`Reattach.ready`) the sessions whose owner is dead or handed them over, a
running cell included, and reports the ones it cannot take back with how to rebuild them. It
never takes a session whose owner (another server of the same user) is alive, and rewrites its
own records only. A server whose job stays (JLABGW_KEEP_JOB) leaves its kernels running at
exit and hands its records over: owner cleared (:meth:`Reattach.hand_over`).

The registry is a file, and a file can be edited or planted: each record is checked before use
(:func:`check_record`). A notebook path must lie inside the notebook directory, the kernel id be
a UUID, the ids have the shapes jlabgw gives them; a record that fails is skipped with a warning
naming the registry file and why, and nothing it names is opened.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from jlabgw.errors import JlabgwError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.paths import resolve_notebook_path
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.sessions.kernels import KernelStarter
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.registry import SessionRegistry
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.session import Session, SessionTable

__all__ = ["BadRecordError", "Reattach", "check_record"]

log = logging.getLogger(__name__)

# the shapes jlabgw gives its ids (opening.py, KernelConnection, Execution); a kernel id is the
# gateway's canonical UUID. Each goes into a URL or a message, so nothing else passes.
_SESSION_ID = re.compile(r"[0-9a-f]{12}")
_KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_WS_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_EXECUTION_ID = re.compile(r"[0-9a-f]{1,32}")
_MSG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class BadRecordError(ValueError):
    """A registry record that is not what jlabgw writes: never followed."""


def _shaped(record: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRecordError(f"{key} {str(value)[:80]!r} is not {what}")
    return value


def _count(value: Any, key: str) -> int:
    if type(value) is not int or value < 0:
        raise BadRecordError(f"{key} {str(value)[:80]!r} is not a count")
    return value


def check_record(record: Any, notebook_dir: Path) -> Path:
    """The notebook a registry ``record`` names, resolved inside ``notebook_dir``, once every
    field that is used was checked; :class:`BadRecordError` saying what is wrong otherwise."""
    if not isinstance(record, dict):
        raise BadRecordError("a record is not a JSON object")
    _shaped(record, "session_id", _SESSION_ID, "a jlabgw session id (12 hex digits)")
    _shaped(record, "kernel_id", _KERNEL_ID, "a kernel id (a UUID)")
    _shaped(record, "ws_session_id", _WS_SESSION_ID, "a WebSocket session id")
    for key in ("experiment_name", "kernel_name"):
        if not isinstance(record.get(key, ""), str):
            raise BadRecordError(f"{key} is not a string")
    _count(record.get("executions", 0), "executions")
    running = record.get("running")
    if running is not None:
        if not isinstance(running, dict):
            raise BadRecordError("running is not an object")
        _shaped(running, "msg_id", _MSG_ID, "a message id")
        _count(running.get("cell_index"), "running.cell_index")
        if running.get("execution_id") is not None:
            _shaped(running, "execution_id", _EXECUTION_ID, "an execution id")
    path = record.get("notebook_path")
    if not isinstance(path, str):
        raise BadRecordError("notebook_path is not a string")
    try:
        return resolve_notebook_path(notebook_dir, path, must_exist=False)
    except JlabgwError as exc:  # outside the notebook dir, not a .ipynb, NUL bytes
        raise BadRecordError(f"notebook_path: {exc}") from exc


class Reattach:
    """Takes back and hands over the sessions of a manager's table (``sessions``)."""

    def __init__(
        self,
        registry: SessionRegistry | None,
        sessions: SessionTable,
        lanes: Lanes,
        starter: KernelStarter,
        runner: Runner,
        writer: NotebookWriter,
        default_kernel: str,
        notebook_dir: Path | None = None,
    ) -> None:
        """``registry``: None for backends whose kernels stop with the server.
        ``notebook_dir``: where a record's notebook must lie (default: the lanes' setting)."""
        self._registry = registry
        self._notebook_dir = notebook_dir or lanes.settings.notebook_dir
        self._sessions = sessions
        self._lanes = lanes
        self._starter = starter
        self._runner = runner
        self._writer = writer
        self._default_kernel = default_kernel
        self._lock = asyncio.Lock()
        self._done = registry is None
        self._handing_over = False  # exiting with the kernels left running: registry frozen

    def save(self) -> None:
        """Rewrite the registry (off-thread), once the previous server's sessions are back."""
        if self._registry is not None and self._done and not self._handing_over:
            # the next server knows the default job only; shaped jobs end with this server
            records = [s.record() for s in self._sessions if not s.lane]
            self._registry.save(self._lanes.backend().identity(), records)

    async def ready(self) -> bool:
        """Take back the sessions a previous server left on the default job's gateway, once;
        True when this call did. Raises if the gateway cannot be reached (the next call
        tries again)."""
        if self._done:
            return False
        async with self._lock:
            now = not self._done  # not done by a call that held the lock meanwhile
            if now:
                await self._take_back_all()
                self._done = True
        return now

    async def _take_back_all(self) -> None:
        assert self._registry is not None
        records = await asyncio.to_thread(self._registry.claim)  # nobody else's, now ours
        if not records:
            return
        await self._lanes.gateway()  # up, so that its identity is known
        identity = self._lanes.backend().identity()
        for record in records:
            try:
                path = check_record(record, self._notebook_dir)
            except BadRecordError as exc:
                self._skip_bad(record, str(exc))
                continue
            if record.get("identity") != identity:
                self._report_gone([record], f"they ran on {record.get('identity')}, which is gone")
                continue
            try:
                await self._take_back(record, path)
            except (JlabgwError, OSError, KeyError, ValueError) as exc:
                self._report_gone([record], str(exc))

    def _skip_bad(self, record: Any, why: str) -> None:
        """A record that is not jlabgw's (edited, planted): named in the log, never followed.
        It leaves the file with this server's next write (it claimed it)."""
        assert self._registry is not None
        log.warning(
            "session registry %s: skipped a record that jlabgw did not write: %s",
            self._registry.path,
            why,
        )
        sid = record.get("session_id") if isinstance(record, dict) else None
        if isinstance(sid, str) and _SESSION_ID.fullmatch(sid):
            self._sessions.mark_gone(
                sid,
                f"session {sid} cannot be taken back: its record in the session registry "
                f"{self._registry.path} is invalid ({why}); start a new session",
            )

    def _report_gone(self, records: list[dict[str, Any]], why: str) -> None:
        for record in records:
            name = Path(str(record.get("notebook_path", "?"))).name
            message = (
                f"session {record.get('session_id')} was started by an earlier jlabgw server "
                f"and cannot be taken back: {why}. Its kernel state is gone; the notebook "
                f"{name} is intact: start_session_resume_notebook with notebook_path={name!r} "
                "rebuilds it"
            )
            log.warning("%s", message)
            self._sessions.mark_gone(str(record.get("session_id")), message)

    async def _take_back(self, record: dict[str, Any], path: Path) -> None:
        """``record``, checked (:func:`check_record`), and its notebook ``path``, resolved."""
        kernel_id = str(record["kernel_id"])
        conn = await self._starter.connect(kernel_id, str(record["ws_session_id"]))
        doc = NotebookDoc.open(path, self._writer)
        conn.execution_count = None  # what the previous server last saw is not known
        session = Session.from_record(record, conn, doc, self._default_kernel)
        try:  # the notebook first: held by another server meanwhile, nothing is adopted
            self._sessions.add(session)
        except BaseException:
            await conn.close()
            raise
        running = record.get("running")
        try:
            if running and running.get("msg_id") and running.get("cell_index") is not None:
                execution_id = running.get("execution_id")
                self._runner.adopt(
                    session,
                    str(execution_id) if execution_id else None,
                    str(running["msg_id"]),
                    int(running["cell_index"]),
                )
            else:
                await conn.connect()  # replays anything buffered for the session id (ignored)
        except BaseException:
            self._sessions.remove(session.id)
            await conn.close()
            raise
        log.info("took back session %s: kernel %s, notebook %s", session.id, kernel_id, path)

    async def hand_over(self) -> None:
        """At exit, if the job stays: leave the kernels running for the next server, which
        takes them back from the registry as they are now (a running cell too): their records
        are handed over (no owner). The sessions leave the table; the registry is not written
        again."""
        if self._registry is None or not self._done or not self._lanes.backend().keeps_kernels():
            return
        records = [s.record() for s in self._sessions if not s.lane]
        self._registry.save(self._lanes.backend().identity(), records, handed_over=True)
        self._handing_over = True
        for session in self._sessions:
            await session.conn.close()
            try:
                await asyncio.to_thread(session.doc.flush)
            except JlabgwError as exc:
                log.error("handing over session %s: %s", session.id, exc)
        self._sessions.clear()
        log.info("left the kernels running on the kept job for the next server")

    async def close(self) -> None:
        """Write what is queued for the registry, then stop its writer."""
        if self._registry is not None:
            await asyncio.to_thread(self._registry.close)
