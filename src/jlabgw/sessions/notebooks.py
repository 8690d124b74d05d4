"""Use cases on the notebooks of the notebook directory, whoever holds them: read one (paged),
list them (with the session that holds each), and open one with a fresh kernel
(``start_notebook``: nothing re-run, new cells appended to that same file).

Reading takes no hold: a notebook a session here records into is read from the session's
model (its latest outputs, written or not), any other from its file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from jlabgw.config import Settings
from jlabgw.errors import NotebookError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.paths import resolve_notebook_path
from jlabgw.notebook.reading import Page, render_page, summarize
from jlabgw.notebook.writer import NotebookWriter
from jlabgw.processes import describe_owner
from jlabgw.progress import Progress
from jlabgw.sessions.holds import NotebookHolds
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.opening import Opening
from jlabgw.sessions.session import SessionTable, notebook_kernel

__all__ = ["Notebooks"]

log = logging.getLogger(__name__)

_MAX_LISTED = 2000  # notebooks list_notebooks walks to at most


class Notebooks:
    """The notebook directory's notebooks, for :class:`~.manager.SessionManager`."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionTable,
        holds: NotebookHolds,
        writer: NotebookWriter,
        opening: Opening,
        lanes: Lanes,
        backend_name: str,
    ) -> None:
        self._root = settings.notebook_dir
        self._budget = settings.output_limit
        self._sessions = sessions
        self._holds = holds
        self._writer = writer
        self._opening = opening
        self._lanes = lanes
        self._backend_name = backend_name
        self._starting = asyncio.Lock()  # one start_notebook at a time: never two sessions

    def read(
        self,
        notebook_path: str | None,
        session_id: str | None,
        start: int = 0,
        count: int | None = None,
        images: bool = False,
    ) -> Page:
        """A page of a notebook's cells (see :func:`~jlabgw.notebook.reading.render_page`):
        the session's notebook, or the one at ``notebook_path``."""
        doc: NotebookDoc | None = None
        if session_id is not None:
            doc = self._sessions.get(session_id).doc
            path = doc.path
            if notebook_path is not None and path != resolve_notebook_path(
                self._root, notebook_path, must_exist=False
            ):
                raise NotebookError(
                    f"session {session_id} records into {path.name}, not {notebook_path!r}: "
                    "pass one of notebook_path and session_id"
                )
        elif notebook_path is not None:
            path = resolve_notebook_path(self._root, notebook_path, must_exist=True)
            holder = self._sessions.holder_of(path)
            doc = holder.doc if holder else None
        else:
            raise NotebookError(
                "pass notebook_path (list_notebooks shows them) or session_id (list_sessions)"
            )
        if doc is not None:
            doc.sync()  # a person's saved edits first: indexes are those of the file now
            with doc.reading() as nb:
                cells = list(nb.cells)
                return render_page(cells, start, count, self._budget, path.name, images)
        return render_page(_load(path).cells, start, count, self._budget, path.name, images)

    def list(self) -> list[dict[str, Any]]:
        """The notebooks under the notebook directory (hidden folders and checkpoints left
        out), each with the session that holds it, if any."""
        root = self._root.resolve()
        found: list[Path] = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                Path(folder) / f
                for f in sorted(files)
                if f.endswith(".ipynb") and (Path(folder) / f).resolve().is_relative_to(root)
            ]  # a link to a file outside the notebook directory is not read
            if len(found) >= _MAX_LISTED:
                log.warning("list_notebooks: more than %d notebooks; listing those", _MAX_LISTED)
                break
        entries: list[dict[str, Any]] = []
        for path in found[:_MAX_LISTED]:
            try:
                entry = summarize(path, root)
            except OSError:
                continue  # gone meanwhile
            entry["held_by"] = self._held_by(path)
            entries.append(entry)
        return entries

    def _held_by(self, path: Path) -> dict[str, Any] | None:
        holder = self._sessions.holder_of(path)
        if holder is not None:
            return {"session_id": holder.id, "server": "this server"}
        try:
            entry = self._holds.holder(path)
        except OSError as exc:
            log.warning("cannot tell whether %s is in use elsewhere: %s", path, exc)
            return None
        if entry is None:
            return None
        return {
            "session_id": entry.get("session_id"),
            "server": describe_owner(entry.get("owner")),
        }

    async def start(
        self, notebook_path: str, progress: Progress, kernel_name: str | None = None
    ) -> dict[str, Any]:
        """A session on an existing notebook: the one of this server that holds it (its state
        kept), else a fresh kernel on it; nothing is re-run, new cells go into that file.
        Refused if another server's session holds it."""
        path = resolve_notebook_path(self._root, notebook_path, must_exist=True)
        async with self._starting:
            holder = self._sessions.holder_of(path)
            if holder is not None:
                return holder.info(
                    self._backend_name, already_open=True, cells=len(holder.doc.nb.cells)
                )
            self._sessions.refuse_if_held(path)  # another server's session
            doc = NotebookDoc.open(path, self._writer)
            lane = await self._lanes.lane_for(None)
            name = kernel_name or notebook_kernel(doc.nb)
            started, doc = await self._opening.kernel_and_doc(progress, name, lane, lambda _: doc)
            session = await self._opening.register(path.stem, started, doc, lane)
            with doc.editing() as nb:  # once it is ours: nothing is written into a held notebook
                nb.metadata.update(started.metadata)
            return session.info(self._backend_name, already_open=False, cells=len(doc.nb.cells))


def _load(path: Path) -> NotebookNode:
    try:
        nb: NotebookNode = nbformat.read(path, as_version=4)
    except OSError as exc:
        raise NotebookError(f"cannot read {path.name}: {exc.strerror}") from exc
    except Exception as exc:  # nbformat raises several types for malformed files
        raise NotebookError(f"{path.name} is not a valid notebook: {exc}") from exc
    return nb
