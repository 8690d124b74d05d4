"""A notebook on disk and its in-memory nbformat 4.5 model, persisted by :mod:`.writer`.

Tool calls change the in-memory :class:`NotebookDoc` under its lock (so concurrent calls never
lose a cell) and bump its version; the :class:`NotebookWriter` thread notices, validates with
``nbformat.validate`` and replaces the file atomically (temp file, fsync, ``os.replace``). Writes
therefore stay off the reply path, coalesce under load, and a crash can only leave the previous
complete file, never a torn one. ``flush()`` waits for everything pending (used on shutdown
and when a caller needs the file on disk now).

The cost of a write must not grow with the notebook: every cell's JSON is cached, and an edit
names the cells it changes (``editing(cell)``), so a write serialises and validates only those
cells, plus the small top level, and joins the cached bytes of the rest. The file is
byte-for-byte what ``json.dumps(nb, sort_keys=True, indent=1)`` gives.

A person may edit the file meanwhile (JupyterLab, VS Code). After each write the file's
``(st_mtime_ns, st_size, st_ino)`` is kept with the cells' JSON as written (the *base*); before
the next write (and before a tool resolves a cell index, :meth:`NotebookDoc.sync`) one
``os.stat`` tells whether anyone else wrote the file. Only then is it read and merged, by cell
id (:mod:`.merge`): the person's version is the base, the agent's changes since the last
write go on top, and the model becomes the merged notebook. A merge that would lose someone's
work (the person deleted a cell the agent changed or is still recording into; the file is
not a valid notebook) leaves the person's file alone: the session's view goes to
``name.jlabgw-conflict.ipynb`` and :attr:`NotebookDoc.conflict` says so. That state is a
:class:`~.disk.DiskSync` the document owns; the file's bytes are made by :mod:`.files`.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import nbformat
from nbformat import NotebookNode
from nbformat.corpus.words import generate_corpus_id

from jlabgw.errors import CellIndexError, NotebookError
from jlabgw.notebook import files
from jlabgw.notebook.disk import DiskSync

if TYPE_CHECKING:
    from jlabgw.notebook.writer import NotebookWriter

__all__ = ["NotebookDoc"]


class NotebookDoc:
    """One notebook file and its in-memory model. Mutate only inside ``with doc.editing():``."""

    def __init__(self, path: Path, nb: NotebookNode, writer: NotebookWriter) -> None:
        self.path = path
        self.nb = nb
        self._writer = writer
        self._lock = threading.RLock()
        self.version = 0
        self.written_version = 0
        self.write_error: str | None = None
        self.retry_delay = 0.0  # seconds until a failed write is tried again (0: none pending)
        # id(cell) -> (cell, its JSON as it sits in the file, validated yet?). The cell is
        # kept so its id cannot be reused by another object while the entry exists.
        self._cache: dict[int, tuple[NotebookNode, bytes, bool]] = {}
        self._stale: set[int] = set()
        self._all_stale = True
        self._disk = DiskSync(self)  # the file's side: base, signatures, conflict

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        stem: str,
        writer: NotebookWriter,
        cells: list[NotebookNode] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> NotebookDoc:
        """Create ``stem.ipynb`` (or ``stem-2.ipynb`` … if taken) and write it at once."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NotebookError(
                f"cannot create the notebook directory {directory}: {exc.strerror}"
            ) from exc
        nb = nbformat.v4.new_notebook(cells=cells or [], metadata=metadata or {})
        path = files.reserve(directory, stem)
        doc = cls(path, nb, writer)
        doc.version = 1
        writer.write_now(doc)
        return doc

    @classmethod
    def in_memory(cls, name: str) -> NotebookDoc:
        """A notebook that is never written anywhere (scratch runs): its cells live in memory
        only, and ``name`` only names it in messages."""
        return cls(Path(name), nbformat.v4.new_notebook(), cast("NotebookWriter", _Nowhere()))

    @classmethod
    def open(cls, path: Path, writer: NotebookWriter) -> NotebookDoc:
        """Load an existing notebook, upgrading it to nbformat 4.5 (cell ids) in memory."""
        try:
            sig = files.signature(path)
            nb = nbformat.read(path, as_version=4)
        except OSError as exc:
            raise NotebookError(f"cannot read {path}: {exc.strerror}") from exc
        except Exception as exc:  # nbformat raises several types for malformed files
            raise NotebookError(f"{path} is not a valid notebook: {exc}") from exc
        files.remove_stale_temp_files(path)
        if nb.nbformat_minor < 5:
            nb.nbformat_minor = 5
        for cell in nb.cells:
            if "id" not in cell:
                cell["id"] = generate_corpus_id()
        try:
            nbformat.validate(nb)
        except nbformat.ValidationError as exc:
            raise NotebookError(f"{path} does not validate as nbformat 4: {exc.message}") from exc
        doc = cls(path, nb, writer)
        doc._disk.adopt(nb, sig)
        return doc

    # -- mutation ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def editing(self, *cells: NotebookNode) -> Iterator[NotebookNode]:
        """Hold the lock while changing ``nb``; a write is scheduled afterwards.

        ``cells``: the only cells this edit changes (a new cell needs no mention). With none
        named, anything may have changed and every cell is serialised again."""
        with self._lock:
            try:
                yield self.nb
            finally:
                self.version += 1
                if cells:
                    self._stale.update(id(cell) for cell in cells)
                else:
                    self._all_stale = True
        self._writer.schedule(self)

    @contextlib.contextmanager
    def reading(self) -> Iterator[NotebookNode]:
        """Hold the lock while reading ``nb`` (a consistent view; no write is scheduled)."""
        with self._lock:
            yield self.nb

    def append_cell(self, cell: NotebookNode) -> int:
        """Append ``cell``; its index in the notebook as it is on disk now (see :meth:`sync`)."""
        return self.insert_cell(cell)

    def insert_cell(self, cell: NotebookNode, before: NotebookNode | None = None) -> int:
        """Put ``cell`` before the cell ``before`` (None: at the end); its index in the notebook
        as it is on disk now. ``before`` is a cell, not an index, so that a person's edit
        merged meanwhile cannot make it land elsewhere (:class:`CellIndexError` if they
        deleted ``before``)."""
        with self._lock:
            self._disk.sync_locked()
            at = len(self.nb.cells) if before is None else self.index_of(before)
            with self.editing(cell) as nb:  # the others' cached JSON stays right
                nb.cells.insert(at, cell)
                return at

    def insert_point(self, index: int) -> NotebookNode | None:
        """The cell a new cell goes before so that it lands at ``index`` (negative counts from
        the end of the notebook with the new cell: -1 appends), None to append; a helpful
        error when out of range. After a person's saved edits are merged (:meth:`sync`)."""
        with self._lock:
            self.sync()
            count = len(self.nb.cells)
            if not -(count + 1) <= index <= count:
                raise CellIndexError(
                    f"cell index {index} is out of range for a new cell: the notebook has "
                    f"{count} cells (valid: 0..{count}, or -1..-{count + 1} from the end; "
                    "-1 appends)"
                )
            at = index if index >= 0 else count + 1 + index
            return self.nb.cells[at] if at < count else None

    def remove_cell(self, cell: NotebookNode) -> int:
        """Delete ``cell`` from the notebook; the index it had."""
        with self._lock:
            at = self.index_of(cell)
            with self.editing(cell) as nb:
                del nb.cells[at]
            return at

    def move_cell(self, cell: NotebookNode, to: int) -> tuple[int, int]:
        """Move ``cell`` so that it ends at index ``to`` (negative from the end, checked under
        the same lock as the move: a person's edit merged in between cannot shift it); where
        it was and where it is."""
        with self._lock:
            to = self.cell_index(to)
            at = self.index_of(cell)
            with self.editing(cell) as nb:
                nb.cells.insert(to, nb.cells.pop(at))
            return at, to

    def cell_at(self, index: int) -> tuple[int, NotebookNode]:
        """The cell at ``index`` (negative from the end) and its index, found under one hold
        of the lock: the writer thread merging a person's save cannot slip in between and
        make the index name another cell."""
        with self._lock:
            at = self.cell_index(index)
            return at, self.nb.cells[at]

    def cell_index(self, index: int) -> int:
        """Normalise a possibly negative index; raise a helpful error when out of range.

        Indexes refer to the notebook as it is on disk now: a person's saved edits are merged
        in first (:meth:`sync`)."""
        with self._lock:
            self.sync()
            count = len(self.nb.cells)
        if -count <= index < count:
            return index % count
        if count == 0:
            raise CellIndexError(f"cell index {index} is out of range: the notebook has no cells")
        raise CellIndexError(
            f"cell index {index} is out of range: the notebook has {count} cells "
            f"(valid: 0..{count - 1}, or -1..-{count} from the end)"
        )

    def index_of(self, cell: NotebookNode) -> int:
        """Where ``cell`` is in the notebook as it is on disk now (see :meth:`sync`)."""
        with self._lock:
            self.sync()
            for index, other in enumerate(self.nb.cells):
                if other is cell:
                    return index
        raise CellIndexError(
            f"cell {cell.get('id')!r} is no longer in {self.path.name}: it was deleted from "
            "the file meanwhile"
        )

    def hold(self, cell: NotebookNode) -> None:
        """``cell`` is recording a run: a person deleting it is a conflict, and its outputs
        are the session's (a person's stale copy of them never replaces them)."""
        with self._lock:
            self._disk.held.add(id(cell))

    def release(self, cell: NotebookNode) -> None:
        with self._lock:
            self._disk.held.discard(id(cell))

    @property
    def conflict(self) -> str | None:
        """Why the session's view is in :attr:`conflict_path` (None: no conflict)."""
        return self._disk.conflict

    @property
    def conflict_path(self) -> Path:
        """Where the session's view goes while it cannot be merged into the person's file."""
        return self._disk.conflict_path

    # -- a person's edits (see .disk) ----------------------------------------------------------

    def sync(self) -> bool:
        """Merge a person's saved edits into the model if the file changed since this process
        last wrote it: one ``os.stat`` when it did not. True if the model changed."""
        with self._lock:
            return self._disk.sync_locked()

    def current_bytes(self, cell: NotebookNode) -> bytes:
        """``cell``'s JSON as the next write would put it in the file."""
        key = id(cell)
        entry = self._cache.get(key)
        if entry is not None and not self._all_stale and key not in self._stale:
            return entry[1]
        return files.dumps(cell, depth=2)

    def recache(self, cache: dict[int, tuple[NotebookNode, bytes, bool]]) -> None:
        """After a merge: ``cache`` is the cells' JSON as the file holds it; none is stale."""
        self._cache = cache
        self._stale.clear()
        self._all_stale = False

    def wrote(self, version: int) -> None:
        """The writer put ``version``, as last serialised, in the file: it is the new base."""
        with self._lock:
            self._disk.wrote(version)

    def conflict_written(self) -> None:
        """The writer put the session's view in the conflict file."""
        with self._lock:
            self._disk.conflict_written()

    def write_finished(self) -> None:
        """The writer is done with the file (written or not): others may check it again."""
        with self._lock:
            self._disk.in_flight = False

    def write_target(self, version: int) -> Path | None:
        """Where the writer puts ``version``, just serialised: the notebook, or the conflict
        file while the person's edits cannot be merged. None: serialise again, the file
        changed since (a person saved while the write was being prepared)."""
        with self._lock:
            return self._disk.write_target(version)

    def snapshot(self) -> tuple[int, NotebookNode]:
        """A deep copy of the model and its version (for forking or reading without the lock)."""
        with self._lock:
            return self.version, copy.deepcopy(self.nb)

    def serialize(self, *, writing: bool = False) -> tuple[int, list[bytes]]:
        """The file's bytes, in parts; raise ``nbformat.ValidationError`` if invalid.

        ``writing``: the writer's call; a person's saved edits are merged in first, and other
        threads leave the file's check to it until :meth:`write_finished`.

        Under the lock (tool calls wait for it): ``json.dumps`` of the changed cells and of the
        small top level, and a copy of what was dumped with long strings emptied (the schema
        only needs their type). Outside it, the costlier half: validating that copy, the top
        level and the changed cells together, against the full notebook schema.
        """
        with self._lock:
            if writing:  # the writer's: merge a person's edits first (see write_finished)
                self._disk.sync_locked(writing=True)
                self._disk.in_flight = True
            conflict, seen = self.conflict is not None, self._disk.checked_sig
            unsettled = self._disk.unsettled
            version = self.version
            cache: dict[int, tuple[NotebookNode, bytes, bool]] = {}
            parts: list[bytes] = []
            by_id: dict[str, bytes] = {}
            unchecked: list[tuple[int, bytes, Any]] = []
            for cell in self.nb.cells:
                key = id(cell)
                entry = self._cache.get(key)
                if entry is None or self._all_stale or key in self._stale:
                    entry = (cell, files.dumps(cell, depth=2), False)
                if not entry[2]:
                    unchecked.append((key, entry[1], files.skeleton(cell)))
                cache[key] = entry
                parts.append(entry[1])
                if "id" in cell:
                    by_id[str(cell.id)] = entry[1]
            self._cache = cache
            self._stale.clear()
            self._all_stale = False
            top = {
                k: (files.dumps(v, depth=1), files.skeleton(v))
                for k, v in self.nb.items()
                if k != "cells"
            }
        try:
            partial = {k: skeleton for k, (_, skeleton) in top.items()}
            partial["cells"] = [skeleton for _, _, skeleton in unchecked]
            nbformat.validate(partial)
        except nbformat.ValidationError:
            with self._lock:  # check them again next time: they were never written
                self._stale.update(key for key, _, _ in unchecked)
            raise
        with self._lock:
            for key, data, _ in unchecked:
                entry = self._cache.get(key)
                if entry is not None and entry[1] is data:
                    self._cache[key] = (entry[0], data, True)
        top_bytes = {k: dumped for k, (dumped, _) in top.items()}
        whole = files.join(top_bytes, parts)
        with self._lock:
            size = sum(len(p) for p in whole)
            self._disk.serialized = (version, by_id, top_bytes, size, conflict, seen, unsettled)
        return version, whole

    def flush(self, timeout: float = 30.0) -> None:
        self._writer.flush(self, timeout)


class _Nowhere:
    """The writer of an in-memory notebook: nothing is ever written."""

    def schedule(self, doc: NotebookDoc) -> None:
        pass

    def flush(self, doc: NotebookDoc | None = None, timeout: float = 30.0) -> None:
        pass

    def write_now(self, doc: NotebookDoc) -> None:
        pass
