"""The start use cases' shared steps (start a new notebook, resume one, continue one as a
fork): a kernel and the notebook built around it, and the session that joins them, added to
the table."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

from jlabgw.config import Settings
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.paths import experiment_filename
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.progress import Progress
from jlabgw.sessions.kernels import KernelStarter, SparePool, Started
from jlabgw.sessions.session import Session, SessionTable, notebook_kernel

__all__ = ["Opening"]

log = logging.getLogger(__name__)


class Opening:
    """Kernels, notebooks and new sessions for :class:`~.manager.SessionManager`'s start use
    cases, on its spare pool, kernel starter and table."""

    def __init__(
        self,
        pool: SparePool,
        starter: KernelStarter,
        sessions: SessionTable,
        writer: NotebookWriter,
        settings: Settings,
        changed: Callable[[], None],
    ) -> None:
        """``changed``: a session was added (the status file and registry are rewritten)."""
        self._pool = pool
        self._starter = starter
        self._sessions = sessions
        self._writer = writer
        self._notebook_dir = settings.notebook_dir
        self._default_kernel = settings.kernel_name
        self._changed = changed

    async def kernel_and_doc(
        self,
        progress: Progress,
        kernel_name: str | None,
        lane: str,
        make_doc: Callable[[Started], NotebookDoc],
    ) -> tuple[Started, NotebookDoc]:
        """A kernel from the pool and the notebook ``make_doc`` builds for it; the kernel is
        discarded if that fails."""
        started = await self._pool.take(progress, kernel_name, lane)
        try:
            return started, make_doc(started)
        except BaseException:
            await self._starter.discard(started.conn, lane)
            raise

    def open_or_create(
        self, path: Path | None, experiment_name: str, metadata: dict[str, Any]
    ) -> NotebookDoc:
        """``path`` (appended to) if it exists, else a new notebook there, or (no ``path``)
        one named after the experiment; the kernel's ``metadata`` in it."""
        if path is not None and path.exists():
            doc = NotebookDoc.open(path, self._writer)
            with doc.editing() as nb:
                nb.metadata.update(metadata)
            return doc
        return NotebookDoc.create(
            path.parent if path else self._notebook_dir,
            path.stem if path else experiment_filename(experiment_name),
            self._writer,
            metadata=metadata,
        )

    def fork(self, path: Path, nb: NotebookNode, metadata: dict[str, Any]) -> NotebookDoc:
        """A new notebook next to ``path`` (``stem_continued.ipynb``) with ``nb``'s cells."""
        nb.metadata.update(metadata)
        return NotebookDoc.create(
            path.parent,
            f"{path.stem}_continued",
            self._writer,
            cells=nb.cells,
            metadata=dict(nb.metadata),
        )

    async def register(
        self, experiment_name: str, started: Started, doc: NotebookDoc, lane: str = ""
    ) -> Session:
        """The session joining a started kernel and its notebook, added to the table. If the
        notebook turns out to be held by another server meanwhile, the kernel is discarded
        and :class:`~jlabgw.errors.SessionBusyError` raised."""
        conn = started.conn
        session = Session(
            id=uuid.uuid4().hex[:12],
            experiment_name=experiment_name,
            kernel_id=conn.kernel_id,
            kernel_name=notebook_kernel(doc.nb) or self._default_kernel,
            conn=conn,
            doc=doc,
            start_seconds=started.seconds,
            lane=lane,
        )
        try:
            self._sessions.add(session)
        except BaseException:
            await self._starter.discard(conn, lane)
            raise
        log.info("session %s: kernel %s, notebook %s", session.id, conn.kernel_id, doc.path)
        self._changed()
        return session
