"""Sessions that outlive the server: the registry, take-back at start, hand-over at exit.

Kernels on a batch job outlive this server. While it runs, the registry records its sessions on
the default job (shaped jobs end with the server), as their owner; the next server on the same
job takes back (:meth:`Reattach.ready`) the sessions whose owner is dead or handed them over, a
running cell included, and reports the ones it cannot take back with how to rebuild them. It
never takes a session whose owner (another server of the same user) is alive, and rewrites its
own records only. A server whose job stays (JLABGW_KEEP_JOB) leaves its kernels running at
exit and hands its records over: owner cleared (:meth:`Reattach.hand_over`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from jlabgw.errors import JlabgwError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.sessions.kernels import KernelStarter
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.registry import SessionRegistry
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.session import Session, SessionTable

__all__ = ["Reattach"]

log = logging.getLogger(__name__)


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
    ) -> None:
        """``registry``: None for backends whose kernels stop with the server."""
        self._registry = registry
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
            if record.get("identity") != identity:
                self._report_gone([record], f"they ran on {record.get('identity')}, which is gone")
                continue
            try:
                await self._take_back(record)
            except (JlabgwError, OSError, KeyError, ValueError) as exc:
                self._report_gone([record], str(exc))

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

    async def _take_back(self, record: dict[str, Any]) -> None:
        kernel_id = str(record["kernel_id"])
        conn = await self._starter.connect(kernel_id, str(record["ws_session_id"]))
        path = Path(record["notebook_path"])
        doc = NotebookDoc.open(path, self._writer)
        conn.execution_count = None  # what the previous server last saw is not known
        session = Session.from_record(record, conn, doc, self._default_kernel)
        running = record.get("running")
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
        self._sessions.add(session)
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
